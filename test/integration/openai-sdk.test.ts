import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

let gw: TestGateway;
let client: OpenAI;
const model = 'stories260K';

beforeAll(async () => {
  gw = await startTestGateway();
  client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
});
afterAll(async () => gw?.close());

describe('chat completions through the official SDK', () => {
  it('returns a chat.completion with text, finish_reason and usage', async () => {
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 20,
      temperature: 0,
    });
    expect(res.object).toBe('chat.completion');
    expect(res.id).toMatch(/^chatcmpl-/);
    expect(res.choices).toHaveLength(1);
    expect(res.choices[0].message.role).toBe('assistant');
    expect(res.choices[0].message.content!.length).toBeGreaterThan(10);
    expect(res.choices[0].finish_reason).toBe('length');
    expect(res.usage).toEqual({ prompt_tokens: 5, completion_tokens: 20, total_tokens: 25, prompt_tokens_details: { cached_tokens: 0 } });
  });

  it('streams chunks with one id, a role first, a finish_reason last, and usage when asked', async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const ids = new Set(chunks.map((c) => c.id));
    expect(ids.size).toBe(1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({ prompt_tokens: 5, completion_tokens: 12, total_tokens: 17, prompt_tokens_details: { cached_tokens: 0 } });
    const withChoices = chunks.filter((c) => c.choices.length > 0);
    expect(withChoices.at(-1)!.choices[0].finish_reason).toBe('length');
    expect(withChoices.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);

    const streamed = withChoices.map((c) => c.choices[0].delta.content ?? '').join('');
    const whole = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 12,
      temperature: 0,
    });
    expect(streamed).toBe(whole.choices[0].message.content);
  });

  it('omits usage from stream chunks when include_usage is not set', async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Tim had a dog' }],
      max_tokens: 5,
      stream: true,
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks.every((c) => !('usage' in c))).toBe(true);
    expect(chunks.at(-1)!.choices[0].finish_reason).toBe('length');
  });

  it('gives the same output for the same seed and n distinct choices', async () => {
    const ask = () =>
      client.chat.completions.create({
        model,
        messages: [{ role: 'user', content: 'Lily went to the park' }],
        max_tokens: 24,
        temperature: 1,
        seed: 1234,
        n: 3,
      });
    const [a, b] = [await ask(), await ask()];
    expect(a.choices.map((c) => c.message.content)).toEqual(b.choices.map((c) => c.message.content));
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(new Set(a.choices.map((c) => c.message.content)).size).toBeGreaterThan(1);
    expect(a.usage!.completion_tokens).toBeLessThanOrEqual(72);
  });

  it('reports logprobs and top_logprobs that are valid log probabilities', async () => {
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = res.choices[0].logprobs!.content!;
    expect(content).toHaveLength(6);
    for (const t of content) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.top_logprobs).toHaveLength(3);
      // Greedy: the chosen token is the most likely one.
      expect(t.top_logprobs[0].token).toBe(t.token);
      expect(t.top_logprobs[0].logprob).toBeCloseTo(t.logprob, 5);
      expect(t.top_logprobs[1].logprob).toBeLessThanOrEqual(t.top_logprobs[0].logprob);
    }
    expect(content.map((t) => t.token).join('')).toBe(res.choices[0].message.content);
  });

  it('never emits a stop string and finishes with "stop"', async () => {
    const free = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 40,
      temperature: 0,
    });
    const text = free.choices[0].message.content!;
    const stopWord = 'girl';
    expect(text).toContain(stopWord);
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 40,
      temperature: 0,
      stop: [stopWord, 'zzzz'],
    });
    expect(res.choices[0].message.content).toBe(text.slice(0, text.indexOf(stopWord)));
    expect(res.choices[0].finish_reason).toBe('stop');
  });

  it('accepts max_completion_tokens and the vLLM-style top_k through extra_body', async () => {
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'The cat' }],
      max_completion_tokens: 7,
      // @ts-expect-error top_k is a server extension sent as an extra body field
      top_k: 1,
    });
    // top_k = 1 is greedy whatever the temperature.
    const greedy = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'The cat' }], max_completion_tokens: 7, temperature: 0 });
    expect(res.usage!.completion_tokens).toBe(7);
    expect(res.choices[0].message.content).toBe(greedy.choices[0].message.content);
  });
});

