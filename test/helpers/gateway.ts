import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, type Config } from '../../src/app/config.js';
import { startServer, type RunningServer } from '../../src/app/server.js';
import type { createHarvestService } from '../../src/harvest/service.js';

export const ADMIN_KEY = 'sk-test-admin-0123456789';
export const USER_KEY = 'sk-test-user-0123456789';

/** A models cache shared by test files, so stories260K is imported once per run, not once per file. */
const SHARED_DATA = path.join(os.tmpdir(), 'carryon-test-data');

export interface TestGateway extends RunningServer {
  dataDir: string;
}

export interface TestGatewayOptions {
  /** Receives every log line (JSON); pair with CARRYON_LOG_LEVEL to capture logs. */
  logStream?: { write(line: string): void };
  /** The clock harvest retention measures shard ages on (default Date.now): a test moves it instead of waiting. */
  harvestNow?: () => number;
}

/** A new empty data folder: its own gateway.sqlite and carry-on files (the model is imported into it). */
export function freshDataDir(prefix = 'carryon-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** The configuration test gateways run with: an ephemeral port, the test keys, one thread, no logs, `env` on top. */
export function testGatewayConfig(env: Record<string, string> = {}): Config {
  const dataDir = env.CARRYON_DATA_DIR ?? SHARED_DATA;
  fs.mkdirSync(dataDir, { recursive: true });
  return loadConfig({
    HOST: '127.0.0.1',
    PORT: '0',
    CARRYON_DATA_DIR: dataDir,
    CARRYON_ADMIN_KEY: ADMIN_KEY,
    CARRYON_API_KEYS: USER_KEY,
    CARRYON_THREADS: '1',
    CARRYON_LOG_LEVEL: 'silent',
    // No reserve file per test gateway (32 MiB each); test/integration/disk-full.test.ts sets one.
    CARRYON_DISK_RESERVE_BYTES: '0',
    ...env,
  });
}

/** Starts the real gateway on an ephemeral port with the default model (stories260K from ../shared). */
export async function startTestGateway(env: Record<string, string> = {}, opts: TestGatewayOptions = {}): Promise<TestGateway> {
  const config = testGatewayConfig(env);
  const dataDir = config.CARRYON_DATA_DIR;
  // startServer hands its whole config to createHarvestService, which is what reads harvestNow.
  type ServerConfig = Parameters<typeof startServer>[0] & Parameters<typeof createHarvestService>[0];
  const serverConfig: ServerConfig = { ...config, logStream: opts.logStream, harvestNow: opts.harvestNow };
  const server = await startServer(serverConfig);
  try {
    await server.ready;
  } catch (err) {
    // The listener is up even when the model failed to load: close it so a test of a failed start leaks nothing.
    await server.close();
    throw err;
  }
  return { ...server, dataDir };
}
