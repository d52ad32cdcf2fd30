import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Browser, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject, TrainingJobObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { api } from '../helpers/admin.js';
import { ARTIFACTS, browserAvailable, launchBrowser, PageProblems, screenshot } from '../helpers/browser.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { REPO_ROOT } from '../helpers/paths.js';

/**
 * The admin console in a real browser (Debian's headless chromium) against the real gateway: sign
 * in with the admin key, the overview's plots, a tenant and a key, a carry-on upload (a broken one
 * first, its error next to the field it names), aliases, the playground (base and carry-on side by
 * side, different at α = 1, identical at α = 0), harvest, and a tenant's own admin key that sees
 * its tenant only. The page must log no error and no request may fail except those a step expects.
 */
const RUN = browserAvailable('console');
// The training flow also needs the trainer (python3 with torch), as test/e2e/training-jobs.test.ts does.
const which = spawnSync(path.join(REPO_ROOT, 'trainer', 'python'), ['--which'], { encoding: 'utf8' });
const HAS_TORCH = which.status === 0;
if (RUN && !HAS_TORCH) {
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`console training flow: ${which.stderr.trim()}`);
  console.warn(`console training flow SKIPPED: ${which.stderr.trim() || 'no python3 with torch'}`);
}

let gw: TestGateway;
let work: string;
let browser: Browser;
let page: Page;
let problems: PageProblems;
/** The error responses the flows provoke on purpose (the broken upload, the other tenant's keys). */
const expectedErrors: Array<{ method: string; path: string; status: number }> = [];

const baseDir = () => path.join(gw.dataDir, 'models', 'stories260K');
const text = (sel: string) => page.$eval(sel, (e) => e.textContent ?? '');

async function nav(id: string): Promise<void> {
  await page.click(`#nav-${id}`);
  await page.waitForSelector(`#nav-${id}.active`);
}

/** Fills an input by its selector as a user would (select all, type). */
async function fill(sel: string, value: string): Promise<void> {
  await page.click(sel, { count: 3 });
  await page.keyboard.press('Backspace');
  await page.type(sel, value);
}

async function signIn(key: string): Promise<void> {
  await page.goto(`${gw.url}/console`, { waitUntil: 'networkidle0' });
  await page.waitForSelector('#key-input');
  await page.type('#key-input', key);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#who');
}

async function setAlpha(alpha: number): Promise<void> {
  await page.$eval(
    '#alpha',
    (el, a) => {
      const input = el as HTMLInputElement;
      input.value = String(a);
      input.dispatchEvent(new Event('input', { bubbles: true }));
    },
    alpha,
  );
  await page.waitForFunction((a) => document.querySelector('#alpha-value')?.textContent === a.toFixed(2), {}, alpha);
}

async function runPlayground(): Promise<{ base: string; carryOn: string }> {
  await page.click('#playground-run');
  await page.waitForSelector('#playground-status[data-status=done]', { timeout: 60_000 });
  return { base: await text('#out-base'), carryOn: await text('#out-carry-on') };
}

