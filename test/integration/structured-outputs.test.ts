import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CreatedApiKeyObject } from '../../src/admin/schemas.js';
import { CARRYON_FILES } from '../../src/carryon/manifest.js';
import { advanceAll, Automaton } from '../../src/engine/structured/grammar.js';
import { responseFormatOf } from '../../src/openai/response-format.js';
import { api, uploadCarryOn, type FormPart } from '../helpers/admin.js';
import { makeCarryOn } from '../helpers/carry-on.js';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { writeHfFolder } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights, type Family } from '../helpers/model-families.js';
import { BOUNDED_SCHEMA, expectAllValid } from '../helpers/structured-samples.js';

/**
 * Structured outputs through the official openai SDK on the real engine: stories260K writes
 * children's stories, never JSON, so every valid output here is the constraint's doing. Sampled at
 * temperature 1 over many seeds, for the base and for a carry-on with α ≠ 0 (the mask applies to the
 * final, composed logits).
 */
let gw: TestGateway;
let work: string;
let client: OpenAI;
let tenantClient: OpenAI;
const model = 'stories260K';
const ajv = new Ajv({ strict: false });

const SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    age: { type: 'integer' },
    mood: { enum: ['happy', 'sad', 'sleepy'] },
    friends: { type: 'array', items: { $ref: '#/$defs/friend' }, maxItems: 2 },
    home: {
      type: 'object',
      properties: { town: { type: 'string' }, size: { anyOf: [{ type: 'number' }, { type: 'null' }, { enum: ['big', 'small'] }] } },
      required: ['town', 'size'],
      additionalProperties: false,
    },
    good: { type: 'boolean' },
  },
  required: ['name', 'age', 'mood', 'friends', 'home', 'good'],
  additionalProperties: false,
  $defs: { friend: { type: 'object', properties: { name: { type: 'string' }, kind: { enum: ['cat', 'dog'] } }, required: ['name', 'kind'], additionalProperties: false } },
};
const jsonSchema = { type: 'json_schema' as const, json_schema: { name: 'character', schema: SCHEMA, strict: true } };
const validate = ajv.compile(SCHEMA);
const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Once upon a time there was a girl named Lily.' }];

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('structured-') });
  work = freshDataDir('structured-pkgs-');
  client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  expect((await api(gw, 'POST', '/admin/tenants', ADMIN_KEY, { id: 'acme' })).status).toBe(201);
  const key = await api<CreatedApiKeyObject>(gw, 'POST', '/admin/keys', ADMIN_KEY, { tenant: 'acme' });
  tenantClient = new OpenAI({ apiKey: key.json.key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  const rec = await makeCarryOn(path.join(gw.dataDir, 'models', model), path.join(work, 'twist'), { id: 'twist', perturb: 0.5, seed: 3 });
  const parts: FormPart[] = [
    { name: 'manifest', data: JSON.stringify(rec.manifest) },
    { name: 'weights', filename: CARRYON_FILES.weights, data: fs.readFileSync(path.join(rec.dir, CARRYON_FILES.weights)) },
  ];
  const r = await uploadCarryOn(gw, 'acme', ADMIN_KEY, parts);
  expect(r.status, r.text).toBe(201);
});
afterAll(async () => {
  await gw?.close();
  for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

/**
 * Samples `seeds` × 8 choices; returns the finished texts and how many ran out of tokens. A choice
 * cut by max_tokens cannot parse; it must still be a prefix the format's automaton accepts.
 */
async function sample(c: OpenAI, m: string, format: OpenAI.Chat.ChatCompletionCreateParams['response_format'] & object, seeds: number, extra: object = {}) {
  const automaton = new Automaton(responseFormatOf(format as never, 'response_format')!.grammar);
  const texts: string[] = [];
  let cut = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const r = await c.chat.completions.create({ model: m, messages, response_format: format, temperature: 1, seed, n: 8, max_tokens: 300, ...extra });
    for (const choice of r.choices) {
      const text = choice.message.content ?? '';
      if (choice.finish_reason === 'stop') texts.push(text);
      else {
        expect(choice.finish_reason).toBe('length');
        expect(advanceAll(automaton.start, Buffer.from(text)).length, text).toBeGreaterThan(0);
        cut++;
      }
    }
  }
  return { texts, cut };
}

describe('response_format through the openai SDK', () => {
  it('json_schema (strict: nested objects, enum, array of $ref, anyOf): every finished output parses and validates', async () => {
    const { texts, cut } = await sample(client, model, jsonSchema, 8);
    for (const t of texts) expect(validate(JSON.parse(t)), `${t}: ${JSON.stringify(validate.errors)}`).toBe(true);
    // Of 64; the rest (a story model) wrote past 300 tokens, mostly inside a string, where a lone `▁`
    // (a space) lets it go on with its story. Measured: 20.
    expect(texts.length).toBeGreaterThanOrEqual(16);
    expect(cut).toBe(64 - texts.length);
  });

  it('the same through a carry-on with α ≠ 0: the mask applies to the composed logits', async () => {
    const { texts } = await sample(tenantClient, 'twist', jsonSchema, 4, { carry_on_alpha: 1.5 });
    for (const t of texts) expect(validate(JSON.parse(t)), t).toBe(true);
    expect(texts.length).toBeGreaterThanOrEqual(2);
    // The carry-on changes what is written: its outputs are not the base's for the same seeds.
    const base = await sample(client, model, jsonSchema, 4);
    expect(texts).not.toEqual(base.texts);
  });

  it('200 seeded samples under a schema of bounded fields all finish, parse and validate, on the base and through the carry-on', async () => {
    expect(await expectAllValid(client, model, BOUNDED_SCHEMA)).toBe(200);
    expect(await expectAllValid(tenantClient, 'twist', BOUNDED_SCHEMA, { extra: { carry_on_alpha: 1.5 } })).toBe(200);
  }, 300_000);

  it('json_object: every output is a JSON object, or one cut short by max_tokens', async () => {
    // Free-form JSON gives a story model no reason to close: most run to max_tokens (checked as prefixes).
    const { texts, cut } = await sample(client, model, { type: 'json_object' }, 4);
    for (const t of texts) {
      const v: unknown = JSON.parse(t);
      expect(typeof v === 'object' && v !== null && !Array.isArray(v), t).toBe(true);
    }
    expect(texts.length + cut).toBe(32);
  });

  it('streams: the deltas join into a valid document, and the last chunk says stop', async () => {
    for (let seed = 1; seed <= 6; seed++) {
      const stream = await client.chat.completions.create({ model, messages, response_format: jsonSchema, temperature: 1, seed, max_tokens: 300, stream: true });
      let text = '';
      let finish: string | null = null;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      if (finish === 'length') continue;
      expect(finish).toBe('stop');
      expect(validate(JSON.parse(text)), text).toBe(true);
    }
  });

  it('greedy output is reproducible, and a short max_tokens ends mid-value with length', async () => {
    const once = await client.chat.completions.create({ model, messages, response_format: jsonSchema, temperature: 0, max_tokens: 300 });
    const again = await client.chat.completions.create({ model, messages, response_format: jsonSchema, temperature: 0, max_tokens: 300 });
    expect(again.choices[0].message.content).toBe(once.choices[0].message.content);
    const short = await client.chat.completions.create({ model, messages, response_format: jsonSchema, temperature: 0, max_tokens: 3 });
    expect(short.choices[0].finish_reason).toBe('length');
    expect(once.choices[0].message.content!.startsWith(short.choices[0].message.content!)).toBe(true);
  });

  it('/v1/completions takes response_format too (as vLLM does)', async () => {
    const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 300, temperature: 1, seed: 5, n: 8, response_format: jsonSchema } as OpenAI.CompletionCreateParamsNonStreaming);
    const done = r.choices.filter((c) => c.finish_reason === 'stop');
    expect(done.length).toBeGreaterThanOrEqual(2); // measured: 3 of 8
    for (const c of done) expect(validate(JSON.parse(c.text)), c.text).toBe(true);
  });

  it('/v1/responses takes text.format json_schema', async () => {
    const r = await client.responses.create({
      model,
      input: 'Once upon a time',
      max_output_tokens: 400, // the greedy document is 333 tokens
      temperature: 0,
      text: { format: { type: 'json_schema', name: 'character', schema: SCHEMA, strict: true } },
    });
    expect(r.status).toBe('completed');
    expect(validate(JSON.parse(r.output_text)), r.output_text).toBe(true);
    expect(r.text?.format).toMatchObject({ type: 'json_schema', name: 'character' });
  });

  it('an unsupported keyword is a 400 naming its path; so is a strict schema that leaves a property optional', async () => {
    const bad = (schema: Record<string, unknown>) =>
      client.chat.completions.create({ model, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema, strict: true } } });
    await expect(
      bad({ type: 'object', properties: { x: { type: 'string', pattern: '^a+$' } }, required: ['x'], additionalProperties: false }),
    ).rejects.toMatchObject({ status: 400, code: 'unsupported_parameter', param: 'response_format.json_schema.schema.properties.x.pattern', type: 'invalid_request_error' });
    await expect(bad({ type: 'object', properties: { x: { type: 'string' } }, required: [], additionalProperties: false })).rejects.toMatchObject({
      status: 400,
      code: 'invalid_value',
      param: 'response_format.json_schema.schema.required',
    });
    await expect(client.chat.completions.create({ model, messages, response_format: { type: 'xml' } as never })).rejects.toMatchObject({ status: 400, param: 'response_format.type' });
  });
});

