import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import type { OpenAIErrorBody } from '../../src/core/errors.js';
import { api } from '../helpers/admin.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

let gw: TestGateway | null = null;
afterEach(async () => {
  await gw?.close();
  gw = null;
});

async function complete(g: TestGateway, key: string, stream = false) {
  const res = await request(`${g.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stream }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

describe('per-key rate limits', () => {
  it('requests per minute: the 4th of a 3/min key gets 429 with Retry-After and x-ratelimit headers; other keys are unaffected', async () => {
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir(), CARRYON_RATE_LIMIT_RPM: '3' });
    const seen: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await complete(gw, USER_KEY, i === 2);
      expect(r.status).toBe(200);
      expect(r.headers['x-ratelimit-limit-requests']).toBe('3');
      seen.push(String(r.headers['x-ratelimit-remaining-requests']));
    }
    expect(seen).toEqual(['2', '1', '0']);
    const refused = await complete(gw, USER_KEY);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((JSON.parse(refused.text) as OpenAIErrorBody).error).toMatchObject({ code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    // A different key has its own budget.
    expect((await complete(gw, ADMIN_KEY)).status).toBe(200);
  });

  it('tokens per minute: usage is charged when a request ends; an exhausted budget refuses the next one', async () => {
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir(), CARRYON_RATE_LIMIT_TPM: '40' });
    const t = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'rl' });
    expect(t.status).toBe(201);
    const key = (await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'rl' })).json.key;
    const first = await complete(gw, key); // 5 prompt + 20 completion tokens
    expect(first.status).toBe(200);
    expect(first.headers['x-ratelimit-remaining-tokens']).toBe('40');
    const second = await complete(gw, key, true);
    expect(second.status).toBe(200);
    expect(second.headers['x-ratelimit-remaining-tokens']).toBe('15');
    const third = await complete(gw, key);
    expect(third.status).toBe(429);
    expect(third.headers['x-ratelimit-remaining-tokens']).toBe('0');
    expect((JSON.parse(third.text) as OpenAIErrorBody).error.message).toMatch(/tokens per minute/);
  });
});
