import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * A step that takes longer than CARRYON_ENGINE_STEP_TIMEOUT_MS means a stuck engine. Here the bound
 * is 1 ms, so a prompt of a few hundred tokens read in one step exceeds it for real.
 */
let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-watchdog-'), CARRYON_ENGINE_STEP_TIMEOUT_MS: '1', CARRYON_PREFILL_CHUNK: '512' });
});
afterAll(async () => gw?.close());

describe('engine watchdog', () => {
  it('fails the requests of a step past the bound and turns readiness 503 with the reason', async () => {
    expect((await request(`${gw.url}/health/ready`)).statusCode).toBe(200);
    const res = await request(`${gw.url}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${USER_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time there was a little girl named Lily. '.repeat(35), max_tokens: 20 }),
    });
    const body = (await res.body.json()) as { error: { code: string; message: string } };
    expect(res.statusCode).toBe(500);
    expect(body.error.message).toMatch(/engine stopped stepping/);
    const ready = await request(`${gw.url}/health/ready`);
    expect(ready.statusCode).toBe(503);
    expect(await ready.body.json()).toMatchObject({ status: 'failed', error: expect.stringMatching(/CARRYON_ENGINE_STEP_TIMEOUT_MS=1/) as unknown });
    // New work is refused with the reason, not queued behind a stuck engine.
    const next = await request(`${gw.url}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${USER_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 1 }),
    });
    expect(next.statusCode).toBe(503);
    await next.body.dump();
  });
});
