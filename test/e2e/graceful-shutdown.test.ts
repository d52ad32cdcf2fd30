import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { request, type Dispatcher } from 'undici';
import { describe, expect, it } from 'vitest';
import { validateShardFile } from '../../src/harvest/index.js';
import { expectedWeightShapes } from '../../src/carryon/weights.js';
import { serializeSafetensors, type TensorInput } from '../../src/formats/safetensors.js';
import { multipartBody } from '../helpers/admin.js';
import { freshDataDir } from '../helpers/gateway.js';
import { REPO_ROOT } from '../helpers/paths.js';

/** The real process, real signals: `node --import tsx src/app/main.ts`, as `npm start` runs it. */
const KEY = 'sk-shutdown-test-admin';

/** The pid of `parent`'s child whose command line contains `marker`, once there is one (or why not). */
async function waitForChild(parent: number, marker: string, giveUp: Promise<unknown>): Promise<number> {
  let done = false;
  void giveUp.then(() => (done = true));
  for (;;) {
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (ppid === parent && fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(marker)) return Number(entry);
      } catch {
        // gone meanwhile
      }
    }
    if (done) throw new Error(`no ${marker} process appeared before the request ended`);
    await new Promise((r) => setImmediate(r));
  }
}

function processAlive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

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

/** Readiness, asked until it is no longer 200 (the signal was handled) or 10 s have passed. */
async function readinessAfterSignal(url: string): Promise<number> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const res = await request(`${url}/health/ready`);
    await res.body.dump();
    if (res.statusCode !== 200 || Date.now() > deadline) return res.statusCode;
    await new Promise((r) => setImmediate(r));
  }
}

interface StreamOutcome {
  events: Array<{ choices: Array<{ finish_reason: string | null; text?: string }> }>;
  done: boolean;
}

/**
 * Opens one SSE completion stream: `started` resolves once the server answered its headers (the
 * request was admitted), `outcome` once the stream ended; every event must be whole JSON.
 */
function openStream(url: string, maxTokens: number, key = KEY): { started: Promise<void>; outcome: Promise<StreamOutcome> } {
  const res = request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: maxTokens, temperature: 1, seed: 5, stream: true }),
  });
  const started = res.then(() => undefined);
  // A caller that reads only the outcome (a stream the second signal cuts before its headers)
  // leaves `started` unawaited: its rejection is the outcome's too, not an unhandled one.
  started.catch(() => undefined);
  return { started, outcome: res.then(readEvents) };
}

async function readStream(url: string, maxTokens: number, key = KEY): Promise<StreamOutcome> {
  return openStream(url, maxTokens, key).outcome;
}

async function readEvents(res: Dispatcher.ResponseData): Promise<StreamOutcome> {
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
    const opened = Array.from({ length: 20 }, (_, i) => openStream(gw.url, i % 2 === 0 ? 20 : 400, harvestKey));
    // Every stream admitted and answering before the signal.
    await Promise.all(opened.map((o) => o.started));
    const streams = opened.map((o) => o.outcome);
    gw.child.kill('SIGTERM');
    // Readiness turns 503 once the signal is handled (on a busy machine that takes a moment).
    expect(await readinessAfterSignal(gw.url)).toBe(503);
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

  it('SIGTERM during a running carry-on build (issue 12) kills the build and exits 0 without waiting for it', async () => {
    const gw = await startGateway({ CARRYON_DRAIN_TIMEOUT_MS: '500', CARRYON_MAX_CARRYON_BYTES: String(256 << 20), CARRYON_CARRYON_CHECK_TIMEOUT_MS: '600000' });
    const admin = (p: string, body: object) =>
      request(`${gw.url}${p}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.body.json());
    await admin('/admin/tenants', { id: 'big' });
    const manifest = JSON.parse(fs.readFileSync(path.join(gw.dataDir, 'models', 'stories260K', 'carryon-package.json'), 'utf8')) as { fingerprint: string };
    // The largest carry-on the limits allow here (207 MB of weights): its build takes seconds.
    const config = { hiddenSize: 64, vocabSize: 512, inputLayers: ['final' as const], secondaries: [], readsTokenIds: false, width: 2048, layers: 1, heads: 16, kvHeads: 16, headDim: 128, intermediate: 5632, ropeTheta: 10000, rmsNormEps: 1e-5, maxPositions: 512 };
    const tensors: Record<string, TensorInput> = {};
    for (const [name, shape] of expectedWeightShapes(config)) tensors[name] = { dtype: 'F32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
    const uploadManifest = {
      format_version: 1, id: 'big', base_fingerprint: manifest.fingerprint, hidden_size: 64, input_layers: ['final'], reads_token_ids: false, default_alpha: 1,
      description: '', architecture: { width: 2048, layers: 1, heads: 16, kv_heads: 16, head_dim: 128, intermediate: 5632, rope_theta: 10000, rms_norm_eps: 1e-5, max_positions: 512 },
    };
    const { contentType, body } = multipartBody([
      { name: 'manifest', data: JSON.stringify(uploadManifest) },
      { name: 'weights', filename: 'weights.safetensors', data: serializeSafetensors(tensors) },
    ]);
    const upload = request(`${gw.url}/admin/tenants/big/carry-ons`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': contentType }, body })
      .then(async (r) => ({ status: r.statusCode, text: await r.body.text() }))
      .catch((err: unknown) => ({ status: 0, text: String(err) }));
    // The build child appears once the weights are in: then the signal comes.
    const builder = await waitForChild(gw.child.pid!, 'carry-on-build-child', upload);
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    expect(processAlive(builder)).toBe(false);
    const answer = await upload;
    expect(answer.status).not.toBe(201);
    const blobs = path.join(gw.dataDir, 'carry-ons', 'blobs');
    expect(fs.existsSync(blobs) ? fs.readdirSync(blobs) : []).toEqual([]);
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
