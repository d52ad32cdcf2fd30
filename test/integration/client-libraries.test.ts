import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI, OpenAI as LangChainOpenAI, OpenAIEmbeddings } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

/**
 * The clients apps actually use, against the real gateway (issue 16): the Vercel AI SDK's default provider
 * (`openai(model)` calls POST /v1/responses; `openai.chat(model)` calls chat completions) and LangChain
 * (`OpenAI.generate([a, b])` sends `prompt` as an array; ChatOpenAI; OpenAIEmbeddings batching).
 * Greedy decoding is deterministic, so each library's text must equal the official `openai` SDK's for the same request.
 */
let gw: TestGateway;
let client: OpenAI;
let baseURL: string;
const model = 'stories260K';
const PROMPT = 'Once upon a time';

beforeAll(async () => {
  gw = await startTestGateway();
  baseURL = `${gw.url}/v1`;
  client = new OpenAI({ apiKey: USER_KEY, baseURL, maxRetries: 0 });
});
afterAll(async () => gw?.close());

const chatOnce = (content: string, maxTokens: number) =>
  client.chat.completions.create({ model, messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0 });

/** A fetch that records each request's path and JSON body, so a test can show what the library sent. */
function recordingFetch(): { sent: Array<{ path: string; body: Record<string, unknown> }>; fetch: typeof globalThis.fetch } {
  const sent: Array<{ path: string; body: Record<string, unknown> }> = [];
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    const body = typeof init?.body === 'string' ? (JSON.parse(init.body) as Record<string, unknown>) : {};
    sent.push({ path: new URL(url).pathname, body });
    return globalThis.fetch(input, init);
  };
  return { sent, fetch };
}

/** streamText reports failures to onError and ends the stream quietly; collect them so a test can fail on them. */
function collectErrors(): { errors: unknown[]; onError: (e: { error: unknown }) => void } {
  const errors: unknown[] = [];
  return { errors, onError: ({ error }) => void errors.push(error) };
}

describe('Vercel AI SDK, default provider (POST /v1/responses)', () => {
  const provider = () => createOpenAI({ apiKey: USER_KEY, baseURL });

  it('generateText gives the official SDK\'s greedy text and usage', async () => {
    const official = await client.responses.create({ model, input: [{ role: 'user', content: PROMPT }], max_output_tokens: 20, temperature: 0 });
    const { sent, fetch } = recordingFetch();
    const res = await generateText({ model: createOpenAI({ apiKey: USER_KEY, baseURL, fetch })(model), prompt: PROMPT, maxOutputTokens: 20, temperature: 0, maxRetries: 0 });
    expect(sent.map((r) => r.path)).toEqual(['/v1/responses']);
    expect(sent[0].body).toMatchObject({ model, max_output_tokens: 20, temperature: 0 });
    expect(res.text.length).toBeGreaterThan(10);
    expect(res.text).toBe(official.output_text);
    expect(res.finishReason).toBe('length');
    expect(res.usage).toMatchObject({
      inputTokens: official.usage!.input_tokens,
      outputTokens: official.usage!.output_tokens,
      totalTokens: official.usage!.total_tokens,
    });
    expect(res.usage.outputTokens).toBe(20);
    expect(res.response.id).toMatch(/^resp_/);
    expect(res.warnings ?? []).toEqual([]);
  });

  it('generateText with a system prompt and messages matches the official SDK', async () => {
    const messages = [
      { role: 'user' as const, content: 'Lily liked cats.' },
      { role: 'assistant' as const, content: 'She had a cat named Tom.' },
      { role: 'user' as const, content: 'One day, Tom ran away.' },
    ];
    const official = await client.responses.create({ model, instructions: 'Tim had a red ball.', input: messages, max_output_tokens: 16, temperature: 0 });
    const res = await generateText({ model: provider()(model), system: 'Tim had a red ball.', messages, maxOutputTokens: 16, temperature: 0, maxRetries: 0 });
    expect(res.text.length).toBeGreaterThan(0);
    expect(res.text).toBe(official.output_text);
    expect(res.usage.inputTokens).toBe(official.usage!.input_tokens);
  });

  it('streamText streams the same text as generateText, with usage and finish reason', async () => {
    const whole = await generateText({ model: provider()(model), prompt: PROMPT, maxOutputTokens: 24, temperature: 0, maxRetries: 0 });
    const { errors, onError } = collectErrors();
    const stream = streamText({ model: provider()(model), prompt: PROMPT, maxOutputTokens: 24, temperature: 0, maxRetries: 0, onError });
    const parts: string[] = [];
    for await (const t of stream.textStream) parts.push(t);
    expect(errors).toEqual([]);
    expect(parts.length).toBeGreaterThan(3);
    expect(parts.join('')).toBe(whole.text);
    expect(await stream.text).toBe(whole.text);
    expect(await stream.finishReason).toBe('length');
    expect(await stream.usage).toMatchObject({ inputTokens: whole.usage.inputTokens, outputTokens: 24, totalTokens: whole.usage.totalTokens });
  });

  it('a model the gateway does not serve is an error the SDK surfaces, not empty text', async () => {
    await expect(generateText({ model: provider()('no-such-model'), prompt: PROMPT, maxOutputTokens: 4, maxRetries: 0 })).rejects.toMatchObject({
      statusCode: 404,
    });
  });
});

