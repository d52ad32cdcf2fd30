import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CarryOnVersionObject, CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES, sha256Hex, verifyCarryOnFiles, type CarryOnManifest } from '../../src/carryon/manifest.js';
import { importModel } from '../../src/model/import.js';
import { readManifest } from '../../src/model/package-files.js';
import { api, uploadCarryOnTo } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { REPO_ROOT, STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { STORE_SETUPS, testDatabase, type TestDatabase } from '../helpers/databases.js';

// Every test here runs on each metadata backend, and on PostgreSQL with a bucket (test/helpers/databases.ts), each on a database of its own.
describe.each(STORE_SETUPS)('on %s', (backend) => {
  let database: TestDatabase;

  /**
   * Carry-on storage across restarts: a package made by `carryon carry-on init` from the llama2.c
   * checkpoint itself, uploaded through `POST /admin/carry-ons`, served, then the gateway stopped,
   * the debris of a crash mid-upload left in its data folder, and a new gateway started on it.
   */
  let gw: TestGateway;
  let dataDir: string;
  let work: string;
  let manifest: CarryOnManifest;
  let userKey = '';
  const PROMPT = 'Once upon a time';

  const cli = (args: string[]) => promisify(execFile)(process.execPath, ['bin/carryon.js', ...args], { cwd: REPO_ROOT });
  const blobsDir = () => path.join(dataDir, 'carry-ons', 'blobs');
  const stagingDir = () => path.join(dataDir, 'carry-ons', '.staging');
  const listDir = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []);

  async function greedy(g: TestGateway, model: string): Promise<string> {
    const client = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: userKey, maxRetries: 0 });
    const r = await client.completions.create({ model, prompt: PROMPT, max_tokens: 12, temperature: 0 });
    return r.choices[0].text;
  }

  beforeAll(async () => {
    database = await testDatabase(backend);
    dataDir = freshDataDir('carryon-store-');
    work = freshDataDir('carryon-store-work-');
    gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, ...database.env });
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' })).status).toBe(201);
    userKey = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme' })).json.key;
  });
  afterAll(async () => {
    await gw?.close();
    await database?.drop();
    for (const d of [dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  describe('carryon carry-on init --base <checkpoint file>', () => {
    it('imports the file as the gateway does, so base_fingerprint is the served base’s', async () => {
      const out = path.join(work, 'pkg');
      const cache = path.join(work, 'cache');
      const { stdout } = await cli(['carry-on', 'init', '--base', STORIES_BIN, '--out', out, '--id', 'story', '--data-dir', cache, '--tenant', 'acme', '--seed', '3']);
      expect(stdout).toMatch(/carry-on story v1 .* params, \d+ bytes/);
      expect(listDir(out)).toEqual([CARRYON_FILES.manifest, CARRYON_FILES.graph, CARRYON_FILES.weights].sort());
      expect(listDir(out)).toEqual(['manifest.json', 'model.onnx', 'weights.safetensors']);
      manifest = await verifyCarryOnFiles(out);
      const served = readManifest(path.join(dataDir, 'models', 'stories260K')).fingerprint;
      expect(manifest).toMatchObject({ id: 'story', base_fingerprint: served, tenant: 'acme' });
      // Imported where the gateway would with DATA_DIR=cache: models/<file name>.
      expect(readManifest(path.join(cache, 'models', 'stories260K')).fingerprint).toBe(served);

      // A package folder works as --base too, and gives the same fingerprint.
      const fromDir = path.join(work, 'pkg-from-dir');
      await cli(['carry-on', 'init', '--base', path.join(cache, 'models', 'stories260K'), '--out', fromDir, '--id', 'story']);
      expect((await verifyCarryOnFiles(fromDir)).base_fingerprint).toBe(served);
    });

    it('the fingerprint depends on the weights only, not on the package name or import time', async () => {
      const a = await importModel(STORIES_BIN, path.join(work, 'name-a'), { tokenizerPath: STORIES_TOK, name: 'one' });
      await new Promise((r) => setTimeout(r, 5));
      const b = await importModel(STORIES_BIN, path.join(work, 'name-b'), { tokenizerPath: STORIES_TOK, name: 'another' });
      expect(a.name).not.toBe(b.name);
      expect(a.created_at).not.toBe(b.created_at);
      expect(a.fingerprint).toBe(b.fingerprint);
      expect(a.fingerprint).toBe(manifest.base_fingerprint);
    });
  });

  describe('carry-ons survive a restart; a crash mid-upload leaves nothing registered', () => {
    let before = '';

    it('uploads the package as `curl -F manifest=@manifest.json -F weights=@weights.safetensors` (tenant from the manifest) and serves it', async () => {
      const dir = path.join(work, 'pkg');
      const r = await uploadCarryOnTo<CarryOnVersionObject>(gw, '/admin/carry-ons', ADMIN_KEY, [
        { name: 'manifest', filename: 'manifest.json', data: fs.readFileSync(path.join(dir, 'manifest.json')) },
        { name: 'weights', filename: 'weights.safetensors', data: fs.readFileSync(path.join(dir, 'weights.safetensors')) },
      ]);
      expect(r.status, r.text).toBe(201);
      expect(r.json).toMatchObject({ tenant: 'acme', carry_on: 'story', version: 1 });
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      // Zero-initialised: exactly the base until trained.
      before = await greedy(gw, 'story');
      expect(before).toBe(await greedy(gw, 'stories260K'));
    });

    it('restarts on the same data folder: tenants, keys and carry-ons are kept; crash debris is swept', async () => {
      await gw.close();
      // What a crash can leave: an upload streaming into staging (this host, a process now gone, or
      // an earlier process that had this pid), a blob renamed into place whose row never committed.
      const host = os.hostname().replace(/[^A-Za-z0-9.-]/g, '-');
      const deadPid = 2 ** 22 + 12345; // above Linux's pid_max: never a live process
      const debris = [`${host}_${deadPid}_0badc0de_000000000001`, `${host}_${process.pid}_0badc0de_000000000002`];
      // A live process's upload (pid 1 always exists) is left alone.
      const live = `${host}_1_0badc0de_000000000003`;
      for (const name of [...debris, live]) {
        fs.mkdirSync(path.join(stagingDir(), name), { recursive: true });
        fs.writeFileSync(path.join(stagingDir(), name, CARRYON_FILES.graph), 'half a graph');
      }
      const orphan = Buffer.from('a graph whose row never committed');
      fs.writeFileSync(path.join(blobsDir(), `${sha256Hex(orphan)}.onnx`), orphan);

      gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, ...database.env });
      expect(listDir(stagingDir())).toEqual([live]);
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      expect((await api(gw, 'GET', '/admin/tenants', ADMIN_KEY)).json).toMatchObject({ data: expect.arrayContaining([expect.objectContaining({ id: 'acme' })]) as unknown });
      expect((await api(gw, 'GET', '/admin/carry-ons/story?tenant=acme', ADMIN_KEY)).json).toMatchObject({ id: 'story', tenant: 'acme', latest_version: 1 });
      // The same key, through the SDK, gets the same carry-on.
      expect(await greedy(gw, 'story')).toBe(before);
      expect(await greedy(gw, 'story@1')).toBe(before);
    });

    it('still serves a version stored by a gateway before content addressing (a version folder with carry-on.onnx)', async () => {
      const folder = path.join(dataDir, 'carry-ons', 'acme', 'legacy', '1');
      fs.mkdirSync(folder, { recursive: true });
      fs.copyFileSync(path.join(work, 'pkg', CARRYON_FILES.graph), path.join(folder, 'carry-on.onnx'));
      const stored = { ...manifest, id: 'legacy', version: 1 };
      delete stored.tenant;
      const now = new Date().toISOString();
      await gw.store.db.run('INSERT INTO carry_ons (tenant_id, id, created_at) VALUES (?, ?, ?)', ['acme', 'legacy', now]);
      await gw.store.db.run(
        'INSERT INTO carry_on_versions (tenant_id, carry_on_id, version, manifest, dir, sha256, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        ['acme', 'legacy', 1, JSON.stringify(stored), path.join('carry-ons', 'acme', 'legacy', '1'), manifest.sha256, fs.statSync(path.join(folder, 'carry-on.onnx')).size, now],
      );
      expect((await gw.store.carryOns.resolve('acme', 'legacy'))?.graphPath).toBe(path.join(folder, 'carry-on.onnx'));
      expect(await greedy(gw, 'legacy')).toBe(before);

      expect((await api(gw, 'DELETE', '/admin/carry-ons/legacy?tenant=acme', ADMIN_KEY)).status).toBe(200);
      expect(fs.existsSync(path.join(dataDir, 'carry-ons', 'acme', 'legacy'))).toBe(false);
      // The blob with the same bytes belongs to `story`, which is still live.
      expect(listDir(blobsDir())).toEqual([`${manifest.sha256}.onnx`]);
      expect((await api(gw, 'DELETE', '/admin/carry-ons/story', userKey)).status).toBe(403);
      expect((await api(gw, 'DELETE', '/admin/carry-ons/story?tenant=acme', ADMIN_KEY)).status).toBe(200);
      expect(listDir(blobsDir())).toEqual([]);
    });
  });
});
