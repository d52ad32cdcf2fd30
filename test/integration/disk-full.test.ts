import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.js';

/**
 * A full disk is an operating state (issue 12): uploads answer 507, reads and deletes keep working
 * so space can be freed, and the gateway boots on a full disk with readiness naming the state.
 * The data folder lives on a small tmpfs of its own, which needs root to mount.
 */
const root = process.getuid?.() === 0;
let mount = '';
let dataDir = '';
let gw: TestGateway | null = null;
let key = '';
let parts: FormPart[] = [];

/** Writes filler files until the filesystem refuses another byte. */
function fill(name: string): void {
  const fd = fs.openSync(path.join(mount, name), 'w');
  const chunk = Buffer.alloc(64 * 1024, 1);
  try {
    for (;;) fs.writeSync(fd, chunk);
  } catch (err) {
    expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
  } finally {
    fs.closeSync(fd);
  }
}

const ready = async (g: TestGateway) => {
  const r = await request(`${g.url}/health/ready`);
  return { status: r.statusCode, body: (await r.body.json()) as { status: string; disk_full?: string } };
};

beforeAll(async () => {
  if (!root) return;
  mount = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-disk-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=40m', 'tmpfs', mount]);
  dataDir = path.join(mount, 'data');
  gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, CARRYON_DISK_RESERVE_BYTES: String(4 << 20) });
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'd' })).status).toBe(201);
  key = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'd' })).json.key;
  const pkg = await makeCarryOn(path.join(dataDir, 'models', 'stories260K'), path.join(os.tmpdir(), `disk-pkg-${process.pid}`), { id: 'first', perturb: 0.5 });
  parts = [
    { name: 'manifest', data: JSON.stringify(pkg.manifest) },
    { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.weights)) },
  ];
  expect((await uploadCarryOn(gw, 'd', ADMIN_KEY, parts)).status).toBe(201);
});

afterAll(async () => {
  await gw?.close();
  if (mount) {
    execFileSync('umount', [mount]);
    fs.rmSync(mount, { recursive: true, force: true });
  }
});

describe.skipIf(!root)('a full disk', () => {
  it('refuses uploads with 507, keeps reads, inference and deletes working, and readiness says why', async () => {
    const g = gw!;
    expect((await ready(g)).body.disk_full).toBeUndefined();
    fill('filler-1');
    const refused = await uploadCarryOn(g, 'd', ADMIN_KEY, parts);
    expect(refused.status, refused.text).toBe(507);
    expect(refused.json.error).toMatchObject({ code: 'insufficient_storage', type: 'server_error' });
    const state = await ready(g);
    expect(state.status).toBe(200); // inference needs no disk: still in service
    expect(state.body.disk_full).toMatch(/is full/);
    // Still refused while full, even though the reserve gave some room back.
    expect((await uploadCarryOn(g, 'd', ADMIN_KEY, parts)).status).toBe(507);

    const sdk = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: key, maxRetries: 0 });
    const out = await sdk.completions.create({ model: 'first', prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
    expect(out.choices[0].text.length).toBeGreaterThan(0);
    expect((await api(g, 'GET', '/admin/tenants/d/carry-ons', ADMIN_KEY)).status).toBe(200);
    const del = await api(g, 'DELETE', '/admin/tenants/d/carry-ons/first', ADMIN_KEY);
    expect(del.status, del.text).toBe(200);
    expect(await gw!.store.carryOns.resolve('d', 'first')).toBeNull();
  });

  it('boots on a disk that filled while it was down: the reserve makes room; ready, serving, naming the state', async () => {
    await gw!.close();
    // Space comes back; a start makes the reserve again; then the disk fills while the gateway is down.
    fs.rmSync(path.join(mount, 'filler-1'));
    gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, CARRYON_DISK_RESERVE_BYTES: String(4 << 20) });
    expect((await ready(gw)).body.disk_full).toBeUndefined();
    expect(fs.statSync(path.join(dataDir, '.disk-reserve')).size).toBe(4 << 20);
    await gw.close();
    gw = null;
    fill('filler-2');
    gw = await startTestGateway({ CARRYON_DATA_DIR: dataDir, CARRYON_DISK_RESERVE_BYTES: String(4 << 20) });
    const state = await ready(gw);
    expect(state.status).toBe(200);
    expect(state.body.disk_full).toMatch(/no room|is full/);
    const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
    expect((await sdk.completions.create({ model: 'stories260K', prompt: 'Once', max_tokens: 2 })).choices).toHaveLength(1);
    expect((await uploadCarryOn(gw, 'd', ADMIN_KEY, parts)).status).toBe(507);
  });
});
