import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiKeyObject, CreatedApiKeyObject, List, TenantObject } from '../../src/admin/schemas.js';
import { hashKey } from '../../src/auth/authenticator.js';
import { DB_FILE } from '../../src/store/db.js';
import { api, LogCapture } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { BACKENDS, testDatabase, type TestDatabase } from '../helpers/databases.js';

// Every test here runs on each metadata backend (test/helpers/databases.ts), each on a database of its own.
describe.each(BACKENDS)('on %s', (backend) => {
  let database: TestDatabase;

  let gw: TestGateway;
  const logs = new LogCapture();
  /** Every key this file creates, to prove none of them reaches a log line or the database file. */
  const createdKeys: string[] = [];

  beforeAll(async () => {
    database = await testDatabase(backend);
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-admin-keys-'), CARRYON_LOG_LEVEL: 'info', ...database.env }, { logStream: logs });
  });
  afterAll(async () => {
    await gw?.close();
    await database?.drop();
    if (gw) fs.rmSync(gw.dataDir, { recursive: true, force: true });
  });

  /** Every byte the database holds: SQLite's files, or every value of every table on PostgreSQL. */
  async function databaseBytes(): Promise<Buffer> {
    if (backend === 'sqlite') {
      const files = [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`].map((f) => path.join(gw.dataDir, f)).filter((f) => fs.existsSync(f));
      return Buffer.concat(files.map((f) => fs.readFileSync(f)));
    }
    const tables = await gw.store.db.query<{ name: string }>("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'");
    const values: Buffer[] = [];
    for (const { name } of tables) {
      for (const row of await gw.store.db.query(`SELECT * FROM ${name}`)) {
        for (const v of Object.values(row)) values.push(Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
      }
    }
    return Buffer.concat(values);
  }

  const client = (apiKey: string, headers: Record<string, string> = {}) =>
    new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0, defaultHeaders: headers });

  async function createTenant(id: string): Promise<TenantObject> {
    const r = await api<TenantObject>(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id, name: `Tenant ${id}` });
    expect(r.status, r.text).toBe(201);
    return r.json;
  }

  async function createKey(body: Record<string, unknown>, as = ADMIN_KEY): Promise<CreatedApiKeyObject> {
    const r = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', as, body);
    expect(r.status, r.text).toBe(201);
    createdKeys.push(r.json.key);
    return r.json;
  }

  describe('tenants and keys', () => {
    it('lifecycle: create tenant and key → the key works on /v1 → revoke → 401 at once', async () => {
      const tenant = await createTenant('acme');
      expect(tenant).toMatchObject({ object: 'tenant', id: 'acme', name: 'Tenant acme' });
      const dup = await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' });
      expect(dup.status).toBe(409);
      expect(dup.json.error?.code).toBe('conflict');

      // The interface the harvest work relies on.
      const created = await createKey({ tenant: 'acme', harvest: { sample_rate: 1 } });
      expect(created).toMatchObject({ object: 'api_key', tenant: 'acme', scope: 'inference', harvest: { sample_rate: 1 }, origin: 'api', revoked_at: null });
      expect(created.id).toMatch(/^key_[0-9a-f]{16}$/);
      expect(created.key).toMatch(/^sk-[A-Za-z0-9_-]{43}$/);
      expect(created.prefix).toBe(created.key.slice(0, 8));

      const models = await client(created.key).models.list();
      expect(models.data.map((m) => m.id)).toContain('stories260K');

      const revoked = await api<ApiKeyObject>(gw, 'DELETE', `/admin/keys/${created.id}`, ADMIN_KEY);
      expect(revoked.status).toBe(200);
      expect(revoked.json.revoked_at).toEqual(expect.any(String));
      await expect(client(created.key).models.list()).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
      // Revoking again changes nothing.
      expect((await api(gw, 'DELETE', `/admin/keys/${created.id}`, ADMIN_KEY)).status).toBe(200);
    });

    it('shows a key once: the create response only, marked no-store', async () => {
      await createTenant('once');
      const res = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'once', name: 'ci' });
      createdKeys.push(res.json.key);
      expect(res.headers['cache-control']).toBe('no-store');
      const { key, id } = res.json;
      const reads = [
        await api(gw, 'GET', '/admin/keys', ADMIN_KEY),
        await api(gw, 'GET', '/admin/keys?tenant=once', ADMIN_KEY),
        await api(gw, 'PATCH', `/admin/keys/${id}`, ADMIN_KEY, { name: 'renamed' }),
      ];
      for (const r of reads) {
        expect(r.status, r.text).toBe(200);
        expect(r.text).not.toContain(key);
        expect(r.text).not.toContain(key.slice(3));
        expect(r.text).not.toContain(hashKey(key).toString('hex'));
      }
      const listed = (reads[1].json as unknown as List<ApiKeyObject>).data;
      expect(listed).toHaveLength(1);
      expect(listed[0]).toMatchObject({ id, name: 'ci', prefix: key.slice(0, 8) });
      expect(Object.keys(listed[0])).not.toContain('key');
    });

    it('the database holds the hash of a key, never the key', async () => {
      await createTenant('hashonly');
      const { key } = await createKey({ tenant: 'hashonly' });
      const bytes = await databaseBytes();
      for (const k of [key, ADMIN_KEY, USER_KEY, ...createdKeys]) {
        expect(bytes.includes(Buffer.from(k)), 'a key in the database').toBe(false);
        expect(bytes.includes(Buffer.from(k.slice(8))), 'part of a key beyond its prefix in the database').toBe(false);
      }
      expect(bytes.includes(hashKey(key))).toBe(true);
    });

    it('/admin needs an admin key: 401 without a valid key, 403 permission_denied for an inference key', async () => {
      expect((await api(gw, 'GET', '/admin/tenants', null)).status).toBe(401);
      expect((await api(gw, 'GET', '/admin/tenants', 'sk-nope')).json.error?.code).toBe('invalid_api_key');
      for (const [method, p, body] of [
        ['GET', '/admin/tenants', undefined],
        ['POST', '/admin/tenants', { id: 'x' }],
        ['POST', '/admin/keys', { tenant: 'default' }],
        ['GET', '/admin/keys', undefined],
      ] as const) {
        const r = await api(gw, method, p, USER_KEY, body);
        expect(r.status, `${method} ${p}`).toBe(403);
        expect(r.json.error?.code).toBe('permission_denied');
      }
    });

    it("a tenant's admin key manages its own tenant only", async () => {
      await createTenant('blue');
      await createTenant('green');
      const blueAdmin = await createKey({ tenant: 'blue', scope: 'admin' });
      const greenUser = await createKey({ tenant: 'green' });

      const tenants = await api<List<TenantObject>>(gw, 'GET', '/admin/tenants', blueAdmin.key);
      expect(tenants.json.data.map((t) => t.id)).toEqual(['blue']);
      const own = await createKey({ tenant: 'blue' }, blueAdmin.key);
      expect(own.tenant).toBe('blue');

      const keys = await api<List<ApiKeyObject>>(gw, 'GET', '/admin/keys', blueAdmin.key);
      expect(new Set(keys.json.data.map((k) => k.tenant))).toEqual(new Set(['blue']));
      const refusals = [
        await api(gw, 'POST', '/admin/keys', blueAdmin.key, { tenant: 'green' }),
        await api(gw, 'GET', '/admin/keys?tenant=green', blueAdmin.key),
        await api(gw, 'DELETE', `/admin/keys/${greenUser.id}`, blueAdmin.key),
        await api(gw, 'PATCH', `/admin/keys/${greenUser.id}`, blueAdmin.key, { name: 'mine now' }),
        await api(gw, 'GET', '/admin/tenants/green/carry-ons', blueAdmin.key),
      ];
      for (const r of refusals) {
        expect(r.status, r.text).toBe(404);
        expect(r.json.error?.code).toBe('not_found');
      }
      // Global operations stay with global admins.
      expect((await api(gw, 'POST', '/admin/tenants', blueAdmin.key, { id: 'red' })).status).toBe(403);
      expect((await api(gw, 'DELETE', '/admin/tenants/blue', blueAdmin.key)).status).toBe(403);
      expect((await api(gw, 'POST', '/admin/keys', blueAdmin.key, { scope: 'admin' })).status).toBe(403);
      // The green key still works.
      expect((await client(greenUser.key).models.list()).data.length).toBeGreaterThan(0);
    });

    it('keys from the configuration are listed but managed there: revoking one is a 409', async () => {
      const keys = await api<List<ApiKeyObject>>(gw, 'GET', '/admin/keys', ADMIN_KEY);
      const configured = keys.json.data.filter((k) => k.origin === 'config');
      expect(configured.map((k) => [k.scope, k.tenant, k.name]).sort()).toEqual([
        ['admin', null, 'CARRYON_ADMIN_KEY'],
        ['inference', 'default', 'CARRYON_API_KEYS[0]'],
      ]);
      expect(configured.find((k) => k.scope === 'admin')?.prefix).toBe(ADMIN_KEY.slice(0, 8));
      const r = await api(gw, 'DELETE', `/admin/keys/${configured[0].id}`, ADMIN_KEY);
      expect(r.status).toBe(409);
      expect((await client(USER_KEY).models.list()).data.length).toBeGreaterThan(0);
    });

    it('validates requests, naming the parameter', async () => {
      await createTenant('strict');
      const { id } = await createKey({ tenant: 'strict' });
      const cases: Array<[string, string, unknown, number, string, string | null]> = [
        ['POST', '/admin/tenants', { id: 'Not A Slug' }, 400, 'invalid_value', 'id'],
        ['POST', '/admin/tenants', { id: 'ok', colour: 'red' }, 400, 'unknown_parameter', 'colour'],
        ['POST', '/admin/keys', {}, 400, 'invalid_value', 'tenant'],
        ['POST', '/admin/keys', { tenant: 'nowhere' }, 404, 'not_found', 'tenant'],
        ['POST', '/admin/keys', { tenant: 'strict', scope: 'root' }, 400, 'invalid_value', 'scope'],
        ['POST', '/admin/keys', { tenant: 'strict', harvest: { sample_rate: 2 } }, 400, 'invalid_value', 'harvest.sample_rate'],
        ['POST', '/admin/keys', { tenant: 'strict', harvest: { sample_rate: 1, keep: 'all' } }, 400, 'invalid_value', 'harvest.keep'],
        ['POST', '/admin/keys', { tenant: 'strict', harvest: { sample_rate: 1, extra: true } }, 400, 'unknown_parameter', 'harvest.extra'],
        ['POST', '/admin/keys', { tenant: 'strict', default_carry_on: 'missing' }, 400, 'invalid_value', 'default_carry_on'],
        ['POST', '/admin/keys', { scope: 'admin', default_carry_on: 'x' }, 400, 'invalid_value', 'default_carry_on'],
        ['PATCH', `/admin/keys/${id}`, { scope: 'admin' }, 400, 'unknown_parameter', 'scope'],
        ['PATCH', '/admin/keys/key_0000000000000000', { name: 'x' }, 404, 'not_found', 'id'],
      ];
      for (const [method, p, body, status, code, param] of cases) {
        const r = await api(gw, method as 'POST', p, ADMIN_KEY, body);
        expect(r.status, `${method} ${p} ${JSON.stringify(body)}: ${r.text}`).toBe(status);
        expect(r.json.error?.code, r.text).toBe(code);
        expect(r.json.error?.param, r.text).toBe(param);
      }
      const patched = await api<ApiKeyObject>(gw, 'PATCH', `/admin/keys/${id}`, ADMIN_KEY, { harvest: { sample_rate: 0.25, layers: ['final', 1], keep: 'completion' } });
      expect(patched.json.harvest).toEqual({ sample_rate: 0.25, layers: ['final', 1], keep: 'completion' });
      const cleared = await api<ApiKeyObject>(gw, 'PATCH', `/admin/keys/${id}`, ADMIN_KEY, { harvest: null, name: null });
      expect(cleared.json).toMatchObject({ harvest: null, name: null });
    });

    it(`x-carryon-tenant: the global admin acts for a tenant on /v1; an inference key cannot act for another`, async () => {
      await createTenant('acted');
      expect((await client(ADMIN_KEY, { 'x-carryon-tenant': 'acted' }).models.list()).data.length).toBeGreaterThan(0);
      await expect(client(ADMIN_KEY, { 'x-carryon-tenant': 'ghost' }).models.list()).rejects.toMatchObject({ status: 400 });
      await expect(client(USER_KEY, { 'x-carryon-tenant': 'acted' }).models.list()).rejects.toMatchObject({ status: 403, code: 'permission_denied' });
      expect((await client(USER_KEY, { 'x-carryon-tenant': 'default' }).models.list()).data.length).toBeGreaterThan(0);
    });

    it('deleting a tenant revokes its keys at once; the id can be used again, without the old keys', async () => {
      await createTenant('doomed');
      const { key } = await createKey({ tenant: 'doomed' });
      expect((await client(key).models.list()).data.length).toBeGreaterThan(0);
      const del = await api(gw, 'DELETE', '/admin/tenants/doomed', ADMIN_KEY);
      expect(del.json).toEqual({ object: 'tenant', id: 'doomed', deleted: true });
      await expect(client(key).models.list()).rejects.toMatchObject({ status: 401 });
      expect((await api(gw, 'DELETE', '/admin/tenants/doomed', ADMIN_KEY)).status).toBe(404);
      const tenants = await api<List<TenantObject>>(gw, 'GET', '/admin/tenants', ADMIN_KEY);
      expect(tenants.json.data.map((t) => t.id)).not.toContain('doomed');
      await createTenant('doomed');
      await expect(client(key).models.list()).rejects.toMatchObject({ status: 401 });
    });
  });

  describe('audit log', () => {
    it('logs every change once with its actor, and never a key', () => {
      const audits = logs.audits();
      const actions = new Set(audits.map((a) => a.action));
      for (const a of ['tenant.create', 'tenant.delete', 'key.create', 'key.update', 'key.revoke']) expect(actions).toContain(a);
      for (const a of audits) expect(a.actor).toMatch(/^key_[0-9a-f]{16}$/);
      const creates = audits.filter((a) => a.action === 'key.create');
      expect(new Set(creates.map((a) => a.target)).size).toBe(creates.length);
      expect(creates.length).toBe(createdKeys.length);
      // The revoke repeated in the lifecycle test changed nothing, so it is not logged twice.
      const revokes = audits.filter((a) => a.action === 'key.revoke');
      expect(new Set(revokes.map((a) => a.target)).size).toBe(revokes.length);

      const all = logs.lines.join('');
      for (const k of [ADMIN_KEY, USER_KEY, ...createdKeys]) {
        expect(all.includes(k), 'a key in the logs').toBe(false);
        expect(all.includes(k.slice(8)), 'part of a key in the logs').toBe(false);
      }
    });
  });
});
