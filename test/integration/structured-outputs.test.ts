import fs from 'node:fs';
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
    // Of 64; the rest (a story model) wrote past 300 tokens, mostly inside a string.
    expect(texts.length).toBeGreaterThanOrEqual(24);
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
    expect(done.length).toBeGreaterThanOrEqual(4);
    for (const c of done) expect(validate(JSON.parse(c.text)), c.text).toBe(true);
  });

  it('/v1/responses takes text.format json_schema', async () => {
    const r = await client.responses.create({
      model,
      input: 'Once upon a time',
      max_output_tokens: 300,
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
