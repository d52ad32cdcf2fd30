/**
 * A reverse proxy that picks the upstream by a hash of the Authorization header, as ingress-nginx's
 * `upstream-hash-by: "$http_authorization"` does: every request of one API key lands on the same
 * replica, so that key's carry-ons stay warm in one replica's cache. Bodies stream both ways.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HashProxy {
  url: string;
  /** Requests sent to each upstream, in the order given. */
  counts: number[];
  close(): Promise<void>;
}

/** The upstream index of a key: the first 4 bytes of its SHA-256, modulo the upstream count. */
export function upstreamOf(authorization: string, upstreams: number): number {
  return createHash('sha256').update(authorization).digest().readUInt32BE(0) % upstreams;
}

export async function startHashProxy(upstreams: string[]): Promise<HashProxy> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const counts = upstreams.map(() => 0);
  const server = http.createServer((req, res) => {
    const i = upstreamOf(req.headers.authorization ?? '', upstreams.length);
    counts[i]++;
    const target = new URL(req.url ?? '/', upstreams[i]);
    const out = http.request(target, { method: req.method, headers: { ...req.headers, host: target.host }, agent }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    out.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `upstream: ${err.message}`, type: 'server_error', param: null, code: 'bad_gateway' } }));
    });
    // A client that goes away takes its upstream request with it.
    res.on('close', () => out.destroy());
    req.pipe(out);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    close: () =>
      new Promise<void>((r) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
