import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * CARRYON_CONTEXT_LENGTH lowers the served context below the model's own (stories260K: 512): the
 * models list reports it, a prompt longer than it is refused before it reaches the engine, and a
 * generation stops at it. A value above the model's is a start-up error naming both numbers.
 */
let gw: TestGateway;
let client: OpenAI;

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_CONTEXT_LENGTH: '48' });
  client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
});
afterAll(async () => {
  await gw?.close();
});

describe('a context length set below the model', () => {
  it('is the max_model_len that /v1/models reports', async () => {
    const models = await client.models.list();
    const base = models.data.find((m) => !m.id.includes(':')) as unknown as { max_model_len?: number };
    expect(base.max_model_len).toBe(48);
  });

  it('refuses a prompt longer than it with context_length_exceeded', async () => {
    const long = 'Once upon a time there was a little girl named Lily. '.repeat(8);
    const err = await client.completions.create({ model: 'stories260K', prompt: long, max_tokens: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    const body = (err as InstanceType<typeof OpenAI.BadRequestError>).error as { code?: string; message?: string };
    expect(body.code).toBe('context_length_exceeded');
    expect(body.message).toContain('48');
  });

  it('refuses max_tokens that would run past it, as OpenAI does', async () => {
    const err = await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as Error).message).toContain('maximum context length is 48 tokens');
  });

  it('ends a generation without max_tokens at it, with finish_reason length', async () => {
    // Greedy stories260K does not end this story within 48 tokens (checked: finish_reason says which stop hit).
    const res = await client.chat.completions.create({
      model: 'stories260K',
      messages: [{ role: 'user', content: 'Once upon a time' }],
      temperature: 0,
    });
    expect(res.choices[0].finish_reason).toBe('length');
    expect(res.usage!.prompt_tokens + res.usage!.completion_tokens).toBeLessThanOrEqual(48);
  });
});

describe('a context length above the model', () => {
  it('fails the start with a message naming both lengths', async () => {
    const failed = await startTestGateway({ CARRYON_CONTEXT_LENGTH: '100000' }).then(
      async (g) => {
        await g.close();
        return null;
      },
      (err: unknown) => err as Error,
    );
    expect(failed?.message).toMatch(/CARRYON_CONTEXT_LENGTH 100000 exceeds the model's context length of 512/);
  });
});
