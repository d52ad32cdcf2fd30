import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelRunner } from '../../src/engine/model-runner.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, type TestGateway, USER_KEY } from '../helpers/gateway.js';

/**
 * The inference service is the one way into the model: embeddings go through the same step loop,
 * admission and budget as generations, and routing errors explain themselves.
 */
const MODEL = 'stories260K';
let gw: TestGateway;
let sdk: OpenAI;

beforeAll(async () => {
  // One sequence at a time and no waiting room: anything that is admitted at all shows up as a 429.
  // Prompt chunks of 3 tokens: an embedding input is read over several engine steps.
  gw = await startTestGateway({
    CARRYON_DATA_DIR: freshDataDir('carryon-inference-'),
    CARRYON_MAX_LIVE_SEQUENCES: '1',
    CARRYON_MAX_WAITING: '0',
    CARRYON_PREFILL_CHUNK: '3',
  });
  sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: USER_KEY, maxRetries: 0 });
});

afterAll(async () => {
  await gw?.close();
});

function prefillSteps(text: string): number {
  const m = /carryon:engine_prefill_rows_count (\d+)/.exec(text);
  return m ? Number(m[1]) : 0;
}

describe('embeddings through the step loop', () => {
  it('reads each input in prompt chunks and pools exactly what a direct forward pass gives', async () => {
    const texts = ['Once upon a time there was a little dog named Max.', 'The sun was hot.'];
    const before = prefillSteps(await gw.metrics.render());
    const res = await sdk.embeddings.create({ model: MODEL, input: texts, encoding_format: 'float' });
    const after = prefillSteps(await gw.metrics.render());

    const dir = path.join(gw.dataDir, 'models', MODEL);
    const runner = await ModelRunner.create({ modelDir: dir, provider: 'cpu', threads: 1 });
    const tokenizer = ModelTokenizer.load(dir, runner.config.vocab_size);
    try {
      const d = runner.config.hidden_size;
      let chunks = 0;
      for (const [i, text] of texts.entries()) {
        const ids = tokenizer.encode(text, true);
        chunks += Math.ceil(ids.length / 3);
        const { hidden } = await runner.forwardBody(ids, runner.newCache());
        const mean = new Float64Array(d);
        for (let r = 0; r < ids.length; r++) for (let j = 0; j < d; j++) mean[j] += hidden[r * d + j] / ids.length;
        const norm = Math.hypot(...mean);
        const got = res.data[i].embedding;
        expect(got).toHaveLength(d);
        got.forEach((v, j) => expect(v).toBeCloseTo(mean[j] / norm, 4));
      }
      // One engine step per 3-token chunk of each input (the inputs run one after the other here).
      expect(after - before).toBe(chunks);
    } finally {
      await runner.release();
    }
  });

  it('is admitted like a generation: with the one slot taken and no waiting room, it gets a 429', async () => {
    const stream = await sdk.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 300, temperature: 0, stream: true });
    const it = stream[Symbol.asyncIterator]();
    await it.next(); // the generation holds the slot now
    const refused = await sdk.embeddings.create({ model: MODEL, input: 'The dog ran' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(OpenAI.APIError);
    expect(refused).toMatchObject({ status: 429, code: 'server_overloaded' });
    stream.controller.abort();
    // The slot comes back when the generation is cancelled: the same request is then served.
    for (let i = 0; ; i++) {
      const ok = await sdk.embeddings.create({ model: MODEL, input: 'The dog ran' }).catch((e: unknown) => e);
      if (!(ok instanceof OpenAI.APIError)) break;
      expect(i).toBeLessThan(50);
      await new Promise((r) => setImmediate(r));
    }
  });

  it('charges its tokens and counts them in usage', async () => {
    const res = await sdk.embeddings.create({ model: MODEL, input: ['a b c', 'd e'] });
    expect(res.usage.prompt_tokens).toBeGreaterThan(2);
    expect(res.usage.total_tokens).toBe(res.usage.prompt_tokens);
  });
});

describe('model routing errors', () => {
  it("tells a global admin key that it has no tenant, and how to call a tenant's carry-on", async () => {
    const admin = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
    const err = await admin.chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 404, code: 'model_not_found', param: 'model' });
    const message = (err as InstanceType<typeof OpenAI.APIError>).message;
    expect(message).toMatch(/global admin key/);
    expect(message).toMatch(/x-carryon-tenant/);
  });

  it('keeps the plain 404 for a tenant key, whose tenant simply has no such carry-on', async () => {
    const err = await sdk.chat.completions.create({ model: 'style', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 404, code: 'model_not_found' });
    expect((err as InstanceType<typeof OpenAI.APIError>).message).not.toMatch(/admin/);
  });
});
