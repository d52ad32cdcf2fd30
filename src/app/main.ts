import { loadConfigOrReport } from './config.js';
import { startServer } from './server.js';

/** `npm start`: validate config, serve, and shut down cleanly on SIGTERM/SIGINT (a second signal exits at once). */
async function main(): Promise<void> {
  const config = loadConfigOrReport();
  if (!config) process.exit(2);
  const server = await startServer(config);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    server.app.log.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (err) => {
        server.app.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await server.ready.catch(() => {
    // Keep serving: /health/ready reports the failure and /v1 answers 503 with the reason.
  });
}

await main();
