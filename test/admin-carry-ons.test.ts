import fs from 'node:fs';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkCarryOnGraph } from '../src/admin/graph-check.js';
import type { CarryOnObject, CarryOnVersionObject, CreatedApiKeyObject, List } from '../src/admin/schemas.js';
import { CARRYON_FILES, sha256Hex, type CarryOnManifest } from '../src/carryon/manifest.js';
import { parseModel, serializeModel } from '../src/formats/onnx-builder.js';
import type { CarryOnChange } from '../src/store/carry-ons.js';
import { api, LogCapture, uploadCarryOn, uploadCarryOnTo, type FormPart } from './helpers/admin.js';
import { makeCarryOn } from './helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from './helpers/gateway.js';

const { onnx } = onnxProto;
const MAX_BYTES = 1 << 20;

let gw: TestGateway;
let work: string;
const logs = new LogCapture();
const changes: CarryOnChange[] = [];
let graph: Buffer;
let manifest: CarryOnManifest;
const keys: Record<'user1' | 'user2' | 'admin2', string> = { user1: '', user2: '', admin2: '' };

beforeAll(async () => {
  gw = await startTestGateway(
    { CARRYON_DATA_DIR: freshDataDir('carryon-admin-carry-ons-'), CARRYON_LOG_LEVEL: 'info', CARRYON_MAX_CARRYON_BYTES: String(MAX_BYTES) },
    { logStream: logs },
  );
  work = freshDataDir('carryon-admin-packages-');
  gw.store.carryOns.onChange((e) => changes.push(e));
  const pkg = await makeCarryOn(baseDir(), path.join(work, 'style'), { id: 'style', perturb: 0.5 });
  graph = fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.graph));
  manifest = pkg.manifest;
  for (const t of ['t1', 't2', 'refuse']) expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: t })).status).toBe(201);
  keys.user1 = await newKey({ tenant: 't1' });
  keys.user2 = await newKey({ tenant: 't2' });
  keys.admin2 = await newKey({ tenant: 't2', scope: 'admin' });
});
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

const baseDir = () => path.join(gw.dataDir, 'models', 'stories260K');
const listDir = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []);
const stagingEntries = () => listDir(path.join(gw.dataDir, 'carry-ons', '.staging'));
const blobsDir = () => path.join(gw.dataDir, 'carry-ons', 'blobs');
const blobOf = (sha256: string) => path.join(blobsDir(), `${sha256}.onnx`);

