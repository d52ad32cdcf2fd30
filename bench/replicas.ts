/**
 * Scale-out: aggregate throughput of two gateway replicas vs one, over one PostgreSQL database,
 * behind the same hash-by-key proxy (bench/lib/hash-proxy.ts, as ingress-nginx's
 * `upstream-hash-by` on the Authorization header routes in the Helm chart).
 *
 *   CARRYON_BENCH_DATABASE_URL=postgres://user@host:port/db node --import tsx bench/replicas.ts \
 *        [--model stories|smol-q4] [--concurrency 16] [--keys 16] [--duration-s 20] [--warmup-s 4]
 *
 * The URL's user must be allowed to create databases (`.ci/postgres start DIR` prints one): the bench
 * makes a fresh database and drops it. Tenants and keys are made once, through the first replica;
 * every replica reads them from the shared database. Closed loop: C workers, worker w sends with
 * key w mod K the next non-streaming completion as soon as the last ends. The first --warmup-s
 * seconds are not counted; then completion tokens (from `usage`) of the requests that end in the
 * --duration-s window are. The machine's cores are split, not added: one replica gets all of them
 * (CARRYON_THREADS = cores), two get half each, so the ratio shows what a second process buys on
 * the same hardware (a second Node main thread, a second engine worker) and what it costs.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { STORIES_GGUF, modelPackage, smolGguf } from './lib/artifacts.js';
import { procCpuSeconds, startGateway, type GatewayProcess } from './lib/gateway-process.js';
import { startHashProxy } from './lib/hash-proxy.js';
import { intOption } from './lib/options.js';
import { scratchDatabase } from './lib/scratch-database.js';
import { percentile, table } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'stories' },
    concurrency: { type: 'string', default: '16' },
    keys: { type: 'string', default: '16' },
    'duration-s': { type: 'string', default: '20' },
    'warmup-s': { type: 'string', default: '4' },
  },
});
const CONCURRENCY = intOption('concurrency', values.concurrency, 1);
const KEYS = intOption('keys', values.keys, 1);
const DURATION_MS = intOption('duration-s', values['duration-s'], 1) * 1000;
const WARMUP_MS = intOption('warmup-s', values['warmup-s'], 0) * 1000;
const MODELS = {
  stories: { gguf: async () => STORIES_GGUF, maxTokens: 64 },
  'smol-q4': { gguf: (log: (m: string) => void) => smolGguf('q4_0', log), maxTokens: 32 },
} as const;
if (!(values.model in MODELS)) throw new Error(`--model: one of ${Object.keys(MODELS).join(', ')}`);
const SPEC = MODELS[values.model as keyof typeof MODELS];
const ADMIN_URL = process.env.CARRYON_BENCH_DATABASE_URL ?? '';
if (!ADMIN_URL) throw new Error('set CARRYON_BENCH_DATABASE_URL to a PostgreSQL URL whose user may create databases (see the header)');
const CORES = os.availableParallelism();

const log = (m: string) => console.error(`[replicas ${new Date().toISOString().slice(11, 19)}] ${m}`);
const agent = new Agent({ connections: 128, keepAliveTimeout: 30_000 });
const PROMPTS = ['Once upon a time, there was a little girl named Lily.', 'One day, Tim went to the park with his mom.', 'Ben found a shiny stone by the river.'];

async function call(url: string, path: string, key: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await request(`${url}${path}`, {
    method: body ? 'POST' : 'GET',
    dispatcher: agent,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = (await res.body.json()) as Record<string, unknown>;
  if (res.statusCode >= 300) throw new Error(`${path}: ${res.statusCode} ${JSON.stringify(json)}`);
  return json;
}

/** K tenants with one inference key each, made through `gw`; the database shares them with every replica. */
async function makeKeys(gw: GatewayProcess): Promise<string[]> {
  const keys: string[] = [];
  for (let i = 0; i < KEYS; i++) {
    await call(gw.url, '/admin/tenants', gw.adminKey, { id: `bench${i}` });
    keys.push((await call(gw.url, '/admin/keys', gw.adminKey, { tenant: `bench${i}` })).key as string);
  }
  return keys;
}

interface Round {
  tokens: number;
  requests: number;
  latencies: number[];
  perReplica: number[];
  cpuSeconds: number;
}

