import type { FastifyReply } from 'fastify';
import { ApiError } from '../core/errors.js';

/**
 * Streams chunks as Server-Sent Events, OpenAI style: `data: <json>\n\n` per chunk, then
 * `data: [DONE]\n\n`. A failure mid-stream is sent as an error event before [DONE], since the
 * status line has already gone out. Honours backpressure so a slow client cannot balloon memory.
 * `named` (the Responses API): each chunk's `type` also goes out as `event: <type>`, a failure as
 * `event: error` with `{type, code, message, param}`, and there is no [DONE].
 */
export async function sendEventStream(reply: FastifyReply, chunks: AsyncIterable<object>, onClose: () => void, named = false): Promise<void> {
  const res = reply.raw;
  reply.hijack();
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': String(reply.request.id),
  });
  res.on('close', onClose);
  const write = async (line: string) => {
    if (res.destroyed) return;
    if (!res.write(line)) await new Promise<void>((r) => { res.once('drain', r); res.once('close', r); });
  };
  const frame = (chunk: object) => `${named ? `event: ${String((chunk as { type?: unknown }).type)}\n` : ''}data: ${JSON.stringify(chunk)}\n\n`;
  try {
    for await (const chunk of chunks) {
      if (res.destroyed) break;
      await write(frame(chunk));
    }
  } catch (err) {
    const apiErr = err instanceof ApiError ? err : new ApiError('internal_error', 'The server failed while generating.');
    reply.request.log.error({ err }, 'stream failed');
    const { code, message, param } = apiErr.toBody().error;
    await write(frame(named ? { type: 'error', code, message, param } : apiErr.toBody()));
  }
  if (!named) await write('data: [DONE]\n\n');
  res.end();
}
