import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { writeHfFolder } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights } from '../helpers/model-families.js';

/**
 * The text side of a byte-level model, end to end: a tiny random-weight Llama-3-shaped model with the
 * real Llama 3 tokenizer, served from its Hugging Face folder by the real gateway, asked through the
 * openai SDK. Random weights pick tokens from all 128,256, partial characters and special tokens
 * included, which is what these checks want: the reply never shows special-token text, the logprob
 * tokens' bytes put together are the reply, streaming gives the same text, and a template that
 * refuses the conversation answers 400 naming `messages`.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-byte-level-'));
const llama3Config = JSON.parse(fs.readFileSync(path.join(FAMILIES.llama3.tokenizerDir, 'tokenizer_config.json'), 'utf8')) as { chat_template: string; added_tokens_decoder: Record<string, { content: string; special: boolean }> };
const SPECIALS = Object.values(llama3Config.added_tokens_decoder).filter((t) => t.special).map((t) => t.content);
// The real Llama 3 template behind a guard that refuses two user turns in a row, as stricter templates do.
const GUARDED_TEMPLATE =
  "{% for message in messages %}{% if not loop.first and message['role'] == 'user' and messages[loop.index0 - 1]['role'] == 'user' %}" +
  "{{ raise_exception('Two user messages in a row: answer the first before asking again.') }}{% endif %}{% endfor %}" +
  llama3Config.chat_template;

let gw: TestGateway;
let client: OpenAI;
let model: string;

beforeAll(async () => {
  const folder = path.join(tmp, 'llama3-hf');
  writeHfFolder(folder, randomFamilyWeights('llama3'), {
    dtype: 'F32',
    shards: 1,
    tokenizerFrom: FAMILIES.llama3.tokenizerDir,
    chatTemplateJinja: GUARDED_TEMPLATE,
    generationConfig: { bos_token_id: 128000, eos_token_id: [128001, 128009] },
  });
  gw = await startTestGateway({ CARRYON_MODEL: folder, CARRYON_DATA_DIR: freshDataDir('carryon-byte-level-data-') });
  client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  model = (await client.models.list()).data[0].id;
}, 240_000);
afterAll(async () => {
  await gw?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const MESSAGES = [
  { role: 'system' as const, content: 'You are terse. Réponds en français 😀.' },
  { role: 'user' as const, content: 'Say "hello" in 中文 and 日本語.' },
];

describe('a byte-level model through the openai SDK', () => {
  it('never prints special tokens, and its logprob bytes put together are its reply', async () => {
    const r = await client.chat.completions.create({ model, messages: MESSAGES, max_tokens: 48, n: 4, seed: 11, logprobs: true, top_logprobs: 3 });
    expect(r.choices).toHaveLength(4);
    let partial = 0;
    for (const choice of r.choices) {
      const content = choice.message.content ?? '';
      for (const s of SPECIALS) expect(content).not.toContain(s);
      const tokens = choice.logprobs?.content ?? [];
      expect(tokens.length).toBeGreaterThan(0);
      const printed = tokens.filter((t) => !SPECIALS.includes(t.token));
      const bytes = Buffer.from(printed.flatMap((t) => t.bytes ?? []));
      expect(new TextDecoder('utf-8', { fatal: false, ignoreBOM: true }).decode(bytes)).toBe(content);
      for (const t of [...tokens, ...tokens.flatMap((x) => x.top_logprobs)]) {
        if (t.token.startsWith('bytes:')) partial++;
        else expect(Buffer.from(t.bytes ?? []).toString('utf8')).toBe(t.token);
      }
    }
    // 4 × 48 tokens and their alternatives, drawn from the whole vocabulary: some are parts of a character.
    expect(partial).toBeGreaterThan(0);
  });

  it("gives /v1/completions text_offset as positions in the reply's text, special tokens and split characters included", async () => {
    const r = await client.completions.create({ model, prompt: 'Bonjour 😀 世界', max_tokens: 64, n: 3, seed: 4, temperature: 1, logprobs: 1 });
    let checked = 0;
    for (const choice of r.choices) {
      const lp = choice.logprobs!;
      const offsets = lp.text_offset!;
      expect(offsets).toHaveLength(lp.tokens!.length);
      lp.tokens!.forEach((token, i) => {
        const next = offsets[i + 1] ?? choice.text.length;
        expect(next).toBeGreaterThanOrEqual(offsets[i]);
        // A whole printed token's text sits at its offset; specials and character parts add nothing of
        // their own (a part the next token does not continue shows as U+FFFD where that token starts).
        if (!SPECIALS.includes(token) && !token.startsWith('bytes:')) {
          expect(choice.text.slice(offsets[i], next).replace(/^\ufffd+/, '')).toBe(token);
          checked++;
        }
      });
      expect(offsets.at(-1)! <= choice.text.length).toBe(true);
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('streams the same text, split characters and all', async () => {
    const request = { model, messages: MESSAGES, max_tokens: 48, seed: 5, temperature: 1 };
    const whole = await client.chat.completions.create(request);
    let streamed = '';
    for await (const chunk of await client.chat.completions.create({ ...request, stream: true })) streamed += chunk.choices[0]?.delta.content ?? '';
    expect(streamed).toBe(whole.choices[0].message.content);
    expect(streamed.length).toBeGreaterThan(0);
  });

  it("answers a conversation the template refuses with a 400 in OpenAI's shape naming messages", async () => {
    const err = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Hi' }, { role: 'user', content: 'Hello?' }], max_tokens: 4 })
      .then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    const e = err as InstanceType<typeof OpenAI.BadRequestError>;
    expect(e.status).toBe(400);
    expect(e.error).toEqual({
      message: 'The chat template rejected these messages: Two user messages in a row: answer the first before asking again.',
      type: 'invalid_request_error',
      param: 'messages',
      code: 'invalid_value',
    });
  });
});

/**
 * The same model with one change: every token's embedding carries +50 in dimension 0 (so the final
 * state always leans that way) and the LM head row of <|eot_id|> reads that dimension (+1.3), so
 * sampling ends a turn after a few tokens at random, as a chat model does. The generation config is
 * Llama-3-Instruct's: end on <|end_of_text|> or <|eot_id|>.
 */
