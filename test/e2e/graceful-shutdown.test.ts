import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { validateShardFile } from '../../src/harvest/index.js';
import { freshDataDir } from '../helpers/gateway.js';
import { REPO_ROOT } from '../helpers/paths.js';

/** The real process, real signals: `node --import tsx src/app/main.ts`, as `npm start` runs it. */
const KEY = 'sk-shutdown-test-admin';

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function startGateway(env: Record<string, string>): Promise<{ child: ChildProcess; url: string; exited: Promise<number | null>; dataDir: string }> {
  const port = await freePort();
  const dataDir = freshDataDir();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/app/main.ts'], {
    cwd: REPO_ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), CARRYON_DATA_DIR: dataDir, CARRYON_ADMIN_KEY: KEY, CARRYON_THREADS: '1', CARRYON_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    try {
      const res = await request(`${url}/health/ready`);
      await res.body.dump();
      if (res.statusCode === 200) return { child, url, exited, dataDir };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error('gateway did not become ready');
}

interface StreamOutcome {
  events: Array<{ choices: Array<{ finish_reason: string | null; text?: string }> }>;
  done: boolean;
}

/** Reads one SSE completion stream to its end; every event must be whole JSON (never cut mid-token). */
async function readStream(url: string, maxTokens: number, key = KEY): Promise<StreamOutcome> {
  const res = await request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: maxTokens, temperature: 1, seed: 5, stream: true }),
  });
  expect(res.statusCode).toBe(200);
  const raw = await res.body.text();
  const blocks = raw.split('\n\n').filter(Boolean);
  const done = blocks.at(-1) === 'data: [DONE]';
  const events = (done ? blocks.slice(0, -1) : blocks).map((b) => {
    expect(b.startsWith('data: ')).toBe(true);
    return JSON.parse(b.slice(6)) as StreamOutcome['events'][number];
  });
  return { events, done };
}

describe('graceful shutdown on SIGTERM', () => {
  it('20 concurrent streams each end with a final chunk and [DONE]; readiness goes 503; new work gets 503 + Connection: close; harvest is on disk; exit 0', async () => {
    const gw = await startGateway({ CARRYON_DRAIN_TIMEOUT_MS: '1500' });
    const admin = async (path: string, body: object) => {
      const r = await request(`${gw.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return (await r.body.json()) as { key?: string };
    };
    await admin('/admin/tenants', { id: 't1' });
    const harvestKey = (await admin('/admin/keys', { tenant: 't1', harvest: { sample_rate: 1 } })).key!;
    const streams = Array.from({ length: 20 }, (_, i) => readStream(gw.url, i % 2 === 0 ? 20 : 400, harvestKey));
    await new Promise((r) => setTimeout(r, 300));
    gw.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 100));

    const ready = await request(`${gw.url}/health/ready`);
    expect(ready.statusCode).toBe(503);
    await ready.body.dump();
    const late = await request(`${gw.url}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 }),
    });
    expect(late.statusCode).toBe(503);
    expect(late.headers.connection).toBe('close');
    expect(((await late.body.json()) as { error: { code: string } }).error.code).toBe('shutting_down');

    const outcomes = await Promise.all(streams);
    for (const o of outcomes) {
      expect(o.done).toBe(true);
      const last = o.events.at(-1)!;
      expect(['stop', 'length']).toContain(last.choices[0].finish_reason);
      expect(o.events.slice(0, -1).every((e) => e.choices[0].finish_reason === null)).toBe(true);
    }
    expect(await gw.exited).toBe(0);
    // The harvested sequences were flushed into finished, valid shards before exit.
    const shards = fs.readdirSync(path.join(gw.dataDir, 'harvest'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.safetensors'));
    expect(shards.length).toBeGreaterThan(0);
    let sequences = 0;
    for (const f of shards) sequences += validateShardFile(path.join(gw.dataDir, 'harvest', f), { verifyData: true }).sequences;
    // At least every stream that finished normally (the 20-token ones) is on disk.
    expect(sequences).toBeGreaterThanOrEqual(10);
  });

  it('a second signal exits at once', async () => {
    const gw = await startGateway({ CARRYON_DRAIN_TIMEOUT_MS: '60000' });
    // Enough work that the drain would take seconds (context 512: 5 prompt + 500 new tokens each).
    const streams = Array.from({ length: 20 }, () => readStream(gw.url, 500).catch(() => null));
    await new Promise((r) => setTimeout(r, 300));
    gw.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    gw.child.kill('SIGTERM');
    expect(await gw.exited).not.toBe(0);
    expect(Date.now() - t0).toBeLessThan(1000);
    await Promise.all(streams);
  });
});
