import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import { api, multipartBody } from '../helpers/admin.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * Requests an attacker with a tenant's key would send (issue 12): each is answered in OpenAI's
 * envelope with the right status, and none stalls the event loop or reads beyond its own tenant.
 */
let gw: TestGateway;
let tenantAdmin = '';

beforeAll(async () => {
  gw = await startTestGateway({
    CARRYON_DATA_DIR: freshDataDir('carryon-hostile-'),
    CARRYON_MAX_BODY_BYTES: String(4 << 20),
    CARRYON_RECEIVE_IDLE_TIMEOUT_MS: '1000',
  });
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'mallory' })).status).toBe(201);
  tenantAdmin = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'mallory', scope: 'admin' })).json.key;
});
afterAll(async () => gw?.close());

async function post(route: string, body: object, key = USER_KEY) {
  const res = await request(`${gw.url}${route}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.statusCode, json: (await res.body.json()) as { error: { code: string; param: string | null; message: string } } };
}

/** Sends raw bytes and returns the status line and the JSON body of the answer. */
function raw(bytes: string): Promise<{ status: number; body: { error?: { code: string; type: string } } }> {
  const u = new URL(gw.url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(u.port), u.hostname, () => socket.write(bytes));
    let out = '';
    socket.on('data', (d) => (out += d.toString()));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head, body] = out.split('\r\n\r\n');
      resolve({ status: Number(head.split(' ')[1]), body: JSON.parse(body || '{}') as { error?: { code: string; type: string } } });
    });
  });
}

describe('long prompts never block the event loop', () => {
  it('a prompt longer than the context can hold is refused from its byte length, before tokenizing', async () => {
    const huge = 'Once upon a time there was a dog. '.repeat(30_000); // ~1 MB
    // Three at once, and the health probe still answers meanwhile.
    const [a, b, c, live] = await Promise.all([
      post('/v1/completions', { model: 'stories260K', prompt: huge, max_tokens: 1 }),
      post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: huge }], max_tokens: 1 }),
      post('/v1/embeddings', { model: 'stories260K', input: huge }),
      request(`${gw.url}/health/live`).then((r) => r.statusCode),
    ]);
    expect(live).toBe(200);
    for (const [r, param] of [[a, 'prompt'], [b, 'messages'], [c, 'input']] as const) {
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ code: 'context_length_exceeded', param });
      expect(r.json.error.message).toMatch(/no text of more than \d+ bytes fits/);
    }
  });

  it('a long prompt within that bound is tokenized off the main thread, to the same ids', async () => {
    const m = gw.gateway.model();
    const limit = m.encoder.maxBytes;
    expect(limit).toBeGreaterThan(9000); // room for a text past the inline threshold (8 KiB)
    const text = 'The little girl saw a big red ball in the park. '.repeat(Math.floor((limit - 100) / 49));
    expect(Buffer.byteLength(text)).toBeGreaterThan(8192);
    const tokenizer = ModelTokenizer.load(path.join(gw.dataDir, 'models', 'stories260K'), m.tokenizer.vocabSize);
    const expected = tokenizer.encode(text, true);
    expect(await m.encoder.encode(text, true, 'prompt')).toEqual(expected);
    // Through the API: too many tokens for the context, counted exactly.
    const r = await post('/v1/completions', { model: 'stories260K', prompt: text, max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toContain(`resulted in ${expected.length} tokens`);
  });
});

describe('malformed requests get the error envelope', () => {
  it('a user message with content null is a 400 naming it', async () => {
    const r = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: null }], max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code: 'invalid_value', param: 'messages[0].content' });
    // An assistant turn may leave it out (it called tools).
    const ok = await post('/v1/chat/completions', {
      model: 'stories260K',
      messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: null }, { role: 'user', content: 'Go on' }],
      max_tokens: 1,
    });
    expect(ok.status).toBe(200);
  });

  it('431 for oversized headers, 414 for an over-long path segment, 400 for a request that is not HTTP', async () => {
    const big = await raw(`GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(big.status).toBe(431);
    expect(big.body.error).toMatchObject({ code: 'headers_too_large', type: 'invalid_request_error' });
    const long = await raw(`GET /v1/models/${'a'.repeat(300)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${USER_KEY}\r\nConnection: close\r\n\r\n`);
    expect(long.status).toBe(414);
    expect(long.body.error).toMatchObject({ code: 'uri_too_long' });
    const garbage = await raw('NOT HTTP AT ALL\r\n\r\n');
    expect(garbage.status).toBe(400);
    expect(garbage.body.error).toMatchObject({ code: 'malformed_request' });
  });

  it('a multipart upload without a boundary, or with a torn body, is a 400, not a 500', async () => {
    for (const [type, body] of [
      ['multipart/form-data', 'hello'],
      ['multipart/form-data; boundary=abc', 'hello'],
      ['multipart/form-data; boundary=abc', '--abc\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{"id":'],
    ]) {
      const res = await request(`${gw.url}/admin/tenants/mallory/carry-ons`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': type },
        body,
      });
      const json = (await res.body.json()) as { error: { code: string } };
      expect(res.statusCode, JSON.stringify(json)).toBe(400);
      expect(json.error.code).toBe('malformed_request');
    }
  });

  it('a training job whose alias is invalid is refused when created, not after training', async () => {
    for (const alias of ['latest', '7up', '../x']) {
      const r = await api(gw, 'POST', '/admin/training-jobs', ADMIN_KEY, { tenant: 'mallory', carry_on: 'style', alias });
      expect(r.status, r.text).toBe(400);
      expect(r.json.error).toMatchObject({ param: 'alias' });
    }
  });
});

