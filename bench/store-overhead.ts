/**
 * What the metadata backend costs a request: authentication and routing through the real gateway
 * on SQLite vs on PostgreSQL, in one run, with no model work in the requests measured.
 *
 *   CARRYON_BENCH_DATABASE_URL=postgres://user@host:port/db node --import tsx bench/store-overhead.ts \
 *        [--requests 2000] [--concurrency 1,16]
 *
 * The URL's user must be allowed to create databases: the bench makes a fresh one and drops it
 * (`.ci/postgres start DIR` starts a throwaway server and prints such a URL). Two routes, each with
 * an inference key of a tenant that has a carry-on: `GET /v1/models` (key lookup, tenant check, the
 * tenant's carry-ons) and `GET /v1/models/<carry-on>` (key lookup, tenant check, one carry-on
 * resolved). Each request's latency from the client (undici, keep-alive); p50/p99 per backend and
 * the ratio PostgreSQL / SQLite. Gateway, database and client share the machine.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { startGateway, type GatewayProcess } from './lib/gateway-process.js';
import { intOption } from './lib/options.js';
import { percentile, table } from './lib/stats.js';
import { makeBenchCarryOns } from './lib/carry-ons.js';
import { scratchDatabase } from './lib/scratch-database.js';
import { CARRYON_FILES } from '../src/carryon/manifest.js';
import { PACKAGE_FILES } from '../src/model/package-files.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '1,16' },
  },
});
const REQUESTS = intOption('requests', values.requests, 10);
const CONCURRENCY = values.concurrency.split(',').map((c) => intOption('concurrency', c, 1));
const ADMIN_URL = process.env.CARRYON_BENCH_DATABASE_URL ?? '';
if (!ADMIN_URL) throw new Error('set CARRYON_BENCH_DATABASE_URL to a PostgreSQL URL whose user may create databases (see the header)');

const log = (m: string) => console.error(`[store-overhead ${new Date().toISOString().slice(11, 19)}] ${m}`);
const agent = new Agent({ connections: 64, keepAliveTimeout: 30_000 });

async function call(gw: GatewayProcess, method: 'GET' | 'POST', path: string, key: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await request(`${gw.url}${path}`, {
    method,
    dispatcher: agent,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: text ? (JSON.parse(text) as unknown) : null };
}

/** A tenant with an inference key and one carry-on, made through the admin API. */
async function setUp(gw: GatewayProcess): Promise<{ key: string; carryOn: string }> {
  const must = (r: { status: number; json: unknown }, what: string) => {
    if (r.status >= 300) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json as Record<string, unknown>;
  };
  must(await call(gw, 'POST', '/admin/tenants', gw.adminKey, { id: 'bench' }), 'create tenant');
  const key = must(await call(gw, 'POST', '/admin/keys', gw.adminKey, { tenant: 'bench' }), 'create key').key as string;
  const models = must(await call(gw, 'GET', '/v1/models', key), 'list models') as { data: Array<{ id: string }> };
  const [co] = await makeBenchCarryOns(modelDirOf(gw), path.join(gw.dataDir, 'bench-carry-ons'), { width: 16, layers: 1, heads: 2 }, 1);
  const form = new FormData();
  form.append('manifest', JSON.stringify(co.record.manifest));
  form.append('weights', new Blob([fs.readFileSync(path.join(path.dirname(co.graphPath), CARRYON_FILES.weights))]), CARRYON_FILES.weights);
  const up = await fetch(`${gw.url}/admin/tenants/bench/carry-ons`, { method: 'POST', headers: { authorization: `Bearer ${gw.adminKey}` }, body: form });
  if (up.status >= 300) throw new Error(`upload: ${up.status} ${await up.text()}`);
  const id = ((await up.json()) as { carry_on: string }).carry_on;
  return { key, carryOn: `${models.data[0].id}:${id}` };
}

/** The base package the gateway imported into its data folder (stories260K by default). */
function modelDirOf(gw: GatewayProcess): string {
  const models = path.join(gw.dataDir, 'models');
  const dir = fs.readdirSync(models).find((d) => fs.existsSync(path.join(models, d, PACKAGE_FILES.manifest)));
  if (!dir) throw new Error(`no model package under ${models}`);
  return path.join(models, dir);
}

async function measure(gw: GatewayProcess, path: string, key: string, concurrency: number): Promise<number[]> {
  const times: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < REQUESTS) {
      next++;
      const t0 = performance.now();
      const r = await call(gw, 'GET', path, key);
      if (r.status !== 200) throw new Error(`${path}: ${r.status} ${JSON.stringify(r.json)}`);
      times.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return times;
}

async function main(): Promise<void> {
  const db = await scratchDatabase(ADMIN_URL, 'carryon_bench');
  const results = new Map<string, number[]>();
  try {
    for (const backend of ['sqlite', 'postgres'] as const) {
      log(`starting a gateway on ${backend}`);
      const gw = await startGateway(backend === 'postgres' ? { CARRYON_DATABASE_URL: db.url } : {});
      try {
        const { key, carryOn } = await setUp(gw);
        for (const [label, path] of [['GET /v1/models', '/v1/models'], ['GET /v1/models/<carry-on>', `/v1/models/${encodeURIComponent(carryOn)}`]] as const) {
          await measure(gw, path, key, 4); // warm-up: connections, statement caches, JIT
          for (const c of CONCURRENCY) {
            const times = await measure(gw, path, key, c);
            results.set(`${label}|${c}|${backend}`, times);
            log(`${backend} ${label} c=${c}: p50 ${percentile(times, 50).toFixed(2)} ms, p99 ${percentile(times, 99).toFixed(2)} ms`);
          }
        }
      } finally {
        await gw.stop();
      }
    }
  } finally {
    await db.drop();
    await agent.close();
  }
  const rows: string[][] = [];
  for (const label of ['GET /v1/models', 'GET /v1/models/<carry-on>']) {
    for (const c of CONCURRENCY) {
      const s = results.get(`${label}|${c}|sqlite`)!;
      const p = results.get(`${label}|${c}|postgres`)!;
      const f = (xs: number[], q: number) => percentile(xs, q).toFixed(2);
      rows.push([label, String(c), f(s, 50), f(p, 50), `${(percentile(p, 50) / percentile(s, 50)).toFixed(2)}x`, f(s, 99), f(p, 99), `${(percentile(p, 99) / percentile(s, 99)).toFixed(2)}x`]);
    }
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  console.log(`cpu: ${cpu} (${os.cpus().length} logical cores); ${REQUESTS} requests per cell; load average at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  console.log(table(['route', 'concurrency', 'SQLite p50 ms', 'PostgreSQL p50 ms', 'ratio', 'SQLite p99 ms', 'PostgreSQL p99 ms', 'ratio'], rows, 1));
}

await main();
