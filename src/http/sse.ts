import type { FastifyReply } from 'fastify';
import { ApiError } from '../core/errors.js';

/**
 * Streams chunks as Server-Sent Events, OpenAI style: `data: <json>\n\n` per chunk, then
 * `data: [DONE]\n\n`. A failure mid-stream is sent as an error event before [DONE], since the
 * status line has already gone out. Honours backpressure so a slow client cannot balloon memory.
 */
export async function sendEventStream(reply: FastifyReply, chunks: AsyncIterable<object>, onClose: () => void): Promise<void> {
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
  try {
    for await (const chunk of chunks) {
      if (res.destroyed) break;
      await write(`data: ${JSON.stringify(chunk)}\n\n`);
    }
  } catch (err) {
    const apiErr = err instanceof ApiError ? err : new ApiError('internal_error', 'The server failed while generating.');
    reply.request.log.error({ err }, 'stream failed');
    await write(`data: ${JSON.stringify(apiErr.toBody())}\n\n`);
  }
  await write('data: [DONE]\n\n');
  res.end();
}