describe('receiving is bounded by idleness, not by total time', () => {
  it('a body that stops arriving gets a 408 in the envelope and its connection closed', async () => {
    const r = await raw(
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${USER_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":`,
    );
    expect(r.status).toBe(408);
    expect(r.body.error).toMatchObject({ code: 'request_timeout' });
  });

  it('an upload that keeps trickling in for longer than the idle bound goes through', async () => {
    const pkg = await makeCarryOn(path.join(gw.dataDir, 'models', 'stories260K'), path.join(gw.dataDir, 'pkg-slow'), { id: 'slow' });
    const { contentType, body } = multipartBody([
      { name: 'manifest', data: JSON.stringify(pkg.manifest) },
      { name: 'weights', filename: 'weights.safetensors', data: fs.readFileSync(path.join(pkg.dir, 'weights.safetensors')) },
    ]);
    const pieces = 8;
    const started = performance.now();
    async function* slowly() {
      for (let i = 0; i < pieces; i++) {
        yield body.subarray(Math.floor((i * body.length) / pieces), Math.floor(((i + 1) * body.length) / pieces));
        await new Promise((r) => setTimeout(r, 400)); // a slow link: 3.2 s in all, never 1 s silent
      }
    }
    const res = await request(`${gw.url}/admin/tenants/mallory/carry-ons`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': contentType },
      body: Readable.from(slowly()),
    });
    const text = await res.body.text();
    expect(res.statusCode, text).toBe(201);
    expect(performance.now() - started).toBeGreaterThan(3000); // longer than the idle bound, in total
  });
});

describe('metrics are for operators', () => {
  it("a tenant's admin key cannot read them; a global admin key can", async () => {
    const scrape = (key: string) => request(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${key}` } });
    const tenant = await scrape(tenantAdmin);
    expect(tenant.statusCode).toBe(403);
    expect(((await tenant.body.json()) as { error: { code: string } }).error.code).toBe('permission_denied');
    const operator = await scrape(ADMIN_KEY);
    expect(operator.statusCode).toBe(200);
    expect(await operator.body.text()).toContain('carryon:num_requests_running');
  });
});
