import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ServeResult } from '../openai/serve-result.js';
import { sendEventStream } from './sse.js';

/** An AbortSignal that fires when the client goes away before its response is complete. */
export function clientGone(request: FastifyRequest, reply: FastifyReply): AbortController {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  request.raw.on('aborted', () => ac.abort());
  return ac;
}

/** `x-carryon-harvest: off` keeps a request out of harvesting, for clients that cannot add body fields. */
export function harvestOptOut(headers: Record<string, string | string[] | undefined>): boolean {
  return String(headers['x-carryon-harvest'] ?? '').toLowerCase() === 'off';
}

export async function respond(reply: FastifyReply, result: ServeResult): Promise<void> {
  if (result.kind === 'json') {
    await reply.send(result.body);
    return;
  }
  await sendEventStream(reply, result.chunks, result.cancel, result.events === true);
}