describe('a Llama-3-shaped chat model that ends its turns with <|eot_id|>', () => {
  const EOT = 128009;
  let eotGateway: TestGateway;
  let eotClient: OpenAI;
  let eotModel: string;

  beforeAll(async () => {
    const w = randomFamilyWeights('llama3', 2);
    const d = w.config.hidden_size;
    for (let v = 0; v < w.config.vocab_size; v++) w.tokEmbeddings[v * d] = 50;
    if (w.output?.kind !== 'f32') throw new Error('the llama3 fixture has an untied f32 head');
    w.output.data[EOT * d] = 1.3;
    const folder = path.join(tmp, 'llama3-eot');
    writeHfFolder(folder, w, {
      dtype: 'F32',
      shards: 1,
      tokenizerFrom: FAMILIES.llama3.tokenizerDir,
      generationConfig: { bos_token_id: 128000, eos_token_id: [128001, EOT] },
    });
    eotGateway = await startTestGateway({ CARRYON_MODEL: folder, CARRYON_DATA_DIR: freshDataDir('carryon-eot-data-') });
    eotClient = new OpenAI({ apiKey: USER_KEY, baseURL: `${eotGateway.url}/v1`, maxRetries: 0 });
    eotModel = (await eotClient.models.list()).data[0].id;
  }, 240_000);
  afterAll(async () => {
    await eotGateway?.close();
  });

  it('stops at <|eot_id|> with finish_reason stop, the end token not in the text, streamed alike', async () => {
    const request = { model: eotModel, messages: MESSAGES, max_tokens: 200, temperature: 1, n: 4, seed: 3 };
    const r = await eotClient.chat.completions.create(request);
    for (const choice of r.choices) {
      expect(choice.finish_reason).toBe('stop');
      for (const s of SPECIALS) expect(choice.message.content ?? '').not.toContain(s);
    }
    expect(r.usage!.completion_tokens).toBeLessThan(4 * 200);
    // At least one turn says something before it ends (each token ends it with probability ~0.2).
    expect(r.choices.some((c) => (c.message.content ?? '').length > 0)).toBe(true);
    const finishes: string[] = [];
    for await (const chunk of await eotClient.chat.completions.create({ ...request, n: 1, stream: true })) {
      const f = chunk.choices[0]?.finish_reason;
      if (f) finishes.push(f);
    }
    expect(finishes).toEqual(['stop']);
  });
});
