import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONSOLE_CSP, CONSOLE_DIR } from '../../plugins/console.js';
import type { MetricsSummary } from '../../src/admin/metrics-summary.js';
import { api } from '../helpers/admin.js';
import { ADMIN_KEY, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * The console's serving, without a browser: the security headers on every response, only the
 * console's own files and the pinned libraries reachable (no path escapes the asset map), the
 * relative redirect that keeps a path prefix, and the JSON metrics route the overview reads.
 */
let gw: TestGateway;

/** A GET with the path sent byte for byte (fetch and undici would normalise `..` and `%2e`). */
function rawGet(p: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const { hostname, port } = new URL(gw.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: hostname, port, path: p, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.close();
});

describe('console serving', () => {
  it('redirects /console to console/ relatively, so a path prefix in front of the gateway is kept', async () => {
    const r = await rawGet('/console');
    expect(r.status).toBe(301);
    expect(r.headers.location).toBe('console/');
    expect(r.headers['content-security-policy']).toBe(CONSOLE_CSP);
  });

  it('serves the page with a strict CSP, and the page has no inline script or style', async () => {
    const r = await rawGet('/console/');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/html/);
    expect(r.headers['content-security-policy']).toBe(CONSOLE_CSP);
    expect(CONSOLE_CSP).toContain("script-src 'self'");
    expect(CONSOLE_CSP).not.toContain('unsafe-inline');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.body).toContain('<script type="module" src="app.js"></script>');
    // Every script has a src; no <style> block, no style= or on…= attributes.
    expect(r.body.match(/<script\b[^>]*>/g)?.every((tag) => / src="[^"]+"/.test(tag))).toBe(true);
    expect(r.body).not.toMatch(/<style\b| style=| on[a-z]+=/i);
    // Relative asset URLs only: under /prefix/console/ they resolve under the prefix too.
    expect(r.body).not.toMatch(/(?:src|href)="\//);
  });

  it('serves every console file and the pinned libraries, each with its type and the CSP', async () => {
    const own = fs.readdirSync(CONSOLE_DIR).filter((n) => fs.statSync(path.join(CONSOLE_DIR, n)).isFile());
    expect(own).toContain('app.js');
    for (const name of [...own, 'vendor/htm-preact.js', 'vendor/uplot.js', 'vendor/uplot.css']) {
      const r = await rawGet(`/console/${name}`);
      expect(r.status, name).toBe(200);
      expect(r.headers['content-security-policy'], name).toBe(CONSOLE_CSP);
      const type = name.endsWith('.js') ? /^text\/javascript/ : name.endsWith('.css') ? /^text\/css/ : /^text\/html/;
      expect(r.headers['content-type'], name).toMatch(type);
    }
    // The page's scripts import only relative paths: no CDN, no bare specifiers an import map would need.
    for (const name of own.filter((n) => n.endsWith('.js'))) {
      const text = fs.readFileSync(path.join(CONSOLE_DIR, name), 'utf8');
      for (const m of text.matchAll(/^import .* from '([^']+)';$/gm)) expect(m[1], `${name}: ${m[1]}`).toMatch(/^\.\//);
      expect(text, name).not.toMatch(/https?:\/\/(?!www\.w3\.org)/);
    }
  });

  it('reaches no file outside the asset map, however the path is spelled', async () => {
    const attempts = [
      '/console/../package.json',
      '/console/%2e%2e/package.json',
      '/console/..%2fpackage.json',
      '/console/%2e%2e%2f%2e%2e%2fpackage.json',
      '/console/vendor/../../package.json',
      '/console/vendor/%2e%2e/%2e%2e/package.json',
      '/console/./app.js',
      '/console/vendor/../app.js',
      '/console//etc/passwd',
      '/console/%2fetc%2fpasswd',
      '/console/..\\..\\package.json',
      '/console/vendor/htm/package.json',
      '/console/console.ts',
      '/console/../plugins/console.ts',
      '/console/index.html%00.js',
    ];
    for (const p of attempts) {
      const r = await rawGet(p);
      expect([400, 404], `${p} → ${r.status}`).toContain(r.status);
      expect(r.body, p).not.toContain('carry-on-gateway'); // package.json's name
      expect(r.body, p).not.toContain('root:'); // /etc/passwd
      expect(r.body, p).not.toContain('FastifyPluginAsync'); // console.ts
    }
    // The same name, spelled plainly, is served: the 404s above are the lookups, not a broken server.
    expect((await rawGet('/console/app.js')).status).toBe(200);
  });
});

describe('GET /admin/metrics', () => {
  it('answers a global admin with the JSON summary the overview plots', async () => {
    // Some traffic first, so the counters it reports have moved.
    const done = await api(gw, 'POST', '/v1/completions', USER_KEY, { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
    expect(done.status, done.text).toBe(200);
    const r = await api<MetricsSummary>(gw, 'GET', '/admin/metrics', ADMIN_KEY);
    expect(r.status, r.text).toBe(200);
    expect(r.json.object).toBe('metrics.summary');
    expect(r.json.tokens.generation).toBeGreaterThanOrEqual(5);
    expect(r.json.requests.finished).toBeGreaterThanOrEqual(1);
    expect(r.json.time_to_first_token_seconds.count).toBeGreaterThanOrEqual(1);
    expect(r.json.time_to_first_token_seconds.buckets.at(-1)).toEqual({ le: null, count: r.json.time_to_first_token_seconds.count });
    expect(r.json.decode_batch_rows.count).toBeGreaterThanOrEqual(1);
    expect(r.json.generation_tokens_by_carry_on.base).toBeGreaterThanOrEqual(5);
    expect(r.json.kv_cache_bytes).toBeGreaterThan(0);
  });

  it("refuses tenants' keys and anonymous callers", async () => {
    expect((await api(gw, 'GET', '/admin/metrics', USER_KEY)).status).toBe(403);
    expect((await api(gw, 'GET', '/admin/metrics', null)).status).toBe(401);
    const narrowed = await api(gw, 'GET', '/admin/metrics', ADMIN_KEY, undefined, { 'x-carryon-tenant': 'default' });
    expect(narrowed.status).toBe(403);
  });
});