async function round(replicas: number, pkg: string, dbUrl: string, keys: string[] | null): Promise<{ round: Round; keys: string[] }> {
  const threads = Math.max(1, Math.floor(CORES / replicas));
  log(`starting ${replicas} replica(s), CARRYON_THREADS=${threads} each`);
  const env = { CARRYON_MODEL: pkg, CARRYON_DATABASE_URL: dbUrl, CARRYON_THREADS: String(threads), CARRYON_HARVEST: 'off', CARRYON_MAX_LIVE_SEQUENCES: '64', CARRYON_MAX_WAITING: '256' };
  const gws = await Promise.all(Array.from({ length: replicas }, () => startGateway(env)));
  const proxy = await startHashProxy(gws.map((g) => g.url));
  try {
    keys ??= await makeKeys(gws[0]);
    const model = ((await call(proxy.url, '/v1/models', keys[0])).data as Array<{ id: string }>)[0].id;
    const cpu0 = gws.map((g) => procCpuSeconds(g.pid));
    const t0 = performance.now();
    const from = t0 + WARMUP_MS;
    const until = from + DURATION_MS;
    const r: Round = { tokens: 0, requests: 0, latencies: [], perReplica: [], cpuSeconds: 0 };
    let cpuAtFrom: number[] = cpu0;
    const atWindow = setTimeout(() => (cpuAtFrom = gws.map((g) => procCpuSeconds(g.pid))), WARMUP_MS);
    let seq = 0;
    const worker = async (w: number) => {
      while (performance.now() < until) {
        const sent = performance.now();
        const body = { model, prompt: PROMPTS[seq % PROMPTS.length], max_tokens: SPEC.maxTokens, temperature: 0.8, seed: seq++ };
        const res = await call(proxy.url, '/v1/completions', keys![w % keys!.length], body);
        const done = performance.now();
        if (done >= from && done < until) {
          r.tokens += (res.usage as { completion_tokens: number }).completion_tokens;
          r.requests++;
          r.latencies.push(done - sent);
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => worker(w)));
    clearTimeout(atWindow);
    r.cpuSeconds = gws.reduce((a, g, i) => a + procCpuSeconds(g.pid) - cpuAtFrom[i], 0);
    r.perReplica = [...proxy.counts];
    return { round: r, keys };
  } finally {
    await proxy.close();
    await Promise.all(gws.map((g) => g.stop()));
  }
}

async function main(): Promise<void> {
  log(`CPU: ${os.cpus()[0]?.model ?? 'unknown'} × ${CORES}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const pkg = await modelPackage(await SPEC.gguf(log), `replicas-${values.model}`, log);
  const db = await scratchDatabase(ADMIN_URL, 'carryon_bench');
  const rounds = new Map<number, Round>();
  try {
    let keys: string[] | null = null;
    for (const n of [1, 2]) {
      const out = await round(n, pkg, db.url, keys);
      keys = out.keys;
      rounds.set(n, out.round);
      log(`${n} replica(s): ${(out.round.tokens / (DURATION_MS / 1000)).toFixed(1)} tok/s, requests per replica ${out.round.perReplica.join(' / ')}`);
    }
  } finally {
    await db.drop();
    await agent.close();
  }
  const one = rounds.get(1)!;
  const rows = [...rounds].map(([n, r]) => [
    String(n),
    (r.tokens / (DURATION_MS / 1000)).toFixed(1),
    (r.requests / (DURATION_MS / 1000)).toFixed(1),
    `${percentile(r.latencies, 50).toFixed(0)} / ${percentile(r.latencies, 99).toFixed(0)} ms`,
    (r.cpuSeconds / (DURATION_MS / 1000)).toFixed(2),
    r.perReplica.join(' / '),
    `${(r.tokens / one.tokens).toFixed(2)}×`,
  ]);
  console.log(`\n## Replicas behind a hash-by-key proxy (${values.model}, concurrency ${CONCURRENCY}, ${KEYS} keys, ${DURATION_MS / 1000} s window)\n`);
  console.log(`CPU: ${os.cpus()[0]?.model ?? 'unknown'} × ${CORES}.\n`);
  console.log(table(['replicas', 'tokens/s', 'requests/s', 'latency p50 / p99', 'gateway CPU cores busy', 'requests per replica (incl. warm-up)', 'tokens/s vs 1'], rows));
}

await main();
