import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { llama2cToCheckpoint } from '../../src/model/llama2c.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makePushCarryOn } from '../helpers/carry-on.js';
import { POSTGRES_AVAILABLE, testDatabase, type TestDatabase } from '../helpers/databases.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * Two gateways on one PostgreSQL database (and, for now, one data folder for the carry-on files):
 * B caches what it validated, and what A changes reaches B through LISTEN/NOTIFY within a second,
 * well before the periodic reconcile (set to a minute here, so only the change feed can explain it).
 */
describe.runIf(POSTGRES_AVAILABLE)('changes made on one replica reach the other within a second', () => {
  const DEADLINE_MS = 1_000;
  const PROMPT = 'Once upon a time';
  let database: TestDatabase;
  let dataDir: string;
  let work: string;
  let a: TestGateway;
  let b: TestGateway;

  beforeAll(async () => {
    database = await testDatabase('postgres');
    dataDir = freshDataDir('carryon-replicas-');
    work = freshDataDir('carryon-replicas-pkgs-');
    const env = { CARRYON_DATA_DIR: dataDir, CARRYON_DATABASE_RECONCILE_SECONDS: '60', ...database.env };
    a = await startTestGateway(env);
    b = await startTestGateway(env);
    expect((await api(a, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' })).status).toBe(201);
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await database?.drop();
    for (const d of [dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const client = (g: TestGateway, key: string) => new OpenAI({ baseURL: `${g.url}/v1`, apiKey: key, maxRetries: 0 });
  const newKey = async (tenant: string) => {
    const r = await api<CreatedApiKeyObject>(a, 'POST', '/admin/keys', ADMIN_KEY, { tenant });
    expect(r.status, r.text).toBe(201);
    return r.json;
  };
  /** The status B answers `key` with on /v1/models. */
  const statusOnB = async (key: string) => (await api(b, 'GET', '/v1/models', key)).status;

  /** Polls `probe` until it returns `want`; the time it took (fails past the deadline). */
  async function within<T>(probe: () => Promise<T>, want: T): Promise<number> {
    const started = Date.now();
    for (;;) {
      const got = await probe();
      const took = Date.now() - started;
      if (got === want) return took;
      if (took > DEADLINE_MS) throw new Error(`still ${String(got)} after ${took} ms, want ${String(want)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('a key revoked on A is refused on B within 1 s (B had it cached)', async () => {
    const { key, id } = await newKey('acme');
    expect(await statusOnB(key)).toBe(200);
    expect(await statusOnB(key)).toBe(200); // now served from B's cache
    expect((await api(a, 'DELETE', `/admin/keys/${id}`, ADMIN_KEY)).status).toBe(200);
    expect(await within(() => statusOnB(key), 401)).toBeLessThan(DEADLINE_MS);
  });

  it("a tenant deleted on A: its key is refused on B within 1 s", async () => {
    expect((await api(a, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'gone' })).status).toBe(201);
    const { key } = await newKey('gone');
    expect(await statusOnB(key)).toBe(200);
    expect((await api(a, 'DELETE', '/admin/tenants/gone', ADMIN_KEY)).status).toBe(200);
    expect(await within(() => statusOnB(key), 401)).toBeLessThan(DEADLINE_MS);
  });

  /** The server pids of the gateways' LISTEN connections (one per gateway). */
  const listeners = async () =>
    (await a.store.db.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN carryon_changes'")).map((r) => r.pid);
  /** Cuts every LISTEN connection, as a network blip would; returns a wait for both to be back. */
  async function cutListeners(): Promise<() => Promise<void>> {
    const before = await listeners();
    expect(before).toHaveLength(2);
    for (const pid of before) await a.store.db.query('SELECT pg_terminate_backend(?)', [pid]);
    return async () => {
      const deadline = Date.now() + 10_000;
      while ((await listeners()).filter((pid) => !before.includes(pid)).length < 2) {
        if (Date.now() > deadline) throw new Error('the LISTEN connections did not come back');
        await new Promise((r) => setTimeout(r, 100));
      }
    };
  }

  it('when B loses its LISTEN connection it reconnects by itself, and a key revoked meanwhile is refused on B', async () => {
    const { key, id } = await newKey('acme');
    expect(await statusOnB(key)).toBe(200);
    // What A changes now, B cannot hear.
    const back = await cutListeners();
    expect((await api(a, 'DELETE', `/admin/keys/${id}`, ADMIN_KEY)).status).toBe(200);
    expect(await within(() => statusOnB(key), 401)).toBeLessThan(DEADLINE_MS);
    // Back within seconds, on new connections, and changes flow again.
    await back();
    expect((await api(b, 'GET', '/health/ready', null)).json).toMatchObject({ change_feed: 'listening' });
    const again = await newKey('acme');
    expect(await statusOnB(again.key)).toBe(200);
    expect((await api(a, 'DELETE', `/admin/keys/${again.id}`, ADMIN_KEY)).status).toBe(200);
    expect(await within(() => statusOnB(again.key), 401)).toBeLessThan(DEADLINE_MS);
  });

  it("an alias moved on A changes B's greedy output within 1 s", async () => {
    const embedding = (await llama2cToCheckpoint(STORIES_BIN, STORIES_TOK)).weights.tokEmbeddings;
    const tok = b.gateway.model().tokenizer;
    const lily = tok.encode('Lily', false).at(-1)!;
    const ball = tok.encode('ball', false).at(-1)!;
    for (const target of [lily, ball]) {
      const rec = await makePushCarryOn(path.join(dataDir, 'models', 'stories260K'), path.join(work, `push-${target}`), {
        id: 'swap',
        tokenId: target,
        strength: 40,
        baseEmbedding: embedding,
      });
      const parts: FormPart[] = [
        { name: 'manifest', data: JSON.stringify(rec.manifest) },
        { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
      ];
      const r = await uploadCarryOn(a, 'acme', ADMIN_KEY, parts);
      expect(r.status, r.text).toBe(201);
    }
    expect((await api(a, 'PUT', '/admin/tenants/acme/carry-ons/swap/aliases/prod', ADMIN_KEY, { version: 1 })).status).toBe(200);
    const { key } = await newKey('acme');
    const greedy = async () =>
      (await client(b, key).completions.create({ model: 'swap@prod', prompt: PROMPT, max_tokens: 12, temperature: 0 })).choices[0].text;
    const onV1 = await greedy();
    expect(onV1).toContain(tok.piece(lily).text);
    const onV2 = (await client(b, key).completions.create({ model: 'swap@2', prompt: PROMPT, max_tokens: 12, temperature: 0 })).choices[0].text;
    expect(onV2).not.toBe(onV1);

    // B's catalog listeners (its carry-on registry among them) hear A's change as if made on B.
    const heard: string[] = [];
    const unsubscribe = b.store.carryOns.onChange((c) => heard.push(`${c.tenantId}/${c.carryOnId} ${c.kind} ${c.alias ?? ''}`));
    expect((await api(a, 'PUT', '/admin/tenants/acme/carry-ons/swap/aliases/prod', ADMIN_KEY, { version: 2 })).status).toBe(200);
    expect(await within(greedy, onV2)).toBeLessThan(DEADLINE_MS);
    expect(await within(async () => heard.join(), 'acme/swap alias-changed prod')).toBeLessThan(DEADLINE_MS);
    unsubscribe();
  });

  it('a version deleted on A while B could not hear it leaves B\'s memory once B listens again', async () => {
    const loaded = () => b.gateway.model().registry.stats().loaded;
    expect(loaded()).toEqual(expect.arrayContaining(['acme/swap@1', 'acme/swap@2']));
    const back = await cutListeners();
    expect((await api(a, 'DELETE', '/admin/tenants/acme/carry-ons/swap/versions/1', ADMIN_KEY)).status).toBe(200);
    await back();
    const deadline = Date.now() + 5_000;
    while (loaded().includes('acme/swap@1')) {
      if (Date.now() > deadline) throw new Error(`B still holds acme/swap@1: ${loaded().join(', ')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(loaded()).toContain('acme/swap@2');
  });
});