describe('Vercel AI SDK, openai.chat (chat completions)', () => {
  const chatModel = () => createOpenAI({ apiKey: USER_KEY, baseURL }).chat(model);

  it('generateText gives the official SDK\'s greedy text and usage', async () => {
    const official = await chatOnce(PROMPT, 20);
    const { sent, fetch } = recordingFetch();
    const res = await generateText({ model: createOpenAI({ apiKey: USER_KEY, baseURL, fetch }).chat(model), prompt: PROMPT, maxOutputTokens: 20, temperature: 0, maxRetries: 0 });
    expect(sent.map((r) => r.path)).toEqual(['/v1/chat/completions']);
    expect(res.text.length).toBeGreaterThan(10);
    expect(res.text).toBe(official.choices[0].message.content);
    expect(res.finishReason).toBe('length');
    expect(res.usage).toMatchObject({
      inputTokens: official.usage!.prompt_tokens,
      outputTokens: official.usage!.completion_tokens,
      totalTokens: official.usage!.total_tokens,
    });
    expect(res.response.id).toMatch(/^chatcmpl-/);
  });

  it('streamText streams the same text, with usage and finish reason', async () => {
    const official = await chatOnce(PROMPT, 24);
    const { errors, onError } = collectErrors();
    const stream = streamText({ model: chatModel(), prompt: PROMPT, maxOutputTokens: 24, temperature: 0, maxRetries: 0, onError });
    const parts: string[] = [];
    for await (const t of stream.textStream) parts.push(t);
    expect(errors).toEqual([]);
    expect(parts.length).toBeGreaterThan(3);
    expect(parts.join('')).toBe(official.choices[0].message.content);
    expect(await stream.finishReason).toBe('length');
    expect(await stream.usage).toMatchObject({
      inputTokens: official.usage!.prompt_tokens,
      outputTokens: official.usage!.completion_tokens,
      totalTokens: official.usage!.total_tokens,
    });
  });
});

