import fs from 'node:fs';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CarryOnBuilder } from '../../src/admin/carry-on-build.js';
import type { CarryOnObject, CarryOnVersionObject, CreatedApiKeyObject, List } from '../../src/admin/schemas.js';
import { CARRYON_FILES, sha256Hex, type CarryOnManifest } from '../../src/carryon/manifest.js';
import { configFromManifest, WEIGHT_NAMES } from '../../src/carryon/weights.js';
import { parseModel } from '../../src/formats/onnx-builder.js';
import { decodeSafetensors, serializeSafetensors, type TensorInput } from '../../src/formats/safetensors.js';
import type { CarryOnChange } from '../../src/store/carry-ons.js';
import { api, LogCapture, uploadCarryOn, uploadCarryOnTo, type FormPart } from '../helpers/admin.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { STORE_SETUPS, testDatabase, type TestDatabase } from '../helpers/databases.js';

// Every test here runs on each metadata backend, and on PostgreSQL with a bucket (test/helpers/databases.ts), each on a database of its own.
describe.each(STORE_SETUPS)('on %s', (backend) => {
  let database: TestDatabase;

  const { onnx } = onnxProto;
  const MAX_BYTES = 1 << 20;

  let gw: TestGateway;
  let work: string;
  const logs = new LogCapture();
  const changes: CarryOnChange[] = [];
  /** What a client uploads: the package's weights (the graph is only compared with what the gateway builds). */
  let weights: Buffer;
  let graph: Buffer;
  let manifest: CarryOnManifest;
  const keys: Record<'user1' | 'user2' | 'admin2', string> = { user1: '', user2: '', admin2: '' };

  beforeAll(async () => {
    database = await testDatabase(backend);
    gw = await startTestGateway(
      { CARRYON_DATA_DIR: freshDataDir('carryon-admin-carry-ons-'), CARRYON_LOG_LEVEL: 'info', CARRYON_MAX_CARRYON_BYTES: String(MAX_BYTES), ...database.env },
      { logStream: logs },
    );
    work = freshDataDir('carryon-admin-packages-');
    gw.store.carryOns.onChange((e) => changes.push(e));
    const pkg = await makeCarryOn(baseDir(), path.join(work, 'style'), { id: 'style', perturb: 0.5 });
    graph = fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.graph));
    weights = fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.weights));
    manifest = pkg.manifest;
    for (const t of ['t1', 't2', 'refuse']) expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: t })).status).toBe(201);
    keys.user1 = await newKey({ tenant: 't1' });
    keys.user2 = await newKey({ tenant: 't2' });
    keys.admin2 = await newKey({ tenant: 't2', scope: 'admin' });
  });
  afterAll(async () => {
    await gw?.close();
    await database?.drop();
    for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const baseDir = () => path.join(gw.dataDir, 'models', 'stories260K');
  const listDir = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []);
  const stagingEntries = () => listDir(path.join(gw.dataDir, 'carry-ons', '.staging'));
  const blobsDir = () => path.join(gw.dataDir, 'carry-ons', 'blobs');
  const blobOf = (sha256: string) => path.join(blobsDir(), `${sha256}.onnx`);

  /** Everything an upload or a delete could change: the carry-on tables and the files under carry-ons/. */
  async function storeSnapshot(): Promise<object> {
    const rows = (table: string) => gw.store.db.query(`SELECT * FROM ${table} ORDER BY 1, 2, 3`);
    return {
      carryOns: await rows('carry_ons'),
      versions: await rows('carry_on_versions'),
      aliases: await rows('carry_on_aliases'),
      files: listDir(path.join(gw.dataDir, 'carry-ons')),
      blobs: listDir(blobsDir()),
      staging: stagingEntries(),
    };
  }
  const client = (apiKey: string) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 });

  async function newKey(body: object): Promise<string> {
    const r = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, body);
    expect(r.status, r.text).toBe(201);
    return r.json.key;
  }

  /** The form a client sends: the manifest as a text field (or a file, as `curl -F manifest=@…` does) and the `weights` file. */
  function form(m: object, w: Uint8Array = weights, manifestAsFile = false, filePart = 'weights'): FormPart[] {
    const text = JSON.stringify(m);
    return [
      manifestAsFile ? { name: 'manifest', filename: 'manifest.json', data: text } : { name: 'manifest', data: text },
      { name: filePart, filename: filePart === 'weights' ? CARRYON_FILES.weights : CARRYON_FILES.graph, data: w },
    ];
  }

  /** The package's weights changed through `edit` (tensor name → F32 data and shape), re-serialised. */
  function editedWeights(edit: (tensors: Map<string, TensorInput>) => void): Buffer {
    return editedWeightsOf(weights, edit);
  }

  function editedWeightsOf(file: Uint8Array, edit: (tensors: Map<string, TensorInput>) => void): Buffer {
    const tensors = new Map<string, TensorInput>();
    for (const [name, t] of decodeSafetensors(file).tensors) tensors.set(name, { dtype: t.dtype, shape: t.shape, data: Float32Array.from(t.data as Float32Array) });
    edit(tensors);
    return serializeSafetensors(Object.fromEntries(tensors));
  }

  /** The package's manifest without its weights digest, for uploads of weights edited on purpose. */
  const undigested = (): object => ({ ...manifest, weights_sha256: undefined });

  /** A manifest as the server stores it: the package's, numbered by the server, created when uploaded. */
  const stored = (version: number) => ({ ...manifest, version, created_at: expect.any(String) as unknown as string });

  describe('carry-on upload', () => {
    it('accepts weights: builds the same graph the package has, stored as the blob DATA_DIR/carry-ons/blobs/<sha256>.onnx', async () => {
      const r = await uploadCarryOn<CarryOnVersionObject>(gw, 't1', ADMIN_KEY, form(manifest));
      expect(r.status, r.text).toBe(201);
      expect(r.json).toMatchObject({ object: 'carry_on.version', tenant: 't1', carry_on: 'style', version: 1, sha256: manifest.sha256, bytes: graph.length });
      expect(r.json.manifest).toEqual(stored(1));
      expect(r.json.manifest.weights_sha256).toBe(sha256Hex(weights));

      expect(listDir(path.join(gw.dataDir, 'carry-ons'))).toEqual(['.staging', 'blobs']);
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      expect(sha256Hex(fs.readFileSync(blobOf(manifest.sha256)))).toBe(manifest.sha256);
      expect(stagingEntries()).toEqual([]);

      const record = await gw.store.carryOns.resolve('t1', 'style');
      expect(record).toMatchObject({ tenantId: 't1', carryOnId: 'style', version: 1, graphPath: blobOf(manifest.sha256), sha256: manifest.sha256, bytes: graph.length });
      expect(record?.manifest).toEqual(r.json.manifest);
      expect(changes).toContainEqual({ tenantId: 't1', carryOnId: 'style', kind: 'version-added', version: 1 });
    });

    it("serves it: the tenant's key lists and uses it on /v1; another tenant's key does not see it", async () => {
      const own = await client(keys.user1).models.list();
      expect(own.data.map((m) => m.id)).toContain('style');
      const chat = await client(keys.user1).chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 4, temperature: 0 });
      expect(chat.choices[0].message.content).toEqual(expect.any(String));

      const other = await client(keys.user2).models.list();
      expect(other.data.map((m) => m.id)).not.toContain('style');
      await expect(
        client(keys.user2).chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }),
      ).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
    });

    it('assigns increasing versions, moves aliases, and refuses to delete an aliased version', async () => {
      // The package's manifest says version 1 every time: the server numbers versions, not the uploader.
      const v2 = await uploadCarryOn<CarryOnVersionObject>(gw, 't1', ADMIN_KEY, form(manifest, weights, true));
      expect(v2.status, v2.text).toBe(201);
      expect(v2.json.version).toBe(2);
      expect(v2.json.manifest.version).toBe(2);
      expect((await gw.store.carryOns.resolve('t1', 'style'))?.version).toBe(2);
      // Identical bytes: both versions point at the one blob.
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      expect((await gw.store.carryOns.resolve('t1', 'style', '1'))?.graphPath).toBe(blobOf(manifest.sha256));

      const aliased = await api<CarryOnObject>(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/stable', ADMIN_KEY, { version: 1 });
      expect(aliased.status, aliased.text).toBe(200);
      expect(aliased.json).toMatchObject({ object: 'carry_on', id: 'style', latest_version: 2, aliases: { stable: 1 } });
      expect(aliased.json.versions.map((v) => v.version)).toEqual([1, 2]);
      expect((await gw.store.carryOns.resolve('t1', 'style', 'stable'))?.version).toBe(1);
      expect((await gw.store.carryOns.resolve('t1', 'style', '1'))?.version).toBe(1);
      expect((await gw.store.carryOns.resolve('t1', 'style', 'latest'))?.version).toBe(2);
      expect(await gw.store.carryOns.resolve('t1', 'style', 'nope')).toBeNull();
      expect((await client(keys.user1).chat.completions.create({ model: 'style@stable', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 })).model).toBeTruthy();

      const badAliases = [
        await api(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/latest', ADMIN_KEY, { version: 1 }),
        await api(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/7up', ADMIN_KEY, { version: 1 }),
        await api(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/stable', ADMIN_KEY, { version: 9 }),
      ];
      for (const r of badAliases) expect(r.status, r.text).toBe(400);

      const blocked = await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style/versions/1', ADMIN_KEY);
      expect(blocked.status).toBe(409);
      expect(blocked.json.error?.message).toContain('stable');
      expect((await api(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/stable', ADMIN_KEY, { version: 2 })).status).toBe(200);
      const del = await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style/versions/1', ADMIN_KEY);
      expect(del.status, del.text).toBe(200);
      expect(del.json).toEqual({ object: 'carry_on.version', id: 'style@1', deleted: true });
      // Version 2 still points at the shared blob, so it stays.
      expect(fs.existsSync(blobOf(manifest.sha256))).toBe(true);
      expect(await gw.store.carryOns.resolve('t1', 'style', '1')).toBeNull();
      expect((await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style/versions/1', ADMIN_KEY)).status).toBe(404);

      // A deleted version's number is never handed out again.
      const v3 = await uploadCarryOn<CarryOnVersionObject>(gw, 't1', ADMIN_KEY, form(manifest));
      expect(v3.json.version).toBe(3);
      const listed = await api<List<CarryOnObject>>(gw, 'GET', '/admin/tenants/t1/carry-ons', ADMIN_KEY);
      expect(listed.json.data).toHaveLength(1);
      expect(listed.json.data[0]).toMatchObject({ id: 'style', latest_version: 3, aliases: { stable: 2 } });
      expect(listed.json.data[0].versions.map((v) => v.version)).toEqual([2, 3]);
      expect(changes.filter((c) => c.kind === 'alias-changed')).toHaveLength(2);
      expect(changes).toContainEqual({ tenantId: 't1', carryOnId: 'style', kind: 'deleted', version: 1 });
    });

    it('another tenant cannot see or touch them, even with its own admin key', async () => {
      const attempts = [
        await api(gw, 'GET', '/admin/tenants/t1/carry-ons', keys.admin2),
        await api(gw, 'GET', '/admin/tenants/t1/carry-ons/style', keys.admin2),
        await api(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/mine', keys.admin2, { version: 2 }),
        await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style/versions/2', keys.admin2),
        await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style', keys.admin2),
        await uploadCarryOn(gw, 't1', keys.admin2, form(manifest)),
        await uploadCarryOn(gw, 't1', keys.user1, form(manifest)),
      ];
      expect(attempts.map((r) => r.status)).toEqual([404, 404, 404, 404, 404, 404, 403]);
      expect((await api<List<CarryOnObject>>(gw, 'GET', '/admin/tenants/t2/carry-ons', keys.admin2)).json.data).toEqual([]);
      expect(await gw.store.carryOns.listForTenant('t2')).toEqual([]);
      expect(await gw.store.carryOns.resolve('t2', 'style')).toBeNull();
      expect((await gw.store.carryOns.get('t1', 'style'))?.versions.map((v) => v.version)).toEqual([2, 3]);
    });

    it('deleting a carry-on removes every version, its aliases and its files', async () => {
      const del = await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style', ADMIN_KEY);
      expect(del.json).toEqual({ object: 'carry_on', id: 'style', deleted: true });
      // No live version points at the blob any more.
      expect(listDir(blobsDir())).toEqual([]);
      expect(await gw.store.carryOns.resolve('t1', 'style')).toBeNull();
      expect(await gw.store.carryOns.resolve('t1', 'style', 'stable')).toBeNull();
      expect((await api(gw, 'GET', '/admin/tenants/t1/carry-ons/style', ADMIN_KEY)).status).toBe(404);
      expect(changes.at(-1)).toEqual({ tenantId: 't1', carryOnId: 'style', kind: 'deleted' });
      await expect(
        client(keys.user1).chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }),
      ).rejects.toMatchObject({ status: 404 });
    });
  });

  describe('deleting a tenant', () => {
    it("deletes its carry-ons and their files, and tells the engine", async () => {
      expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'gone' })).status).toBe(201);
      expect((await uploadCarryOn(gw, 'gone', ADMIN_KEY, form(manifest))).status).toBe(201);
      expect((await api(gw, 'PUT', '/admin/tenants/gone/carry-ons/style/aliases/stable', ADMIN_KEY, { version: 1 })).status).toBe(200);
      const removed = await api(gw, 'DELETE', '/admin/tenants/gone/carry-ons/style/aliases/stable', ADMIN_KEY);
      expect(removed.json).toEqual({ object: 'carry_on.alias', id: 'stable', deleted: true });
      expect((await api(gw, 'DELETE', '/admin/tenants/gone/carry-ons/style/aliases/stable', ADMIN_KEY)).status).toBe(404);
      expect(fs.existsSync(blobOf(manifest.sha256))).toBe(true);

      expect((await api(gw, 'DELETE', '/admin/tenants/gone', ADMIN_KEY)).status).toBe(200);
      expect(fs.existsSync(blobOf(manifest.sha256))).toBe(false);
      expect(await gw.store.carryOns.resolve('gone', 'style')).toBeNull();
      expect(changes.at(-1)).toEqual({ tenantId: 'gone', carryOnId: 'style', kind: 'deleted' });

      // The id comes back empty: the old carry-on stays deleted, and its numbering goes on.
      expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'gone' })).status).toBe(201);
      expect(await gw.store.carryOns.listForTenant('gone')).toEqual([]);
      expect((await uploadCarryOn<CarryOnVersionObject>(gw, 'gone', ADMIN_KEY, form(manifest))).json.version).toBe(2);
    });
  });

  describe('POST, GET and DELETE /admin/carry-ons', () => {
    let adminN1 = '';
    const ids = (r: { json: List<CarryOnObject> }) => r.json.data.map((c) => `${c.tenant}/${c.id}`).sort();

    beforeAll(async () => {
      for (const t of ['n1', 'n2']) expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: t })).status).toBe(201);
      adminN1 = await newKey({ tenant: 'n1', scope: 'admin' });
    });

    it('uploads for the tenant in the form, in the manifest, or of a tenant admin key; the stored manifest has no tenant', async () => {
      // `curl -F tenant=n1 -F manifest=@manifest.json -F weights=@weights.safetensors`
      const byField = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, [{ name: 'tenant', data: 'n1' }, ...form(manifest, weights, true)]);
      expect(byField.status, byField.text).toBe(201);
      expect(byField.json).toMatchObject({ object: 'carry_on.version', tenant: 'n1', carry_on: 'style', version: 1, sha256: manifest.sha256 });

      const byManifest = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, form({ ...manifest, tenant: 'n2' }));
      expect(byManifest.status, byManifest.text).toBe(201);
      expect(byManifest.json).toMatchObject({ tenant: 'n2', carry_on: 'style', version: 1 });
      expect(byManifest.json.manifest).toEqual(stored(1));
      expect(byManifest.json.manifest).not.toHaveProperty('tenant');
      expect((await gw.store.carryOns.resolve('n2', 'style'))?.manifest).not.toHaveProperty('tenant');

      // The form and the manifest may both name it, if they agree.
      const both = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, [...form({ ...manifest, tenant: 'n2' }), { name: 'tenant', data: 'n2' }]);
      expect(both.status, both.text).toBe(201);
      expect(both.json).toMatchObject({ tenant: 'n2', version: 2 });

      const byKey = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', adminN1, form(manifest));
      expect(byKey.status, byKey.text).toBe(201);
      expect(byKey.json).toMatchObject({ tenant: 'n1', carry_on: 'style', version: 2 });

      // Three tenants' versions, one set of bytes: one blob.
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      const served = await client(await newKey({ tenant: 'n1' })).chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
      expect(served.choices).toHaveLength(1);
    });

    it('refuses an upload whose tenant is missing, inconsistent or not the key’s, leaving the store as it was', async () => {
      const before = await storeSnapshot();
      const refusals: Array<[string, FormPart[], number, string, string]> = [
        [ADMIN_KEY, form(manifest), 400, 'missing_required_parameter', 'tenant'],
        [ADMIN_KEY, [{ name: 'tenant', data: 'n1' }, ...form({ ...manifest, tenant: 'n2' })], 400, 'invalid_value', 'manifest.tenant'],
        [ADMIN_KEY, [{ name: 'tenant', data: 'nobody' }, ...form(manifest)], 404, 'not_found', 'tenant'],
        [ADMIN_KEY, [{ name: 'tenant', data: '../x' }, ...form(manifest)], 400, 'invalid_value', 'tenant'],
        [ADMIN_KEY, form({ ...manifest, tenant: '../x' }), 400, 'invalid_value', 'manifest.tenant'],
        [adminN1, [{ name: 'tenant', data: 'n2' }, ...form(manifest)], 404, 'not_found', 'tenant'],
        [adminN1, form({ ...manifest, tenant: 'n2' }), 404, 'not_found', 'tenant'],
      ];
      for (const [key, parts, status, code, param] of refusals) {
        const r = await uploadCarryOnTo(gw, '/admin/carry-ons', key, parts);
        expect(r.status, r.text).toBe(status);
        expect(r.json.error, r.text).toMatchObject({ code, param });
      }
      // On the tenant's own route, a form or manifest naming another tenant is refused too.
      const r = await uploadCarryOn(gw, 'n1', ADMIN_KEY, form({ ...manifest, tenant: 'n2' }));
      expect(r.json.error, r.text).toMatchObject({ code: 'invalid_value', param: 'manifest.tenant' });
      expect(await storeSnapshot()).toEqual(before);
    });

    it('lists: every tenant’s for a global admin, ?tenant= to narrow, a tenant admin its own', async () => {
      const all = await api<List<CarryOnObject>>(gw, 'GET', '/admin/carry-ons', ADMIN_KEY);
      expect(all.status, all.text).toBe(200);
      expect(ids(all)).toEqual(['gone/style', 'n1/style', 'n2/style']);
      const n2 = await api<List<CarryOnObject>>(gw, 'GET', '/admin/carry-ons?tenant=n2', ADMIN_KEY);
      expect(ids(n2)).toEqual(['n2/style']);
      expect(n2.json.data[0].versions.map((v) => v.version)).toEqual([1, 2]);
      expect(ids(await api<List<CarryOnObject>>(gw, 'GET', '/admin/carry-ons', adminN1))).toEqual(['n1/style']);
      expect(ids(await api<List<CarryOnObject>>(gw, 'GET', '/admin/carry-ons?tenant=n1', adminN1))).toEqual(['n1/style']);
      expect((await api(gw, 'GET', '/admin/carry-ons?tenant=n2', adminN1)).status).toBe(404);
      expect((await api(gw, 'GET', '/admin/carry-ons?tenant=nobody', ADMIN_KEY)).status).toBe(404);
      expect((await api(gw, 'GET', '/admin/carry-ons?tenant=../x', ADMIN_KEY)).json.error).toMatchObject({ code: 'invalid_value', param: 'tenant' });
      expect((await api(gw, 'GET', '/admin/carry-ons?tenants=n1', ADMIN_KEY)).json.error).toMatchObject({ code: 'unknown_parameter' });
    });

    it('gets and deletes one, the tenant from ?tenant= or the key; a global admin must name it', async () => {
      const got = await api<CarryOnObject>(gw, 'GET', '/admin/carry-ons/style?tenant=n2', ADMIN_KEY);
      expect(got.json).toMatchObject({ object: 'carry_on', id: 'style', tenant: 'n2', latest_version: 2 });
      expect((await api<CarryOnObject>(gw, 'GET', '/admin/carry-ons/style', adminN1)).json).toMatchObject({ tenant: 'n1', latest_version: 2 });
      const ambiguous = await api(gw, 'GET', '/admin/carry-ons/style', ADMIN_KEY);
      expect(ambiguous.status).toBe(400);
      expect(ambiguous.json.error).toMatchObject({ code: 'missing_required_parameter', param: 'tenant' });
      expect((await api(gw, 'GET', '/admin/carry-ons/nope?tenant=n1', ADMIN_KEY)).status).toBe(404);
      expect((await api(gw, 'GET', '/admin/carry-ons/style?tenant=n2', adminN1)).status).toBe(404);

      const before = await storeSnapshot();
      expect((await api(gw, 'DELETE', '/admin/carry-ons/style', ADMIN_KEY)).json.error).toMatchObject({ param: 'tenant' });
      expect((await api(gw, 'DELETE', '/admin/carry-ons/style?tenant=n2', adminN1)).status).toBe(404);
      expect((await api(gw, 'DELETE', '/admin/carry-ons/nope', adminN1)).status).toBe(404);
      expect(await storeSnapshot()).toEqual(before);

      const del = await api(gw, 'DELETE', '/admin/carry-ons/style', adminN1);
      expect(del.json).toEqual({ object: 'carry_on', id: 'style', deleted: true });
      expect(await gw.store.carryOns.resolve('n1', 'style')).toBeNull();
      expect((await api(gw, 'DELETE', '/admin/carry-ons/style?tenant=n2', ADMIN_KEY)).status).toBe(200);
      expect(await gw.store.carryOns.resolve('n2', 'style')).toBeNull();
      // Tenant 'gone' still has a version with these bytes, so the blob stays.
      expect((await gw.store.carryOns.resolve('gone', 'style'))?.graphPath).toBe(blobOf(manifest.sha256));
      expect(fs.existsSync(blobOf(manifest.sha256))).toBe(true);
    });
  });

  describe('carry-on upload refusals', () => {
    /** Refused through both upload routes, with the store (tables and files) exactly as before. */
    async function expectRefused(parts: FormPart[], status: number, code: string, param: string | null, message?: RegExp) {
      const before = await storeSnapshot();
      for (const [route, body] of [
        ['/admin/tenants/refuse/carry-ons', parts],
        ['/admin/carry-ons', [{ name: 'tenant', data: 'refuse' }, ...parts]],
      ] as const) {
        const r = await uploadCarryOnTo(gw, route, ADMIN_KEY, [...body]);
        expect(r.status, `${route}: ${r.text}`).toBe(status);
        expect(r.json.error?.code, r.text).toBe(code);
        expect(r.json.error?.param, r.text).toBe(param);
        if (message) expect(r.json.error?.message).toMatch(message);
        expect(stagingEntries()).toEqual([]);
        expect(await gw.store.carryOns.listForTenant('refuse')).toEqual([]);
        expect(await storeSnapshot()).toEqual(before);
      }
    }

    it('a carry-on built for another base', async () => {
      await expectRefused(form({ ...manifest, base_fingerprint: 'f'.repeat(64) }), 400, 'invalid_value', 'manifest.base_fingerprint');
      await expectRefused(form({ ...manifest, hidden_size: manifest.hidden_size * 2 }), 400, 'invalid_value', 'manifest.hidden_size');
      await expectRefused(form({ ...manifest, input_layers: ['final', 3] }), 400, 'invalid_value', 'manifest.input_layers');
    });

    it('weights whose sha256 is not the one the manifest names', async () => {
      await expectRefused(form({ ...manifest, weights_sha256: '0'.repeat(64) }), 400, 'invalid_value', 'manifest.weights_sha256');
    });

    it('an ONNX graph instead of weights (graphs are programs; the gateway builds its own)', async () => {
      for (const part of ['model', 'graph']) {
        await expectRefused(form(manifest, graph, false, part), 400, 'invalid_value', part, /weights, not ONNX graphs/);
      }
    });

    it('the admin-key theft of issue 12: a graph naming a server file as external data never runs, and nothing of the file comes back', async () => {
      const keyFile = path.join(gw.dataDir, 'admin-key');
      fs.writeFileSync(keyFile, 'sk-admin-secret-bytes-0123456789\n');
      // The attack's file: a ModelProto whose `graph` field comes twice (protobuf merges them), the
      // second adding an initializer whose data is the external file `admin-key` in the data folder.
      const leak = onnx.GraphProto.create({
        initializer: [
          onnx.TensorProto.create({
            name: 'leak',
            dataType: onnx.TensorProto.DataType.UINT8,
            dims: [33],
            dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
            externalData: [onnx.StringStringEntryProto.create({ key: 'location', value: 'admin-key' })],
          }),
        ],
      });
      const probe = Buffer.concat([graph, onnx.ModelProto.encode(onnx.ModelProto.create({ graph: leak })).finish()]);
      expect(parseModel(probe).graph?.initializer?.some((t) => t.name === 'leak')).toBe(true);
      for (const part of ['model', 'weights']) {
        const r = await uploadCarryOn(gw, 'refuse', ADMIN_KEY, form(manifest, probe, false, part));
        expect(r.status, r.text).toBe(400);
        expect(r.text).not.toContain('sk-admin-secret');
        expect(r.text).not.toMatch(/\[0, \d+, \d+/); // no shapes computed from anything the server read
      }
      fs.rmSync(keyFile);
    });

    it('truncated weights, or bytes that are not safetensors at all', async () => {
      const torn = weights.subarray(0, Math.floor(weights.length / 2));
      await expectRefused(form({ ...manifest, weights_sha256: sha256Hex(weights) }, torn), 400, 'invalid_value', 'manifest.weights_sha256');
      await expectRefused(form(undigested(), torn), 400, 'invalid_value', 'weights');
      await expectRefused(form(undigested(), new Uint8Array(0)), 400, 'invalid_value', 'weights');
      const garbage = Buffer.from(Array.from({ length: weights.length }, (_, i) => (i * 7919 + 13) % 251));
      await expectRefused(form(undigested(), garbage), 400, 'invalid_value', 'weights', /not valid safetensors/);
    });

    it('a tensor with the wrong shape, NaN or infinity, a name the architecture lacks, a missing or extra tensor, not F32', async () => {
      const out = WEIGHT_NAMES.outProj;
      const wrongShape = editedWeights((t) => {
        const o = t.get(out)!;
        t.set(out, { dtype: 'F32', shape: [o.shape[1], o.shape[0]], data: o.data });
      });
      await expectRefused(form(undigested(), wrongShape), 400, 'invalid_value', `weights.${out}`, /must have shape \[64, 32\]/);
      for (const bad of [NaN, Infinity]) {
        const nonFinite = editedWeights((t) => {
          (t.get(out)!.data as Float32Array)[5] = bad;
        });
        await expectRefused(form(undigested(), nonFinite), 400, 'invalid_value', `weights.${out}`, /not finite/);
      }
      const renamed = editedWeights((t) => {
        t.set('carry_on.lm_head.weight', t.get(out)!);
        t.delete(out);
      });
      await expectRefused(form(undigested(), renamed), 400, 'invalid_value', 'weights.carry_on.lm_head.weight', /not a tensor of this architecture/);
      const missing = editedWeights((t) => t.delete(WEIGHT_NAMES.gateBias));
      await expectRefused(form(undigested(), missing), 400, 'invalid_value', `weights.${WEIGHT_NAMES.gateBias}`, /missing tensor/);
      const extra = editedWeights((t) => t.set('carry_on.layers.2.input_layernorm.weight', { dtype: 'F32', shape: [32], data: new Float32Array(32) }));
      await expectRefused(form(undigested(), extra), 400, 'invalid_value', 'weights.carry_on.layers.2.input_layernorm.weight');
      const f16 = editedWeights((t) => t.set(WEIGHT_NAMES.gateBias, { dtype: 'F16', shape: [64], data: new Uint16Array(64) }));
      await expectRefused(form(undigested(), f16), 400, 'invalid_value', `weights.${WEIGHT_NAMES.gateBias}`, /must be F32/);
    });

    it('weights that do not fit the manifest (an embedding smaller than the vocabulary)', async () => {
      const pkg = await makeCarryOn(baseDir(), path.join(work, 'small-vocab'), { id: 'small-vocab', readsTokenIds: true, vocabSize: 100 });
      const w = fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.weights));
      // Smaller than the architecture needs: refused before any process starts.
      await expectRefused(form(pkg.manifest, w), 400, 'invalid_value', 'weights', /smaller than this architecture/);
      // Padded to the size, the header check names the tensor.
      const padded = editedWeightsOf(w, (t) => t.set('carry_on.pad', { dtype: 'F32', shape: [412 * 32], data: new Float32Array(412 * 32) }));
      await expectRefused(form({ ...pkg.manifest, weights_sha256: undefined }, padded), 400, 'invalid_value', `weights.${WEIGHT_NAMES.embedTokens}`, /must have shape \[512, 32\]/);
    });

    it('an architecture beyond the limits is refused from the manifest alone, before anything is built', async () => {
      const arch = manifest.architecture;
      for (const layers of [2147483648, 100000000]) {
        await expectRefused(form({ ...manifest, architecture: { ...arch, layers } }), 400, 'invalid_value', 'manifest.architecture.layers');
      }
      // Within each limit, but more weights than CARRYON_MAX_CARRYON_BYTES allows.
      await expectRefused(form({ ...manifest, architecture: { ...arch, width: 4096, intermediate: 8192 } }), 400, 'invalid_value', 'manifest.architecture');
    });

    it('an invalid manifest, missing parts, extra parts, or a body that is not multipart', async () => {
      await expectRefused([{ name: 'manifest', data: '{not json' }, form(manifest)[1]], 400, 'invalid_json', 'manifest');
      await expectRefused(form({ ...manifest, id: 'Bad Id' }), 400, 'invalid_value', 'manifest.id');
      await expectRefused([form(manifest)[1]], 400, 'missing_required_parameter', 'manifest');
      await expectRefused([form(manifest)[0]], 400, 'missing_required_parameter', 'weights');
      await expectRefused([...form(manifest), { name: 'extra', data: 'x' }], 400, 'invalid_value', 'extra');
      await expectRefused([...form(manifest), form(manifest)[1]], 400, 'invalid_value', 'weights');
      for (const route of ['/admin/tenants/refuse/carry-ons', '/admin/carry-ons']) {
        const json = await api(gw, 'POST', route, ADMIN_KEY, { manifest, tenant: 'refuse' });
        expect(json.status).toBe(415);
        expect(json.json.error?.code).toBe('unsupported_media_type');
      }
      expect((await uploadCarryOn(gw, 'nobody', ADMIN_KEY, form(manifest))).status).toBe(404);
    });

    it('an id with path characters, in the manifest or in the URL', async () => {
      for (const id of ['../x', 'a/b', '..', 'a\\b']) await expectRefused(form({ ...manifest, id }), 400, 'invalid_value', 'manifest.id');
      const before = await storeSnapshot();
      for (const id of ['..%2Fx', 'a%2Fb', '..%2F..%2Fgateway.sqlite']) {
        for (const method of ['GET', 'DELETE'] as const) {
          const r = await api(gw, method, `/admin/carry-ons/${id}?tenant=refuse`, ADMIN_KEY);
          expect(r.status, `${method} ${id}: ${r.text}`).toBe(400);
          expect(r.json.error).toMatchObject({ code: 'invalid_value', param: 'id' });
          expect((await api(gw, method, `/admin/tenants/refuse/carry-ons/${id}`, ADMIN_KEY)).status).toBe(404);
        }
      }
      expect(await storeSnapshot()).toEqual(before);
    });

    it('401 for an unknown or revoked key, 403 for an inference key, before the body is read', async () => {
      const revoked = await newKey({ tenant: 'refuse', scope: 'admin' });
      const id = (await api<List<{ id: string; prefix: string }>>(gw, 'GET', '/admin/keys?tenant=refuse', ADMIN_KEY)).json.data.find((k) => revoked.startsWith(k.prefix))?.id;
      expect((await api(gw, 'DELETE', `/admin/keys/${id}`, ADMIN_KEY)).status).toBe(200);
      const user = await newKey({ tenant: 'refuse' });
      const before = await storeSnapshot();
      for (const [key, status, code] of [
        ['sk-not-a-key', 401, 'invalid_api_key'],
        [revoked, 401, 'invalid_api_key'],
        [user, 403, 'permission_denied'],
      ] as const) {
        for (const route of ['/admin/tenants/refuse/carry-ons', '/admin/carry-ons']) {
          const r = await uploadCarryOnTo(gw, route, key, [{ name: 'tenant', data: 'refuse' }, ...form(manifest)]);
          expect(r.status, `${route}: ${r.text}`).toBe(status);
          expect(r.json.error?.code).toBe(code);
        }
        for (const [method, route] of [
          ['GET', '/admin/carry-ons'],
          ['GET', '/admin/carry-ons/style?tenant=refuse'],
          ['DELETE', '/admin/carry-ons/style?tenant=refuse'],
          ['GET', '/admin/tenants/refuse/carry-ons'],
        ] as const) {
          const r = await api(gw, method, route, key);
          expect(r.status, `${method} ${route}: ${r.text}`).toBe(status);
          expect(r.json.error?.code).toBe(code);
        }
      }
      expect(await storeSnapshot()).toEqual(before);
    });

    it('413 beyond CARRYON_MAX_CARRYON_BYTES: announced by Content-Length, or found while streaming', async () => {
      const before = await storeSnapshot();
      const big = Buffer.alloc(MAX_BYTES + 512 * 1024, 7);
      const m = { ...manifest, sha256: sha256Hex(big) };
      for (const route of ['/admin/tenants/refuse/carry-ons', '/admin/carry-ons']) {
        for (const chunked of [false, true]) {
          const r = await uploadCarryOnTo(gw, route, ADMIN_KEY, [{ name: 'tenant', data: 'refuse' }, ...form(m, big)], { chunked });
          expect(r.status, `${route} chunked=${chunked}: ${r.text}`).toBe(413);
          expect(r.json.error).toMatchObject({ code: 'request_too_large', param: 'weights' });
        }
      }
      const huge = Buffer.alloc(3 * MAX_BYTES, 7);
      const r = await uploadCarryOn(gw, 'refuse', ADMIN_KEY, form({ ...manifest, sha256: sha256Hex(huge) }, huge));
      expect(r.status).toBe(413);
      expect(await storeSnapshot()).toEqual(before);
      // The server is still fine.
      expect((await api(gw, 'GET', '/admin/tenants/refuse/carry-ons', ADMIN_KEY)).status).toBe(200);
    });

    it('a build that runs out of time is killed and refused; close() kills a running build at once', async () => {
      const dir = fs.mkdtempSync(path.join(work, 'build-'));
      const weightsPath = path.join(dir, CARRYON_FILES.weights);
      fs.writeFileSync(weightsPath, weights);
      const config = configFromManifest(manifest, 512);
      const slow = new CarryOnBuilder({ timeoutMs: 1 });
      expect(await slow.build({ weightsPath, graphPath: path.join(dir, 'a.onnx'), config })).toEqual({
        ok: false,
        problem: expect.stringMatching(/took longer than 1 ms/) as unknown,
        param: 'weights',
      });
      const builder = new CarryOnBuilder({ timeoutMs: 60_000 });
      expect(await builder.build({ weightsPath, graphPath: path.join(dir, 'b.onnx'), config })).toMatchObject({ ok: true, sha256: manifest.sha256 });
      const running = builder.build({ weightsPath, graphPath: path.join(dir, 'c.onnx'), config });
      const started = performance.now();
      builder.close();
      await expect(running).rejects.toThrow();
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(fs.existsSync(path.join(dir, 'c.onnx'))).toBe(false);
    });
  });

  describe('carry-on audit', () => {
    it('logs each change once, naming actor, tenant and target', () => {
      const all = logs.audits();
      expect(all.filter((a) => a.tenant === 'gone').map((a) => `${a.action} ${a.target}`)).toEqual([
        'tenant.create gone',
        'carry_on.upload style@1',
        'carry_on.alias.set style@stable',
        'carry_on.alias.delete style@stable',
        'tenant.delete gone',
        'tenant.create gone',
        'carry_on.upload style@2',
      ]);
      const audits = all.filter((a) => a.action.startsWith('carry_on.') && a.tenant === 't1');
      expect(audits.filter((a) => a.action === 'carry_on.upload').map((a) => a.target)).toEqual(['style@1', 'style@2', 'style@3']);
      expect(audits.filter((a) => a.action === 'carry_on.alias.set').map((a) => a.target)).toEqual(['style@stable', 'style@stable']);
      expect(audits.filter((a) => a.action === 'carry_on.version.delete').map((a) => a.target)).toEqual(['style@1']);
      expect(audits.filter((a) => a.action === 'carry_on.delete').map((a) => a.target)).toEqual(['style']);
      for (const a of all) expect(a.actor).toMatch(/^key_[0-9a-f]{16}$/);
      const text = logs.lines.join('');
      for (const k of [ADMIN_KEY, ...Object.values(keys)]) expect(text.includes(k)).toBe(false);
    });
  });
});
