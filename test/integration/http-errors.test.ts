import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

let gw: TestGateway;
const auth = { authorization: `Bearer ${USER_KEY}`, 'content-type': 'application/json' };

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_MAX_BODY_BYTES: '65536' });
});
afterAll(async () => gw?.close());

async function post(path: string, body: string | object, headers: Record<string, string> = auth) {
  const res = await request(`${gw.url}${path}`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.statusCode, headers: res.headers, json: (await res.body.json()) as { error: Record<string, unknown> } & Record<string, unknown> };
}

function expectEnvelope(json: { error: Record<string, unknown> }, code: string, param: string | null = null) {
  expect(Object.keys(json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(json.error.code).toBe(code);
  expect(json.error.param).toBe(param);
  expect(typeof json.error.message).toBe('string');
}

const chat = (extra: object = {}) => ({ model: 'stories260K', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, ...extra });

describe('errors in OpenAI envelope', () => {
  it('401 invalid_api_key without a key, with a bad key, and for a malformed header', async () => {
    for (const headers of [{ 'content-type': 'application/json' }, { ...auth, authorization: 'Bearer sk-wrong' }, { ...auth, authorization: 'Basic abc' }]) {
      const r = await post('/v1/chat/completions', chat(), headers);
      expect(r.status).toBe(401);
      expectEnvelope(r.json, 'invalid_api_key');
    }
    const models = await request(`${gw.url}/v1/models`);
    expect(models.statusCode).toBe(401);
    await models.body.dump();
  });

  it('the admin key also works on /v1', async () => {
    const r = await post('/v1/chat/completions', chat(), { ...auth, authorization: `Bearer ${ADMIN_KEY}` });
    expect(r.status).toBe(200);
  });

  it('400 invalid_json for malformed JSON', async () => {
    const r = await post('/v1/chat/completions', '{"model": "stories260K", "messages": [');
    expect(r.status).toBe(400);
    expectEnvelope(r.json, 'invalid_json');
  });

  it('400 naming the param for wrong types, out-of-range values and missing fields', async () => {
    const cases: Array<[object, string, string]> = [
      [chat({ temperature: 'hot' }), 'temperature', 'invalid_type'],
      [chat({ temperature: 3 }), 'temperature', 'invalid_value'],
      [chat({ max_tokens: 0 }), 'max_tokens', 'invalid_value'],
      [chat({ messages: [{ role: 'wizard', content: 'x' }] }), 'messages[0].role', 'invalid_value'],
      [chat({ stop: ['a', 'b', 'c', 'd', 'e'] }), 'stop', 'invalid_value'],
      [{ messages: [{ role: 'user', content: 'x' }] }, 'model', 'missing_required_parameter'],
      [chat({ n: 1000 }), 'n', 'invalid_value'],
      [chat({ tools: [{ type: 'function', function: { name: 'f' } }] }), 'tools', 'unsupported_parameter'],
    ];
    for (const [body, param, code] of cases) {
      const r = await post('/v1/chat/completions', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expectEnvelope(r.json, code, param);
    }
  });

  it('404 model_not_found for an unknown model', async () => {
    const r = await post('/v1/chat/completions', chat({ model: 'gpt-4o' }));
    expect(r.status).toBe(404);
    expectEnvelope(r.json, 'model_not_found', 'model');
  });

  it('400 context_length_exceeded for an over-long prompt or max_tokens', async () => {
    const long = 'the cat sat on the mat and '.repeat(120);
    const r = await post('/v1/completions', { model: 'stories260K', prompt: long, max_tokens: 1 });
    expect(r.status).toBe(400);
    expectEnvelope(r.json, 'context_length_exceeded', 'prompt');
    const r2 = await post('/v1/chat/completions', chat({ max_tokens: 100000 }));
    expect(r2.status).toBe(400);
    expectEnvelope(r2.json, 'context_length_exceeded', 'max_tokens');
  });

  it('413 for a body over the limit', async () => {
    const r = await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(100_000) }] }));
    expect(r.status).toBe(413);
    expectEnvelope(r.json, 'request_too_large');
  });

  it('404 in the envelope for unknown routes, 415 for non-JSON bodies', async () => {
    const r = await post('/v1/nope', {});
    expect(r.status).toBe(404);
    expectEnvelope(r.json, 'not_found');
    const r2 = await post('/v1/chat/completions', 'hello', { ...auth, 'content-type': 'text/plain' });
    expect(r2.status).toBe(415);
    expectEnvelope(r2.json, 'unsupported_media_type');
  });

  it('keeps serving after all of the above', async () => {
    const r = await post('/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 3, temperature: 0 });
    expect(r.status).toBe(200);
    expect(r.headers['x-request-id']).toBeTruthy();
  });
});

describe('SSE framing and health', () => {
  it('frames every event as "data: <json>\\n\\n" and ends with data: [DONE]', async () => {
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify(chat({ stream: true, max_tokens: 5 })),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const raw = await res.body.text();
    expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
    const events = raw.split('\n\n').filter(Boolean);
    for (const e of events) expect(e.startsWith('data: ')).toBe(true);
    const payloads = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as { id: string; choices: { finish_reason: string | null }[] });
    expect(new Set(payloads.map((p) => p.id)).size).toBe(1);
    expect(payloads.at(-1)?.choices[0].finish_reason).toBe('length');
  });

  it('health endpoints need no key', async () => {
    for (const p of ['/health/live', '/health/ready']) {
      const res = await request(`${gw.url}${p}`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
  });
});
