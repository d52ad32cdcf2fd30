import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * Batched inputs as OpenAI accepts them (issue 16, item 5): `prompt` as an array on /v1/completions
 * (what LangChain's generate([a, b]) sends), and up to 2,048 inputs per /v1/embeddings request.
 */
let gw: TestGateway;
let client: OpenAI;
const model = 'stories260K';
const prompts = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park'];

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('carryon-batched-') });
  client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
});
afterAll(async () => gw?.close());

async function alone(prompt: string | number[]): Promise<OpenAI.Completions.Completion> {
  return client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
}

describe('completions with an array of prompts', () => {
  it('numbers choice p·n + i as choice i of prompt p, each equal to the prompt sent alone; usage is the sum', async () => {
    const singles = await Promise.all(prompts.map(alone));
    const res = await client.completions.create({ model, prompt: prompts, n: 2, max_tokens: 12, temperature: 0 });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const [p, single] of singles.entries()) {
      for (const i of [0, 1]) expect(res.choices[p * 2 + i].text).toBe(single.choices[0].text);
    }
    const sum = (k: 'prompt_tokens' | 'completion_tokens') => singles.reduce((a, s) => a + s.usage![k], 0);
    const { prompt_tokens_details: details, ...counts } = res.usage as OpenAI.Completions.CompletionUsage & { prompt_tokens_details: { cached_tokens: number } };
    expect(counts).toEqual({ prompt_tokens: sum('prompt_tokens'), completion_tokens: 2 * sum('completion_tokens'), total_tokens: sum('prompt_tokens') + 2 * sum('completion_tokens') });
    // The singles ran first, so the batch may find their prompts' blocks cached.
    expect(details.cached_tokens).toBeLessThanOrEqual(counts.prompt_tokens);
  });

  it('streams the prompts interleaved, each choice assembling to its text; token-id prompts too', async () => {
    const ids = [[1, 403, 407, 261, 378], [1, 365, 279]];
    const singles = await Promise.all(ids.map(alone));
    const stream = await client.completions.create({ model, prompt: ids, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const texts = ['', ''];
    const finished: Array<string | null> = [null, null];
    let usage: OpenAI.Completions.CompletionUsage | null | undefined = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        texts[c.index] += c.text;
        if (c.finish_reason) finished[c.index] = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(texts).toEqual(singles.map((s) => s.choices[0].text));
    expect(finished).toEqual(singles.map((s) => s.choices[0].finish_reason));
    expect(usage?.completion_tokens).toBe(singles.reduce((a, s) => a + s.usage!.completion_tokens, 0));
  });

  it('refuses the whole request when one prompt is refused, naming it', async () => {
    const err = await client.completions.create({ model, prompt: ['Once', 'x '.repeat(2000)], max_tokens: 4 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 400, code: 'context_length_exceeded', param: 'prompt' });
    const bad = await client.completions.create({ model, prompt: [[1, 2], [1, 99999]], max_tokens: 4 }).catch((e: unknown) => e);
    expect(bad).toMatchObject({ status: 400, param: 'prompt[1]' });
  });
});

describe('embeddings with 2,048 inputs', () => {
  it('embeds them all in one request, each equal to the same text embedded alone', async () => {
    const texts = Array.from({ length: 2048 }, (_, i) => `story ${i % 64}: the cat sat`);
    const res = await client.embeddings.create({ model, input: texts, encoding_format: 'float' });
    expect(res.data).toHaveLength(2048);
    expect(res.data.map((d) => d.index)).toEqual(texts.map((_, i) => i));
    for (const i of [0, 5, 64, 2047]) {
      const one = await client.embeddings.create({ model, input: texts[i], encoding_format: 'float' });
      one.data[0].embedding.forEach((v, j) => expect(res.data[i].embedding[j]).toBeCloseTo(v, 5));
    }
    expect(res.data[3].embedding).toEqual(res.data[3 + 64].embedding);
    const over = await client.embeddings.create({ model, input: [...texts, 'one more'] }).catch((e: unknown) => e);
    expect(over).toMatchObject({ status: 400, param: 'input' });
  });
});