/** Everything an upload or a delete could change: the carry-on tables and the files under carry-ons/. */
function storeSnapshot(): object {
  const rows = (table: string) => gw.store.db.prepare(`SELECT * FROM ${table} ORDER BY 1, 2, 3`).all();
  return {
    carryOns: rows('carry_ons'),
    versions: rows('carry_on_versions'),
    aliases: rows('carry_on_aliases'),
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

/** The form a client sends: the manifest as a text field (or a file, as `curl -F manifest=@…` does) and the `model` file. */
function form(m: object, g: Uint8Array = graph, manifestAsFile = false, filePart = 'model'): FormPart[] {
  const text = JSON.stringify(m);
  return [
    manifestAsFile ? { name: 'manifest', filename: 'manifest.json', data: text } : { name: 'manifest', data: text },
    { name: filePart, filename: CARRYON_FILES.graph, data: g },
  ];
}

/** A graph changed through `edit`, with a manifest whose sha256 matches the changed bytes. */
function edited(edit: (graph: onnxProto.onnx.GraphProto) => void): { m: CarryOnManifest; g: Uint8Array } {
  const model = parseModel(graph);
  // Decoded messages are class instances, whose repeated fields are always arrays.
  edit(model.graph as onnxProto.onnx.GraphProto);
  const g = serializeModel(model);
  return { m: { ...manifest, sha256: sha256Hex(g) }, g };
}

describe('carry-on upload', () => {
  it('accepts a valid carry-on: 201 with the stored manifest; the graph stored as the blob DATA_DIR/carry-ons/blobs/<sha256>.onnx', async () => {
    // The first gateways' part name `graph` still works.
    const r = await uploadCarryOn<CarryOnVersionObject>(gw, 't1', ADMIN_KEY, form(manifest, graph, false, 'graph'));
    expect(r.status, r.text).toBe(201);
    expect(r.json).toMatchObject({ object: 'carry_on.version', tenant: 't1', carry_on: 'style', version: 1, sha256: manifest.sha256, bytes: graph.length });
    expect(r.json.manifest).toEqual({ ...manifest, version: 1 });

    expect(listDir(path.join(gw.dataDir, 'carry-ons'))).toEqual(['.staging', 'blobs']);
    expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
    expect(sha256Hex(fs.readFileSync(blobOf(manifest.sha256)))).toBe(manifest.sha256);
    expect(stagingEntries()).toEqual([]);

    const record = gw.store.carryOns.resolve('t1', 'style');
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
    const v2 = await uploadCarryOn<CarryOnVersionObject>(gw, 't1', ADMIN_KEY, form(manifest, graph, true));
    expect(v2.status, v2.text).toBe(201);
    expect(v2.json.version).toBe(2);
    expect(v2.json.manifest.version).toBe(2);
    expect(gw.store.carryOns.resolve('t1', 'style')?.version).toBe(2);
    // Identical bytes: both versions point at the one blob.
    expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
    expect(gw.store.carryOns.resolve('t1', 'style', '1')?.graphPath).toBe(blobOf(manifest.sha256));

    const aliased = await api<CarryOnObject>(gw, 'PUT', '/admin/tenants/t1/carry-ons/style/aliases/stable', ADMIN_KEY, { version: 1 });
    expect(aliased.status, aliased.text).toBe(200);
    expect(aliased.json).toMatchObject({ object: 'carry_on', id: 'style', latest_version: 2, aliases: { stable: 1 } });
    expect(aliased.json.versions.map((v) => v.version)).toEqual([1, 2]);
    expect(gw.store.carryOns.resolve('t1', 'style', 'stable')?.version).toBe(1);
    expect(gw.store.carryOns.resolve('t1', 'style', '1')?.version).toBe(1);
    expect(gw.store.carryOns.resolve('t1', 'style', 'latest')?.version).toBe(2);
    expect(gw.store.carryOns.resolve('t1', 'style', 'nope')).toBeNull();
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
    expect(gw.store.carryOns.resolve('t1', 'style', '1')).toBeNull();
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
    expect(gw.store.carryOns.listForTenant('t2')).toEqual([]);
    expect(gw.store.carryOns.resolve('t2', 'style')).toBeNull();
    expect(gw.store.carryOns.get('t1', 'style')?.versions.map((v) => v.version)).toEqual([2, 3]);
  });

  it('deleting a carry-on removes every version, its aliases and its files', async () => {
    const del = await api(gw, 'DELETE', '/admin/tenants/t1/carry-ons/style', ADMIN_KEY);
    expect(del.json).toEqual({ object: 'carry_on', id: 'style', deleted: true });
    // No live version points at the blob any more.
    expect(listDir(blobsDir())).toEqual([]);
    expect(gw.store.carryOns.resolve('t1', 'style')).toBeNull();
    expect(gw.store.carryOns.resolve('t1', 'style', 'stable')).toBeNull();
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
    expect(gw.store.carryOns.resolve('gone', 'style')).toBeNull();
    expect(changes.at(-1)).toEqual({ tenantId: 'gone', carryOnId: 'style', kind: 'deleted' });

    // The id comes back empty: the old carry-on stays deleted, and its numbering goes on.
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'gone' })).status).toBe(201);
    expect(gw.store.carryOns.listForTenant('gone')).toEqual([]);
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
    // `curl -F tenant=n1 -F manifest=@manifest.json -F model=@model.onnx`
    const byField = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, [{ name: 'tenant', data: 'n1' }, ...form(manifest, graph, true)]);
    expect(byField.status, byField.text).toBe(201);
    expect(byField.json).toMatchObject({ object: 'carry_on.version', tenant: 'n1', carry_on: 'style', version: 1, sha256: manifest.sha256 });

    const byManifest = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, form({ ...manifest, tenant: 'n2' }));
    expect(byManifest.status, byManifest.text).toBe(201);
    expect(byManifest.json).toMatchObject({ tenant: 'n2', carry_on: 'style', version: 1 });
    expect(byManifest.json.manifest).toEqual({ ...manifest, version: 1 });
    expect(byManifest.json.manifest).not.toHaveProperty('tenant');
    expect(gw.store.carryOns.resolve('n2', 'style')?.manifest).not.toHaveProperty('tenant');

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
    const before = storeSnapshot();
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
    expect(storeSnapshot()).toEqual(before);
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

    const before = storeSnapshot();
    expect((await api(gw, 'DELETE', '/admin/carry-ons/style', ADMIN_KEY)).json.error).toMatchObject({ param: 'tenant' });
    expect((await api(gw, 'DELETE', '/admin/carry-ons/style?tenant=n2', adminN1)).status).toBe(404);
    expect((await api(gw, 'DELETE', '/admin/carry-ons/nope', adminN1)).status).toBe(404);
    expect(storeSnapshot()).toEqual(before);

    const del = await api(gw, 'DELETE', '/admin/carry-ons/style', adminN1);
    expect(del.json).toEqual({ object: 'carry_on', id: 'style', deleted: true });
    expect(gw.store.carryOns.resolve('n1', 'style')).toBeNull();
    expect((await api(gw, 'DELETE', '/admin/carry-ons/style?tenant=n2', ADMIN_KEY)).status).toBe(200);
    expect(gw.store.carryOns.resolve('n2', 'style')).toBeNull();
    // Tenant 'gone' still has a version with these bytes, so the blob stays.
    expect(gw.store.carryOns.resolve('gone', 'style')?.graphPath).toBe(blobOf(manifest.sha256));
    expect(fs.existsSync(blobOf(manifest.sha256))).toBe(true);
  });
});

