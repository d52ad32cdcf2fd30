import http from 'node:http';
import type { Metrics } from '../core/metrics.js';

/**
 * A second, key-less listener that serves only GET /metrics, for scrapers on a private network (the
 * chart's ServiceMonitor). Everything else on it is a 404.
 */
export async function startMetricsListener(metrics: Metrics, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    metrics.render().then(
      (body) => res.writeHead(200, { 'content-type': metrics.contentType }).end(body),
      () => res.writeHead(500).end(),
    );
  });
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