describe('LangChain', () => {
  const prompts = ['Once upon a time', 'Lily and Ben went to the park'];
  const llm = (fields: Partial<ConstructorParameters<typeof LangChainOpenAI>[0]> = {}) =>
    new LangChainOpenAI({ model, apiKey: USER_KEY, configuration: { baseURL }, temperature: 0, maxTokens: 12, maxRetries: 0, ...fields });

  it('OpenAI (completions) generate([a, b]) sends one request and returns one generation per prompt', async () => {
    const singles = await Promise.all(prompts.map((prompt) => client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 })));
    const { sent, fetch } = recordingFetch();
    const res = await llm({ configuration: { baseURL, fetch } }).generate(prompts);
    expect(sent.map((r) => r.path)).toEqual(['/v1/completions']);
    expect(sent[0].body.prompt).toEqual(prompts);
    expect(res.generations).toHaveLength(2);
    for (const [p, single] of singles.entries()) {
      expect(res.generations[p]).toHaveLength(1);
      expect(res.generations[p][0].text.length).toBeGreaterThan(0);
      expect(res.generations[p][0].text).toBe(single.choices[0].text);
      expect(res.generations[p][0].generationInfo?.finishReason).toBe(single.choices[0].finish_reason);
    }
    const sum = (k: 'prompt_tokens' | 'completion_tokens' | 'total_tokens') => singles.reduce((a, s) => a + s.usage![k], 0);
    expect(res.llmOutput?.tokenUsage).toEqual({ promptTokens: sum('prompt_tokens'), completionTokens: sum('completion_tokens'), totalTokens: sum('total_tokens') });
  });

  it('OpenAI (completions) with streaming: true assembles the same generations from the interleaved stream', async () => {
    const plain = await llm().generate(prompts);
    const streamed = await llm({ streaming: true }).generate(prompts);
    expect(streamed.generations.map((g) => g.map((c) => c.text))).toEqual(plain.generations.map((g) => g.map((c) => c.text)));
    const chunks: string[] = [];
    for await (const c of await llm().stream(prompts[0])) chunks.push(c);
    expect(chunks.length).toBeGreaterThan(3);
    expect(chunks.join('')).toBe(plain.generations[0][0].text);
  });

  const chat = () => new ChatOpenAI({ model, apiKey: USER_KEY, configuration: { baseURL }, temperature: 0, maxTokens: 16, maxRetries: 0 });

  it('ChatOpenAI invoke gives the official SDK\'s greedy text and usage', async () => {
    const official = await chatOnce(PROMPT, 16);
    const msg = await chat().invoke(PROMPT);
    expect(typeof msg.content).toBe('string');
    expect(msg.content).toBe(official.choices[0].message.content);
    expect((msg.content as string).length).toBeGreaterThan(10);
    expect(msg.usage_metadata).toMatchObject({
      input_tokens: official.usage!.prompt_tokens,
      output_tokens: official.usage!.completion_tokens,
      total_tokens: official.usage!.total_tokens,
    });
    expect(msg.response_metadata.finish_reason).toBe('length');
  });

  it('ChatOpenAI stream assembles the invoke text, with usage on the stream', async () => {
    const whole = await chat().invoke(PROMPT);
    const chunks = [];
    for await (const c of await chat().stream(PROMPT)) chunks.push(c);
    expect(chunks.length).toBeGreaterThan(3);
    expect(chunks.map((c) => c.text).join('')).toBe(whole.text);
    expect(whole.text).toBe(whole.content);
    const usage = chunks.map((c) => c.usage_metadata).filter((u) => u !== undefined);
    expect(usage.length).toBeGreaterThan(0);
    expect(usage.at(-1)).toMatchObject({ input_tokens: whole.usage_metadata!.input_tokens, output_tokens: 16, total_tokens: whole.usage_metadata!.total_tokens });
  });

  it('OpenAIEmbeddings embedDocuments batches 600 texts at its default 512 per request, each equal to embedQuery', async () => {
    const texts = Array.from({ length: 600 }, (_, i) => `story ${i % 50}: the cat sat on the mat`);
    const { sent, fetch } = recordingFetch();
    const embeddings = new OpenAIEmbeddings({ model, apiKey: USER_KEY, configuration: { baseURL, fetch }, maxRetries: 0 });
    const vectors = await embeddings.embedDocuments(texts);
    expect(sent.map((r) => (r.body.input as string[]).length)).toEqual([512, 88]);
    expect(vectors).toHaveLength(600);
    const dim = vectors[0].length;
    expect(dim).toBeGreaterThan(0);
    expect(vectors.every((v) => v.length === dim)).toBe(true);
    for (const i of [0, 7, 511, 512, 599]) {
      const one = await embeddings.embedQuery(texts[i]);
      one.forEach((v, j) => expect(vectors[i][j]).toBeCloseTo(v, 5));
    }
    // The same text in the first and second batch (indices 10 and 560) embeds the same.
    vectors[10].forEach((v, j) => expect(vectors[560][j]).toBeCloseTo(v, 5));
    const official = await client.embeddings.create({ model, input: texts[3], encoding_format: 'float' });
    official.data[0].embedding.forEach((v, j) => expect(vectors[3][j]).toBeCloseTo(v, 5));
  });
});