describe('carry-on upload refusals', () => {
  /** Refused through both upload routes, with the store (tables and files) exactly as before. */
  async function expectRefused(parts: FormPart[], status: number, code: string, param: string | null, message?: RegExp) {
    const before = storeSnapshot();
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
      expect(gw.store.carryOns.listForTenant('refuse')).toEqual([]);
      expect(storeSnapshot()).toEqual(before);
    }
  }

  it('a carry-on built for another base', async () => {
    await expectRefused(form({ ...manifest, base_fingerprint: 'f'.repeat(64) }), 400, 'invalid_value', 'manifest.base_fingerprint');
    await expectRefused(form({ ...manifest, hidden_size: manifest.hidden_size * 2 }), 400, 'invalid_value', 'manifest.hidden_size');
    await expectRefused(form({ ...manifest, input_layers: ['final', 3] }), 400, 'invalid_value', 'manifest.input_layers');
  });

  it('a graph whose sha256 is not the manifest’s', async () => {
    await expectRefused(form({ ...manifest, sha256: '0'.repeat(64) }), 400, 'invalid_value', 'manifest.sha256');
  });

  it('a truncated file: caught by the sha256, or, with a matching sha256, by the graph check', async () => {
    const torn = graph.subarray(0, Math.floor(graph.length / 2));
    await expectRefused(form(manifest, torn), 400, 'invalid_value', 'manifest.sha256');
    await expectRefused(form({ ...manifest, sha256: sha256Hex(torn) }, torn), 400, 'invalid_value', 'model');
    await expectRefused(form({ ...manifest, sha256: sha256Hex(new Uint8Array(0)) }, new Uint8Array(0)), 400, 'invalid_value', 'model');
  });

  it('a graph that references external data', async () => {
    const { m, g } = edited((graph) => {
      const init = graph.initializer[0];
      init.rawData = new Uint8Array(0);
      init.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      init.externalData = [onnx.StringStringEntryProto.create({ key: 'location', value: '../../../../etc/passwd' })];
    });
    await expectRefused(form(m, g), 400, 'invalid_value', 'model', /external data/);
  });

  it('a graph whose inputs and outputs break the contract', async () => {
    const renamed = edited((graph) => {
      graph.input[0].name = 'hidden';
    });
    await expectRefused(form(renamed.m, renamed.g), 400, 'invalid_value', 'model', /missing input 'hidden_states'.*unexpected input 'hidden'/);
    // The same graph described as one block deeper than it is.
    await expectRefused(
      form({ ...manifest, architecture: { ...manifest.architecture, layers: manifest.architecture.layers + 1 } }),
      400,
      'invalid_value',
      'model',
      /missing input 'carry_on\.past\.2\.key'/,
    );
    const retyped = edited((graph) => {
      const delta = graph.output[0] as onnxProto.onnx.ValueInfoProto;
      delta.type = onnx.TypeProto.create({ tensorType: { elemType: onnx.TensorProto.DataType.DOUBLE, shape: delta.type?.tensorType?.shape } });
    });
    await expectRefused(form(retyped.m, retyped.g), 400, 'invalid_value', 'model', /output 'delta' must be float32/);
  });

  it('bytes that are not an ONNX model', async () => {
    const garbage = Buffer.from(Array.from({ length: 50_000 }, (_, i) => (i * 7919 + 13) % 251));
    await expectRefused(form({ ...manifest, sha256: sha256Hex(garbage) }, garbage), 400, 'invalid_value', 'model');
  });

  it('a graph that loads but fails its one-token test run (an embedding smaller than the vocabulary)', async () => {
    const pkg = await makeCarryOn(baseDir(), path.join(work, 'small-vocab'), { id: 'small-vocab', readsTokenIds: true, vocabSize: 100 });
    const g = fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.graph));
    await expectRefused(form(pkg.manifest, g), 400, 'invalid_value', 'model', /test run/);
  });

  it('an invalid manifest, missing parts, extra parts, or a body that is not multipart', async () => {
    await expectRefused([{ name: 'manifest', data: '{not json' }, form(manifest)[1]], 400, 'invalid_json', 'manifest');
    await expectRefused(form({ ...manifest, id: 'Bad Id' }), 400, 'invalid_value', 'manifest.id');
    await expectRefused([form(manifest)[1]], 400, 'missing_required_parameter', 'manifest');
    await expectRefused([form(manifest)[0]], 400, 'missing_required_parameter', 'model');
    await expectRefused([...form(manifest), { name: 'extra', data: 'x' }], 400, 'invalid_value', 'extra');
    await expectRefused([...form(manifest), form(manifest)[1]], 400, 'invalid_value', 'model');
    for (const route of ['/admin/tenants/refuse/carry-ons', '/admin/carry-ons']) {
      const json = await api(gw, 'POST', route, ADMIN_KEY, { manifest, tenant: 'refuse' });
      expect(json.status).toBe(415);
      expect(json.json.error?.code).toBe('unsupported_media_type');
    }
    expect((await uploadCarryOn(gw, 'nobody', ADMIN_KEY, form(manifest))).status).toBe(404);
  });

  it('an id with path characters, in the manifest or in the URL', async () => {
    for (const id of ['../x', 'a/b', '..', 'a\\b']) await expectRefused(form({ ...manifest, id }), 400, 'invalid_value', 'manifest.id');
    const before = storeSnapshot();
    for (const id of ['..%2Fx', 'a%2Fb', '..%2F..%2Fgateway.sqlite']) {
      for (const method of ['GET', 'DELETE'] as const) {
        const r = await api(gw, method, `/admin/carry-ons/${id}?tenant=refuse`, ADMIN_KEY);
        expect(r.status, `${method} ${id}: ${r.text}`).toBe(400);
        expect(r.json.error).toMatchObject({ code: 'invalid_value', param: 'id' });
        expect((await api(gw, method, `/admin/tenants/refuse/carry-ons/${id}`, ADMIN_KEY)).status).toBe(404);
      }
    }
    expect(storeSnapshot()).toEqual(before);
  });

  it('401 for an unknown or revoked key, 403 for an inference key, before the body is read', async () => {
    const revoked = await newKey({ tenant: 'refuse', scope: 'admin' });
    const id = (await api<List<{ id: string; prefix: string }>>(gw, 'GET', '/admin/keys?tenant=refuse', ADMIN_KEY)).json.data.find((k) => revoked.startsWith(k.prefix))?.id;
    expect((await api(gw, 'DELETE', `/admin/keys/${id}`, ADMIN_KEY)).status).toBe(200);
    const user = await newKey({ tenant: 'refuse' });
    const before = storeSnapshot();
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
    expect(storeSnapshot()).toEqual(before);
  });

  it('413 beyond CARRYON_MAX_CARRYON_BYTES: announced by Content-Length, or found while streaming', async () => {
    const before = storeSnapshot();
    const big = Buffer.alloc(MAX_BYTES + 512 * 1024, 7);
    const m = { ...manifest, sha256: sha256Hex(big) };
    for (const route of ['/admin/tenants/refuse/carry-ons', '/admin/carry-ons']) {
      for (const chunked of [false, true]) {
        const r = await uploadCarryOnTo(gw, route, ADMIN_KEY, [{ name: 'tenant', data: 'refuse' }, ...form(m, big)], { chunked });
        expect(r.status, `${route} chunked=${chunked}: ${r.text}`).toBe(413);
        expect(r.json.error).toMatchObject({ code: 'request_too_large', param: 'model' });
      }
    }
    const huge = Buffer.alloc(3 * MAX_BYTES, 7);
    const r = await uploadCarryOn(gw, 'refuse', ADMIN_KEY, form({ ...manifest, sha256: sha256Hex(huge) }, huge));
    expect(r.status).toBe(413);
    expect(storeSnapshot()).toEqual(before);
    // The server is still fine.
    expect((await api(gw, 'GET', '/admin/tenants/refuse/carry-ons', ADMIN_KEY)).status).toBe(200);
  });

  it('a graph check that runs out of time fails it', async () => {
    const dir = path.join(work, 'timeout');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, CARRYON_FILES.graph), graph);
    const result = await checkCarryOnGraph({ graphPath: path.join(dir, CARRYON_FILES.graph), manifest, vocabSize: 512 }, 1);
    expect(result).toEqual({ ok: false, problem: expect.stringMatching(/took longer than 1 ms/) });
    expect(await checkCarryOnGraph({ graphPath: path.join(dir, CARRYON_FILES.graph), manifest, vocabSize: 512 }, 30_000)).toEqual({ ok: true });
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
