// The image's HEALTHCHECK: the slim base has no curl, so ask /health/live with Node's own fetch.
// Exit 0 when the gateway answers 200, 1 otherwise (Docker's contract for health commands).
const port = process.env.PORT || '8080';
const host = process.env.HOST;
// A wildcard listen address is reachable on loopback; a specific one must be asked directly.
const target = !host || host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
try {
  const res = await fetch(`http://${target}:${port}/health/live`, { signal: AbortSignal.timeout(4000) });
  await res.body?.cancel();
  process.exit(res.status === 200 ? 0 : 1);
} catch {
  process.exit(1);
}