describe.skipIf(!RUN)('admin console in a browser', () => {
  beforeAll(async () => {
    // This run's screenshots only, none left from an earlier run's page names.
    fs.rmSync(ARTIFACTS, { recursive: true, force: true });
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-console-'), CARRYON_HARVEST: 'on', CARRYON_HARVEST_MAX_BYTES: String(1 << 30) });
    work = freshDataDir('carryon-console-packages-');
    // A carry-on that visibly changes the base, made as test/helpers/carry-on.ts makes them, and a
    // broken copy: its manifest names another base.
    const pkg = await makeCarryOn(baseDir(), path.join(work, 'style'), { id: 'style', perturb: 0.5 });
    const broken = path.join(work, 'broken');
    fs.mkdirSync(broken);
    const manifest = JSON.parse(fs.readFileSync(path.join(pkg.dir, CARRYON_FILES.manifest), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(broken, 'manifest.json'), JSON.stringify({ ...manifest, base_fingerprint: '0'.repeat(64) }));
    browser = await launchBrowser();
    const context = browser.defaultBrowserContext();
    await context.overridePermissions(gw.url, ['clipboard-read', 'clipboard-write', 'clipboard-sanitized-write']);
    page = await browser.newPage();
    problems = new PageProblems(page);
  });
  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('signs in with the admin key, keeps it in sessionStorage only, and plots the overview', async () => {
    // Traffic first, so the plots have something to show.
    let generated = 0;
    const complete = async (prompt: string, maxTokens: number) => {
      const r = await api<{ usage: { completion_tokens: number } }>(gw, 'POST', '/v1/completions', ADMIN_KEY, { model: 'stories260K', prompt, max_tokens: maxTokens, temperature: 0 });
      expect(r.status, r.text).toBe(200);
      generated += r.json.usage.completion_tokens;
    };
    for (let i = 0; i < 3; i++) await complete('Once upon a time', 8);
    await signIn(ADMIN_KEY);
    expect(page.url()).toBe(`${gw.url}/console/`);
    expect(await text('#who')).toBe('global admin');
    expect(await page.evaluate(() => sessionStorage.getItem('carryon-console-key'))).toBe(ADMIN_KEY);
    expect(await page.evaluate(() => localStorage.length)).toBe(0);
    expect(page.url()).not.toContain(ADMIN_KEY);
    // Traffic while the page samples (a sample every 2 s; two samples make a point), so the plots move.
    for (let i = 0; i < 8; i++) {
      await complete('The little dog', 16);
      await new Promise((res) => setTimeout(res, 500));
    }
    await page.waitForFunction(() => Number(document.querySelector('[data-plot=tokens]')?.getAttribute('data-points')) >= 3, { timeout: 20_000 });
    await page.waitForFunction((n) => Number(document.querySelector('#stat-tokens')?.textContent) === n, { timeout: 10_000 }, generated);
    for (const id of ['tokens', 'requests', 'ttft', 'batch', 'memory', 'carry-on-cache', 'harvest']) {
      expect(await page.$(`[data-plot="${id}"] canvas`), id).not.toBeNull();
    }
    expect(await text('#hot-carry-ons')).toContain('base');
    await screenshot(page, '1-overview');
  });

  it('creates a tenant and a key, shown once with a copy button, edits its policy and revokes another', async () => {
    await nav('tenants');
    await fill('#create-tenant input[name=id]', 'acme');
    await fill('#create-tenant input[name=name]', 'Acme Corp');
    await page.click('#create-tenant button[type=submit]');
    await page.waitForSelector('tr[data-tenant=acme].selected');
    await fill('#create-key input[name=name]', 'web');
    await fill('#create-key input[name=sample_rate]', '1');
    await page.click('#create-key button[type=submit]');
    await page.waitForSelector('#new-key');
    const key = await page.$eval('#new-key', (e) => (e as HTMLInputElement).value);
    expect(key).toMatch(/^sk-/);
    expect(await text('#new-key-box .warning')).toContain('shown only once');
    await page.click('#copy-key');
    await page.waitForFunction(() => document.querySelector('#copy-key')?.textContent === 'Copied');
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(key);
    await screenshot(page, '2-tenants-new-key');
    // The key works, for acme, and the list shows it without its value.
    expect((await api(gw, 'GET', '/v1/models', key)).status).toBe(200);
    await page.click('#new-key-done');
    expect(await page.$('#new-key')).toBeNull();
    const keys = await text('#keys-table');
    expect(keys).toContain('web');
    expect(keys).not.toContain(key);
    // Edit its harvest policy.
    const id = await page.$eval('#keys-table tbody tr[data-key]', (e) => e.getAttribute('data-key') ?? '');
    await page.click(`#edit-key-${id}`);
    await fill(`#edit-${id} input[name=sample_rate]`, '0.5');
    await page.select(`#edit-${id} select[name=keep]`, 'completion');
    await page.click(`#edit-${id} button[type=submit]`);
    await page.waitForFunction((k) => document.querySelector(`tr[data-key="${k}"] .harvest`)?.textContent === '50%, completion', {}, id);
    // Put it back to every request (the harvest page below needs shards), then revoke a second key.
    await page.click(`#edit-key-${id}`);
    await fill(`#edit-${id} input[name=sample_rate]`, '1');
    await page.click(`#edit-${id} button[type=submit]`);
    await page.waitForFunction((k) => document.querySelector(`tr[data-key="${k}"] .harvest`)?.textContent?.startsWith('100%'), {}, id);
    await fill('#create-key input[name=name]', 'temp');
    await page.click('#create-key button[type=submit]');
    await page.waitForSelector('#new-key');
    const temp = await page.$eval('#new-key', (e) => (e as HTMLInputElement).value);
    await page.click('#new-key-done');
    const tempId = await page.$$eval('#keys-table tbody tr[data-key]', (rows) => rows.find((r) => r.textContent?.includes('temp'))?.getAttribute('data-key') ?? '');
    expect((await api(gw, 'GET', '/v1/models', temp)).status).toBe(200);
    await page.click(`#revoke-${tempId}`);
    await page.click(`#revoke-${tempId}-confirm`);
    await page.waitForFunction((k) => document.querySelector(`tr[data-key="${k}"] .state`)?.textContent?.startsWith('revoked'), {}, tempId);
    expect((await api(gw, 'GET', '/v1/models', temp)).status).toBe(401);
    await screenshot(page, '3-tenants-keys');
  });

  it('shows a broken upload’s error next to the field it names, then uploads the carry-on and moves an alias', async () => {
    await nav('carry-ons');
    await page.waitForSelector('#upload-form');
    const manifestInput = await page.$('input#upload-manifest');
    const weightsInput = await page.$('input#upload-weights');
    await manifestInput!.uploadFile(path.join(work, 'broken', 'manifest.json'));
    await weightsInput!.uploadFile(path.join(work, 'style', CARRYON_FILES.weights));
    await page.waitForSelector('#upload-submit:not([disabled])');
    await page.click('#upload-submit');
    expectedErrors.push({ method: 'POST', path: '/admin/carry-ons', status: 400 });
    await page.waitForSelector('#error-manifest');
    expect(await page.$eval('#error-manifest', (e) => e.getAttribute('data-param'))).toBe('manifest.base_fingerprint');
    // Next to its field: inside the manifest field's block, and no error on the others.
    expect(await page.$eval('#error-manifest', (e) => e.parentElement?.querySelector('#upload-manifest') !== null)).toBe(true);
    expect(await page.$('#error-weights')).toBeNull();
    await screenshot(page, '4-carry-ons-upload-error');

    await manifestInput!.uploadFile(path.join(work, 'style', CARRYON_FILES.manifest));
    await page.click('#upload-submit');
    await page.waitForSelector('#upload-done');
    expect(await text('#upload-done')).toContain('style version 1');
    expect(await page.$('#error-manifest')).toBeNull();
    await page.waitForSelector('[data-carry-on=style]');
    await fill('#alias-form-style input[name=alias]', 'stable');
    await page.click('#alias-form-style button[type=submit]');
    await page.waitForSelector('[data-carry-on=style] [data-alias=stable]');
    expect(await text('[data-carry-on=style] [data-alias=stable]')).toContain('stable → v1');
    const stored = await api<{ aliases: Record<string, number> }>(gw, 'GET', '/admin/tenants/acme/carry-ons/style', ADMIN_KEY);
    expect(stored.json.aliases).toEqual({ stable: 1 });

    // Drag and drop: files dropped on the form are sorted into their fields by name; an ONNX graph
    // is refused on the spot (the gateway builds graphs itself), the package's two files upload.
    const drop = (files: Array<{ name: string; base64: string }>) =>
      page.$eval(
        '#upload-form',
        (form, list) => {
          const dt = new DataTransfer();
          for (const f of list) dt.items.add(new File([Uint8Array.from(atob(f.base64), (c) => c.charCodeAt(0))], f.name));
          form.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
          form.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        },
        files,
      );
    const file = (name: string) => ({ name, base64: fs.readFileSync(path.join(work, 'style', name)).toString('base64') });
    await drop([file(CARRYON_FILES.graph)]);
    await page.waitForSelector('#error-weights');
    expect(await text('#error-weights')).toContain('model.onnx');
    await drop([file(CARRYON_FILES.manifest), file(CARRYON_FILES.weights)]);
    await page.waitForFunction(() => document.querySelector('#error-weights') === null);
    await page.click('#upload-submit');
    await page.waitForFunction(() => document.querySelector('#upload-done')?.textContent?.includes('style version 2'));
    await page.waitForSelector('[data-carry-on=style] tr[data-version="2"]');
    await screenshot(page, '5-carry-ons');
  });

  it('plays the base and the carry-on side by side: different at α = 1, the same at α = 0', async () => {
    await page.waitForSelector('#playground-model');
    await page.select('#playground-model', 'style@1');
    await setAlpha(1);
    const one = await runPlayground();
    expect(one.base.length).toBeGreaterThan(10);
    expect(one.carryOn.length).toBeGreaterThan(10);
    expect(one.carryOn).not.toBe(one.base);
    await screenshot(page, '6-playground-alpha-1');
    await setAlpha(0);
    const zero = await runPlayground();
    expect(zero.carryOn).toBe(zero.base);
    expect(zero.base).toBe(one.base);
    await screenshot(page, '7-playground-alpha-0');
  });

  it('lists the tenant’s harvested shards', async () => {
    const created = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme', harvest: { sample_rate: 1 } });
    for (const prompt of ['Once upon a time', 'The little dog', 'A girl named Lily']) {
      const r = await api(gw, 'POST', '/v1/completions', created.json.key, { model: 'stories260K', prompt, max_tokens: 8, temperature: 0 });
      expect(r.status, r.text).toBe(200);
    }
    await gw.harvest.flush();
    await nav('harvest');
    await page.waitForFunction(() => Number(document.querySelector('#harvest-shards')?.textContent) >= 1, { timeout: 20_000 });
    expect(Number(await text('#harvest-rows'))).toBeGreaterThan(0);
    expect(await page.$$eval('#shards-table tbody tr', (rows) => rows.length)).toBeGreaterThanOrEqual(1);
    expect(await page.$('[data-plot=harvest-rows] canvas')).not.toBeNull();
    // The retention settings, as configured (GET /admin/harvest/stats).
    await page.waitForSelector('#retention-max-bytes');
    expect(await text('#retention-max-bytes')).toBe('1.0 GiB');
    expect(await text('#retention-max-age')).toBe('not limited');
    await screenshot(page, '8-harvest');
  });

  it.skipIf(!HAS_TORCH)('trains a carry-on from harvested traffic: the loss plot grows, the job succeeds and links its version; another is cancelled', { timeout: 600_000 }, async () => {
    const created = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme', harvest: { sample_rate: 1 } });
    for (const p of gsm8kTrainProblems(40)) {
      const r = await api(gw, 'POST', '/v1/completions', created.json.key, { model: 'stories260K', prompt: `${p.question}\n${p.answer}`, max_tokens: 2, temperature: 0 });
      expect(r.status, r.text).toBe(200);
    }
    await gw.harvest.flush();
    await nav('training');
    await fill('#training-form input[name=carry_on]', 'gsm');
    await fill('#training-form input[name=alias]', 'stable');
    await fill('#training-form input[name=steps]', '100');
    await fill('#training-form input[name=batch_size]', '4');
    await fill('#training-form input[name=seq_len]', '128');
    await fill('#training-form input[name=width]', '32');
    await page.select('#training-form select[name=loss_rows]', 'all');
    await page.click('#training-start');
    await page.waitForSelector('#job-detail');
    // The curve grows while the job runs: a point per poll of its progress that found a new step.
    const points = () => page.$eval('[data-plot=loss]', (e) => Number(e.getAttribute('data-points')));
    await page.waitForFunction(
      () => document.querySelector('#job-status')?.textContent === 'running' && Number(document.querySelector('[data-plot=loss]')?.getAttribute('data-points')) >= 1,
      { timeout: 240_000 },
    );
    const whileRunning = await points();
    await screenshot(page, '9-training-running');
    await page.waitForFunction(() => !['queued', 'running', 'registering'].includes(document.querySelector('#job-status')?.textContent ?? ''), { timeout: 400_000 });
    expect(await text('#job-status'), await text('#job-detail')).toBe('succeeded');
    // The whole run's curve: the trainer logs every 10 steps (GET /admin/training-jobs/{id}/loss).
    const gsmJob = await page.$eval('#job-detail', (e) => e.getAttribute('data-job') ?? '');
    await page.waitForFunction(() => Number(document.querySelector('[data-plot=loss]')?.getAttribute('data-points')) === 10, { timeout: 10_000 });
    expect(await points()).toBeGreaterThan(whileRunning);
    const loss = await api<{ data: Array<{ step: number; loss: number }> }>(gw, 'GET', `/admin/training-jobs/${gsmJob}/loss`, ADMIN_KEY);
    expect(loss.json.data.map((p) => p.step)).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    expect(await text('#job-eval')).toContain('best α');
    // The α sweep: one point per α the trainer evaluated, α = 0 (the base) among them.
    const job = await api<TrainingJobObject>(gw, 'GET', `/admin/training-jobs/${gsmJob}`, ADMIN_KEY);
    expect(job.json.eval!.sweep.length).toBeGreaterThanOrEqual(2);
    expect(job.json.eval!.sweep[0]).toEqual({ alpha: 0, loss: job.json.eval!.base_loss });
    expect(job.json.eval!.trained_alpha).toBe(1);
    expect(await page.$eval('[data-plot=alpha-sweep]', (e) => Number(e.getAttribute('data-points')))).toBe(job.json.eval!.sweep.length);
    expect(await text('#job-version')).toContain('gsm version 1');
    await page.waitForFunction(() => document.querySelector('#job-log')?.textContent?.includes('held-out loss'), { timeout: 10_000 });
    await screenshot(page, '10-training-done');

    // A long job, cancelled from the page once it runs: nothing is registered.
    await fill('#training-form input[name=carry_on]', 'long');
    await fill('#training-form input[name=alias]', '');
    await fill('#training-form input[name=steps]', '100000');
    await page.click('#training-start');
    await page.waitForFunction(() => document.querySelector('#job-detail h3 small')?.textContent?.startsWith('long') && document.querySelector('#job-status')?.textContent === 'running', { timeout: 60_000 });
    await page.click('#job-cancel');
    await page.waitForFunction(() => document.querySelector('#job-status')?.textContent === 'cancelled', { timeout: 30_000 });
    expect(await page.$('#job-version')).toBeNull();
    expect((await api(gw, 'GET', '/admin/tenants/acme/carry-ons/long', ADMIN_KEY)).status).toBe(404);

    // The finished job's link leads to the carry-ons, where the trained version is listed.
    await page.click(`#jobs-table tr[data-job="${gsmJob}"] a`);
    await page.waitForSelector('#job-version-link');
    await page.click('#job-version-link');
    await page.waitForSelector('[data-carry-on=gsm] [data-alias=stable]');
  });

  it('shows the training page and the server’s refusal of a job without shards', async () => {
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'empty' })).status).toBe(201);
    await page.reload({ waitUntil: 'networkidle0' });
    await page.waitForSelector('#tenant-select');
    await page.select('#tenant-select', 'empty');
    await nav('training');
    await fill('#training-form input[name=carry_on]', 'nothing');
    await page.click('#training-start');
    expectedErrors.push({ method: 'POST', path: '/admin/training-jobs', status: 400 });
    await page.waitForSelector('#training-error');
    expect(await text('#training-error')).toContain('(shards)');
    await screenshot(page, '11-training-refused');
  });

  it('signs a tenant’s admin key in to its own tenant only', async () => {
    expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'other' })).status).toBe(201);
    const created = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme', scope: 'admin', name: 'acme-admin' });
    expect(created.status).toBe(201);
    await page.click('#logout');
    await page.waitForSelector('#key-input');
    expect(await page.evaluate(() => sessionStorage.getItem('carryon-console-key'))).toBeNull();
    await page.type('#key-input', created.json.key);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#who');
    expect(await text('#who')).toBe('admin of acme');
    expect(await text('#tenant-fixed')).toBe('acme');
    // The overview needs a global key: the page says so instead of calling a route it may not.
    await nav('overview');
    await page.waitForSelector('#overview-needs-global');
    await nav('tenants');
    await page.waitForSelector('tr[data-tenant=acme]');
    expect(await page.$$eval('#tenants-table tr[data-tenant]', (rows) => rows.map((r) => r.getAttribute('data-tenant')))).toEqual(['acme']);
    expect(await page.$('#create-tenant')).toBeNull();
    await page.waitForSelector('#keys-table tr[data-key]');
    expect(await page.$$eval('#keys-table tbody tr[data-key]', (rows) => rows.every((r) => !r.textContent?.includes('other')))).toBe(true);
    // And the other tenant is out of reach through the same routes the page uses.
    const status = await page.evaluate(async (k) => (await fetch('../admin/keys?tenant=other', { headers: { authorization: `Bearer ${k}` } })).status, created.json.key);
    expectedErrors.push({ method: 'GET', path: '/admin/keys', status: 404 });
    expect(status).toBe(404);
    await nav('carry-ons');
    await page.waitForSelector('[data-carry-on=style]');
    await screenshot(page, '12-tenant-admin');
  });

  it('works behind a path prefix: a reverse proxy serving the gateway under /gw/', async () => {
    // A real proxy (bytes forwarded as they come, streams included) that strips the prefix, as nginx's
    // `location /gw/ { proxy_pass http://gateway/; }` does.
    const upstream = new URL(gw.url);
    const proxy = http.createServer((req, res) => {
      if (!req.url?.startsWith('/gw/')) {
        res.writeHead(404).end('outside the prefix');
        return;
      }
      const up = http.request({ host: upstream.hostname, port: upstream.port, path: req.url.slice(3), method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      req.pipe(up);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const prefixed = await browser.newPage();
    const seen = new PageProblems(prefixed);
    const paths: string[] = [];
    prefixed.on('request', (r) => paths.push(new URL(r.url()).pathname));
    try {
      const base = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/gw`;
      await prefixed.goto(`${base}/console`, { waitUntil: 'networkidle0' });
      expect(prefixed.url()).toBe(`${base}/console/`);
      await prefixed.type('#key-input', ADMIN_KEY);
      await prefixed.click('#login-form button[type=submit]');
      await prefixed.waitForSelector('#who');
      await prefixed.waitForFunction(() => Number(document.querySelector('[data-plot=tokens]')?.getAttribute('data-points')) >= 1, { timeout: 20_000 });
      await prefixed.click('#nav-carry-ons');
      await prefixed.waitForSelector('#tenant-select');
      await prefixed.select('#tenant-select', 'acme');
      await prefixed.waitForSelector('[data-carry-on=style]');
      // The playground's streams pass through the prefix too.
      await prefixed.select('#playground-model', 'style@1');
      await prefixed.click('#playground-run');
      await prefixed.waitForSelector('#playground-status[data-status=done]', { timeout: 60_000 });
      expect((await prefixed.$eval('#out-base', (e) => e.textContent ?? '')).length).toBeGreaterThan(10);
      await screenshot(prefixed, '13-behind-prefix');
      expect(paths.length).toBeGreaterThan(5);
      expect(paths.filter((p) => !p.startsWith('/gw/'))).toEqual([]);
      expect(paths).toContain('/gw/admin/metrics');
      expect(paths).toContain('/gw/v1/completions');
      expect(seen.pageErrors).toEqual([]);
      expect(seen.failedRequests).toEqual([]);
      expect(seen.errorResponses).toEqual([]);
      expect(seen.consoleErrors).toEqual([]);
    } finally {
      await prefixed.close();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('logged no console error, and no request failed except the ones the steps provoked', () => {
    expect(problems.pageErrors).toEqual([]);
    expect(problems.failedRequests).toEqual([]);
    expect(problems.errorResponses).toEqual(expectedErrors);
    expect(problems.unexpectedConsoleErrors()).toEqual([]);
  });
});