/**
 * Greedy decoding under a format that admits what the model says anyway changes nothing: stories260K
 * opens its greedy continuation of this prompt with a quoted line, so a JSON string admits it up to
 * the closing quote, where the value is complete and the output stops. Tokens are the same; logprobs
 * under a format are the model's distribution over the tokens the format allows (renormalised), so
 * the differences between the logprobs of allowed tokens are the unconstrained ones exactly.
 * (A grammar that refuses nothing at all, where the logprobs themselves are equal, is tested on the
 * sampler in test/unit/structured-output.test.ts.)
 */
describe('greedy output under a format that allows what the model says', () => {
  it('is the unconstrained output, token for token, with the same logprob differences', async () => {
    const prompt = 'One day, Lily said to her mom,\n';
    const ask = (extra: object) =>
      client.completions.create({ model, prompt, max_tokens: 40, temperature: 0, logprobs: 5, ...extra } as OpenAI.CompletionCreateParamsNonStreaming);
    const free = (await ask({})).choices[0];
    const format = { type: 'json_schema', json_schema: { name: 'line', schema: { type: 'string' }, strict: true } };
    const held = (await ask({ response_format: format })).choices[0];
    // Measured: `"Mommy, can I play with your toys?"` then ` asked Lily.` past the closing quote.
    expect(held.finish_reason).toBe('stop');
    expect(held.text).toMatch(/^"[^"\\]+"$/);
    expect(free.text.startsWith(held.text)).toBe(true);
    const [u, c] = [free.logprobs!, held.logprobs!];
    expect(c.tokens).toEqual(u.tokens!.slice(0, c.tokens!.length));
    let compared = 0;
    c.tokens!.forEach((t, i) => {
      // Renormalising over the allowed tokens only raises a logprob (by −log P(allowed), small here).
      expect(c.token_logprobs![i]).toBeGreaterThanOrEqual(u.token_logprobs![i] - 1e-5);
      expect(c.token_logprobs![i] - u.token_logprobs![i]).toBeLessThan(0.5); // measured: at most 0.12
      // The unconstrained top 5 that the format allows (the others are absent or −∞ under it). Keys
      // are token texts, and two ids can share one (a piece and its byte-fallback token): the
      // chosen token's text is compared through token_logprobs above, not here.
      for (const [alt, free] of Object.entries(u.top_logprobs![i])) {
        const lp = c.top_logprobs![i][alt];
        if (alt === t || lp == null) continue;
        expect(lp - c.token_logprobs![i]).toBeCloseTo(free - u.token_logprobs![i], 4);
        compared++;
      }
      expect(t).toBe(u.tokens![i]);
    });
    expect(compared).toBeGreaterThan(2 * c.tokens!.length); // measured: 61 over 17 tokens
    // Cut short inside the string: the same text, ended by max_tokens.
    const short = (await ask({ response_format: format, max_tokens: 6 })).choices[0];
    const freeShort = (await ask({ max_tokens: 6 })).choices[0];
    expect(short.finish_reason).toBe('length');
    expect(short.text).toBe(freeShort.text);
  });
});

