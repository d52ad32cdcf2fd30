import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from '../core/errors.js';

const watches = new WeakMap<IncomingMessage, () => void>();

/**
 * An idle timeout on receiving a request: the connection is cut (with a 408 in the error envelope
 * when nothing was answered yet) once no byte has arrived for `idleMs`. An idle bound, not a total
 * one, so a large upload over a slow link goes through while a stalled one does not hold its
 * connection. Ends with `receiveDone` (the body is read), after which a long answer is not cut.
 */
export function watchReceive(req: IncomingMessage, res: ServerResponse, idleMs: number): void {
  const socket = req.socket;
  const onIdle = () => {
    if (!res.headersSent) {
      const body = JSON.stringify(new ApiError('request_timeout', `No part of the request arrived for ${idleMs} ms.`).toBody());
      res.writeHead(408, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
      res.end(body, () => socket.destroy());
    } else {
      socket.destroy();
    }
  };
  socket.setTimeout(idleMs);
  // On the request, not the socket: Node's server destroys a timed-out socket unless the request
  // (while incomplete), the response or the server handles 'timeout'.
  req.on('timeout', onIdle);
  watches.set(req, () => {
    socket.setTimeout(0);
    req.off('timeout', onIdle);
  });
}

/** The request's body has been read: receiving can no longer stall. */
export function receiveDone(req: IncomingMessage): void {
  watches.get(req)?.();
  watches.delete(req);
}