describe('legacy completions through the official SDK', () => {
  it('continues a prompt, matching chat on the same text (plain template)', async () => {
    const res = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 30, temperature: 0 });
    expect(res.object).toBe('text_completion');
    expect(res.choices[0].text.startsWith(', there was a little girl named Lily')).toBe(true);
    expect(res.usage).toEqual({ prompt_tokens: 5, completion_tokens: 30, total_tokens: 35, prompt_tokens_details: { cached_tokens: 0 } });
    const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 30, temperature: 0 });
    expect(chat.choices[0].message.content).toBe(res.choices[0].text);
  });

  it('streams text_completion chunks ending with [DONE] and usage', async () => {
    const stream = await client.completions.create({
      model,
      prompt: 'Once upon a time',
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const c of stream) {
      expect(c.object).toBe('text_completion');
      if (c.choices.length) text += c.choices[0].text;
      if (c.usage) usage = c.usage;
    }
    const whole = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 10, temperature: 0 });
    expect(text).toBe(whole.choices[0].text);
    expect(usage).toEqual({ prompt_tokens: 5, completion_tokens: 10, total_tokens: 15, prompt_tokens_details: { cached_tokens: 0 } });
  });

  it('accepts token ids as the prompt and echoes when asked', async () => {
    const res = await client.completions.create({ model, prompt: [1, 403, 407, 261, 378], max_tokens: 3, temperature: 0, echo: true });
    expect(res.choices[0].text.startsWith('Once upon a time,')).toBe(true);
  });

  it('returns legacy logprobs with tokens, token_logprobs, top_logprobs and text_offset', async () => {
    const res = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 4, temperature: 0, logprobs: 2 });
    const lp = res.choices[0].logprobs!;
    expect(lp.tokens).toHaveLength(4);
    expect(lp.token_logprobs!.every((x) => x <= 0)).toBe(true);
    expect(Object.keys(lp.top_logprobs![0])).toHaveLength(2);
    expect(lp.text_offset![0]).toBe(0);
    expect(lp.tokens!.join('')).toBe(res.choices[0].text);
  });
});

describe('models and embeddings', () => {
  it('lists and retrieves the served model', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual([model]);
    const one = await client.models.retrieve(model);
    expect(one.id).toBe(model);
    // The context length, under vLLM's name: stories260K was trained with 512 positions.
    expect((one as OpenAI.Models.Model & { max_model_len?: number }).max_model_len).toBe(512);
    await expect(client.models.retrieve('nope')).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
  });

  it('embeds text as unit vectors of the hidden size, base64 (SDK default) and float alike', async () => {
    const b64 = await client.embeddings.create({ model, input: ['Once upon a time', 'The dog ran'] });
    const flt = await client.embeddings.create({ model, input: ['Once upon a time', 'The dog ran'], encoding_format: 'float' });
    expect(b64.data).toHaveLength(2);
    for (const [i, d] of flt.data.entries()) {
      expect(d.embedding).toHaveLength(64);
      const norm = Math.hypot(...d.embedding);
      expect(norm).toBeCloseTo(1, 5);
      b64.data[i].embedding.forEach((v, j) => expect(v).toBeCloseTo(d.embedding[j], 6));
    }
    const counted = await client.completions.create({ model, prompt: 'The dog ran', max_tokens: 1 });
    expect(flt.usage.prompt_tokens).toBe(5 + counted.usage!.prompt_tokens);
    const same = await client.embeddings.create({ model, input: 'Once upon a time', encoding_format: 'float' });
    expect(same.data[0].embedding).toEqual(flt.data[0].embedding);
  });
});