/**
 * The same validity on byte-level BPE vocabularies: tiny random-weight models of the Qwen3 and Llama 3
 * architectures with their real tokenizers (151,936 and 128,256 logits). Random weights favour no
 * token, so every step draws from the whole allowed set: each key, enum value, digit count and array
 * length the schema allows comes up. 200 seeded samples per model at temperature 1 over four schemas
 * (nested objects, arrays of enums and of objects, anyOf, a bounded string) all finish within 96
 * tokens, parse and validate; were one cut by max_tokens, it would have to be a prefix the format
 * accepts (the console line gives the counts).
 */
const FAMILY_SCHEMAS: Record<string, Record<string, unknown>> = {
  order: {
    type: 'object',
    properties: {
      item: { type: 'object', properties: { kind: { enum: ['tea', 'cake', 'soup'] }, size: { enum: ['S', 'M', 'L'] } }, required: ['kind', 'size'], additionalProperties: false },
      qty: { enum: [1, 2, 3] },
      rush: { type: 'boolean' },
      ship: {
        type: 'object',
        properties: { city: { enum: ['Oslo', 'Lima', 'Pune'] }, zone: { anyOf: [{ type: 'integer' }, { type: 'null' }] } },
        required: ['city', 'zone'],
        additionalProperties: false,
      },
    },
    required: ['item', 'qty', 'rush', 'ship'],
    additionalProperties: false,
  },
  lists: {
    type: 'object',
    properties: {
      tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, maxItems: 4 },
      scores: { type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 2 },
      pairs: { type: 'array', items: { $ref: '#/$defs/pair' }, maxItems: 2 },
    },
    required: ['tags', 'scores', 'pairs'],
    additionalProperties: false,
    $defs: { pair: { type: 'object', properties: { on: { type: 'boolean' }, level: { enum: [1, 2, 3, null] } }, required: ['on', 'level'], additionalProperties: false } },
  },
  choice: { anyOf: [{ enum: ['yes', 'no'] }, { type: 'object', properties: { maybe: { type: 'integer' } }, required: ['maybe'], additionalProperties: false }] },
  note: {
    type: 'object',
    properties: { title: { type: 'string', minLength: 1, maxLength: 16 }, mood: { enum: ['calm', 'busy'] } },
    required: ['title', 'mood'],
    additionalProperties: false,
  },
};
const familyTmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-structured-families-'));
afterAll(() => fs.rmSync(familyTmp, { recursive: true, force: true }));

for (const family of ['qwen3', 'llama3'] as Family[]) {
  describe(`response_format on a ${family}-shaped model with its real tokenizer`, () => {
    let served: TestGateway;
    let c: OpenAI;
    let id: string;
    beforeAll(async () => {
      const folder = path.join(familyTmp, family);
      const eos = family === 'llama3' ? { generationConfig: { bos_token_id: 128000, eos_token_id: [128001, 128009] } } : {};
      writeHfFolder(folder, randomFamilyWeights(family), { dtype: 'F32', shards: 1, tokenizerFrom: FAMILIES[family].tokenizerDir, ...eos });
      served = await startTestGateway({ CARRYON_MODEL: folder, CARRYON_DATA_DIR: freshDataDir(`structured-${family}-`) });
      c = new OpenAI({ apiKey: USER_KEY, baseURL: `${served.url}/v1`, maxRetries: 0 });
      id = (await c.models.list()).data[0].id;
    }, 240_000);
    afterAll(async () => {
      await served?.close();
      if (served) fs.rmSync(served.dataDir, { recursive: true, force: true });
    });

    it('200 seeded samples at temperature 1 over four schemas: every one finishes, parses and validates', async () => {
      const names = Object.keys(FAMILY_SCHEMAS);
      // 25 requests of n = 8 (the server's most), five at a time; request k uses schema k mod 4 and seed k + 1.
      const counts = Object.fromEntries(names.map((n) => [n, { valid: 0, cut: 0 }]));
      const one = async (k: number) => {
        const name = names[k % names.length];
        const schema = FAMILY_SCHEMAS[name];
        const format = { type: 'json_schema' as const, json_schema: { name, schema, strict: true } };
        const automaton = new Automaton(responseFormatOf(format, 'response_format')!.grammar);
        const check = ajv.compile(schema);
        const r = await c.chat.completions.create({ model: id, messages, response_format: format, temperature: 1, seed: k + 1, n: 8, max_tokens: 96 });
        expect(r.choices).toHaveLength(8);
        for (const choice of r.choices) {
          const text = choice.message.content ?? '';
          if (choice.finish_reason === 'stop') {
            expect(check(JSON.parse(text)), `${name}: ${text}: ${JSON.stringify(check.errors)}`).toBe(true);
            counts[name].valid++;
          } else {
            expect(choice.finish_reason).toBe('length');
            expect(advanceAll(automaton.start, Buffer.from(text)).length, text).toBeGreaterThan(0);
            counts[name].cut++;
          }
        }
      };
      for (let k = 0; k < 25; k += 5) await Promise.all([0, 1, 2, 3, 4].map((d) => one(k + d)));
      console.log(`${family}: valid / cut by max_tokens per schema: ${JSON.stringify(counts)}`);
      const total = Object.values(counts).reduce((a, x) => a + x.valid + x.cut, 0);
      expect(total).toBe(200);
      // Every sample finishes: the note's title is bounded (maxLength), so even a random model, which
      // rarely picks a closing quote by itself, is made to close it.
      expect(counts).toEqual({ order: { valid: 56, cut: 0 }, lists: { valid: 48, cut: 0 }, choice: { valid: 48, cut: 0 }, note: { valid: 48, cut: 0 } });
    }, 300_000);

    it('json_object: every finished output is a JSON object', async () => {
      const r = await c.chat.completions.create({ model: id, messages, response_format: { type: 'json_object' }, temperature: 1, seed: 3, n: 8, max_tokens: 48 });
      for (const choice of r.choices) {
        if (choice.finish_reason !== 'stop') continue;
        const v: unknown = JSON.parse(choice.message.content ?? '');
        expect(typeof v === 'object' && v !== null && !Array.isArray(v)).toBe(true);
      }
    });
  });
}
