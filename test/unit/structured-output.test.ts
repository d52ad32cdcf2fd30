import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { advanceAll, Automaton } from '../../src/engine/structured/grammar.js';
import { StructuredOutputs, VocabTrie, type VocabularyBytes } from '../../src/engine/structured/token-mask.js';
import { responseFormatOf } from '../../src/openai/response-format.js';
import { ApiError } from '../../src/core/errors.js';
import { mulberry32 } from '../../bench/lib/rng.js';
import { ggufToCheckpoint } from '../../src/model/gguf.js';
import { buildTokenizerFiles } from '../../src/model/tokenizer-json.js';
import { HfTokenizer, ModelTokenizer } from '../../src/model/tokenizer.js';
import { vocabularyOf } from '../../src/serving/vocabulary.js';
import { STORIES_GGUF } from '../helpers/paths.js';
import { Sampler } from '../../src/engine/sampler.js';
import type { SamplingParams } from '../../src/engine/worker-messages.js';

/** A small vocabulary with the awkward cases: multi-byte characters split over tokens, tokens spanning several JSON parts, a special token (no bytes). */
function vocabulary(): { vocab: VocabularyBytes; stop: number } {
  const pieces: Uint8Array[] = [];
  for (let c = 0x20; c < 0x7f; c++) pieces.push(Uint8Array.of(c));
  const words = ['{"', '":', '",', '"}', '"]', '},', '}]', 'name', '"name":"', 'true', 'fal', 'se', 'null', '12', '0.', '.5', '[', '],', '"é', 'é', 'ab"', '",“', '"a","b"', ':{"', '-0', '1e', '\\u00', '\\n', '\\uD83D', '\\uDE00', '\\ud800', '😀', 'hello', 'world', 'red', 'green', '"red"', '[{"', '":[', 'count', '":1', '":"x"}'];
  for (const w of words) pieces.push(new Uint8Array(Buffer.from(w, 'utf8')));
  pieces.push(Uint8Array.of(0xc3), Uint8Array.of(0xa9), Uint8Array.of(0xe2), Uint8Array.of(0x80, 0x9c), Uint8Array.of(0xff));
  // Bytes of an encoded surrogate (ED A0 80) and of a 4-byte character split over tokens.
  pieces.push(Uint8Array.of(0xed), Uint8Array.of(0xa0, 0x80), Uint8Array.of(0xf0, 0x9f), Uint8Array.of(0x98, 0x80));
  const stop = pieces.length;
  pieces.push(new Uint8Array(0));
  const offsets = new Uint32Array(pieces.length + 1);
  pieces.forEach((p, i) => (offsets[i + 1] = offsets[i] + p.length));
  const bytes = new Uint8Array(offsets[pieces.length]);
  pieces.forEach((p, i) => bytes.set(p, offsets[i]));
  return { vocab: { bytes, offsets }, stop };
}

const SCHEMAS: Record<string, object> = {
  lengths: {
    type: 'object',
    properties: {
      short: { type: 'string', maxLength: 3 },
      mid: { type: 'string', minLength: 2, maxLength: 12 },
      long: { type: 'string', minLength: 20 },
      none: { type: 'string', maxLength: 0 },
    },
    required: ['short', 'mid', 'long', 'none'],
    additionalProperties: false,
  },
  person: {
    type: 'object',
    properties: { name: { type: 'string' }, age: { type: 'integer' }, score: { type: 'number' }, ok: { type: 'boolean' } },
    required: ['name', 'age', 'score', 'ok'],
    additionalProperties: false,
  },
  nested: {
    type: 'object',
    properties: {
      color: { enum: ['red', 'green', 1, 12, null] },
      tags: { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 3 },
      inner: { type: 'object', properties: { count: { type: 'integer' }, note: { type: ['string', 'null'] } }, required: ['count', 'note'], additionalProperties: false },
    },
    required: ['color', 'tags', 'inner'],
    additionalProperties: false,
  },
  refs: {
    type: 'object',
    properties: {
      items: { type: 'array', items: { $ref: '#/$defs/item' } },
      pick: { anyOf: [{ type: 'string' }, { type: 'number' }, { $ref: '#/$defs/item' }] },
      fixed: { const: 'x' },
    },
    required: ['items', 'pick', 'fixed'],
    additionalProperties: false,
    $defs: { item: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'], additionalProperties: false } },
  },
};

describe('structured outputs: automaton and token masks', () => {
  const { vocab, stop } = vocabulary();
  const outputs = new StructuredOutputs(new VocabTrie(vocab));
  const n = vocab.offsets.length - 1;
  const ajv = new Ajv({ strict: false });

  const formats = [
    ['json_object', responseFormatOf({ type: 'json_object' }, 'response_format')!, null] as const,
    ...Object.entries(SCHEMAS).map(
      ([name, schema]) => [name, responseFormatOf({ type: 'json_schema', json_schema: { name, schema, strict: true } }, 'response_format')!, ajv.compile(schema)] as const,
    ),
  ];

  for (const [name, format, validate] of formats) {
    it(`${name}: the trie mask equals a token-by-token brute force, and every random walk parses and validates`, () => {
      let walks = 0;
      for (let seed = 1; seed <= 40; seed++) {
        const random = mulberry32(seed);
        const c = outputs.constrain(format, [stop]);
        const taken: number[] = [];
        for (let step = 0; step < 200 && !c.finished; step++) {
          const { mask, count } = c.mask();
          const allowed: number[] = [];
          const mismatched: number[] = [];
          const logits = new Float32Array(n).fill(1);
          c.restrict(logits);
          for (let id = 0; id < n; id++) {
            const inMask = (mask[id >>> 5] & (1 << (id & 31))) !== 0;
            if (inMask !== c.allows(id) || inMask !== (logits[id] === 1)) mismatched.push(id);
            if (inMask) allowed.push(id);
          }
          expect(mismatched, `step ${step}`).toEqual([]);
          expect(count).toBe(allowed.length);
          expect(allowed.length).toBeGreaterThan(0);
          // Prefer closing tokens later on so walks end.
          const closing = allowed.filter((id) => id === stop || /[}\]"]/.test(Buffer.from(vocab.bytes.subarray(vocab.offsets[id], vocab.offsets[id + 1])).toString('latin1')));
          const pool = step > 40 && closing.length > 0 && random() < 0.7 ? closing : allowed;
          const id = pool[Math.floor(random() * pool.length)];
          if (id === stop) break;
          c.accept(id);
          taken.push(id);
        }
        if (!c.finished && !c.complete) continue; // ran out of steps mid-value: that is finish_reason length
        walks++;
        const text = Buffer.concat(taken.map((id) => Buffer.from(vocab.bytes.subarray(vocab.offsets[id], vocab.offsets[id + 1])))).toString('utf8');
        const value: unknown = JSON.parse(text);
        if (validate) expect(validate(value), `${text}: ${JSON.stringify(validate.errors)}`).toBe(true);
        else expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
      }
      expect(walks).toBeGreaterThan(20);
    });
  }

  it('refuses what is not JSON of the schema, byte by byte', () => {
    const g = responseFormatOf({ type: 'json_schema', json_schema: { name: 'p', schema: SCHEMAS.person, strict: true } }, 'response_format')!;
    const c = outputs.constrain(g, [stop]);
    const ok = (s: string | number[]) => advanceAll((c as unknown as { states: never[] }).states, typeof s === 'string' ? Buffer.from(s) : s).length > 0;
    expect(ok('{"name":"é\\n\\u00e9","age":-12,"score":0.5,"ok":true}')).toBe(true);
    expect(ok('{"age"')).toBe(false); // keys in schema order
    expect(ok('{"name":"a","age":1.5')).toBe(false); // integer
    expect(ok('{"name":"a","age":01')).toBe(false);
    expect(ok('{"name":"a\x01')).toBe(false); // control character
    expect(ok([...Buffer.from('{"name":"'), 0xff])).toBe(false); // not UTF-8
    expect(ok([...Buffer.from('{"name":"'), 0xc3, 0x41])).toBe(false); // a lead byte without its continuation
    expect(ok('{ "name"')).toBe(false); // compact
    expect(ok([...Buffer.from('{"name":"'), 0xed, 0xa0, 0x80])).toBe(false); // an encoded surrogate
    expect(ok([...Buffer.from('{"name":"'), 0xe0, 0x80, 0x80])).toBe(false); // an overlong form
    expect(ok([...Buffer.from('{"name":"'), 0xf4, 0x90])).toBe(false); // past U+10FFFF
    expect(ok([...Buffer.from('{"name":"'), 0xf0, 0x9f, 0x98, 0x80, 0xed, 0x9f, 0xbf])).toBe(true);
    expect(c.allows(stop)).toBe(false);
  });
});

describe('minLength and maxLength count code points as JSON Schema does', () => {
  const ajv = new Ajv({ strict: false });
  // Escaped surrogate pairs count one, lone halves one each, raw 4-byte characters one.
  const pieces = ['a', 'é', '😀', '\\n', '\\"', '\\u0041', '\\uD83D\\uDE00', '\\uD83D', '\\uDE00', '\\udbff'];
  const bounds: Array<[number, number | undefined]> = [[0, 0], [0, 1], [1, 3], [2, 2], [3, undefined], [0, 5], [4, 7]];
  for (const [min, max] of bounds) {
    it(`minLength ${min}, maxLength ${max ?? 'none'}: the automaton takes exactly the strings ajv accepts, and never strands a prefix`, () => {
      const schema = { type: 'string', minLength: min, ...(max === undefined ? {} : { maxLength: max }) };
      const validate = ajv.compile(schema);
      const start = new Automaton(responseFormatOf({ type: 'json_schema', json_schema: { name: 's', schema } }, 'response_format')!.grammar).start;
      const random = mulberry32(min * 31 + (max ?? 99));
      let accepted = 0;
      for (let k = 0; k < 400; k++) {
        const text = `"${Array.from({ length: Math.floor(random() * 9) }, () => pieces[Math.floor(random() * pieces.length)]).join('')}"`;
        const end = advanceAll(start, Buffer.from(text));
        const valid = validate(JSON.parse(text));
        expect(end.length === 1 && end[0] === null, text).toBe(valid);
        if (valid) accepted++;
        // Every live prefix can still be finished: some byte keeps it alive, or it is complete.
        const bytes = Buffer.from(text);
        for (let i = 1; i < bytes.length; i++) {
          const states = advanceAll(start, bytes.subarray(0, i));
          if (states.length === 0) break;
          const alive = states.some((s) => s === null) || [...Array(256).keys()].some((b) => advanceAll(states, [b]).length > 0);
          expect(alive, `${text} at ${i}`).toBe(true);
        }
      }
      expect(accepted).toBeGreaterThan(10);
    });
  }
});

/**
 * "Greedy output under a schema that allows everything the model would say equals the unconstrained
 * output", at the sampler, where a format can allow every token: inside a JSON string over a
 * vocabulary of letters, spaces and the quote, nothing is refused, so each sampling path (greedy,
 * seeded draws, top-k, top-p, logprobs) must give the same tokens and the same logprobs as no
 * constraint at all (test/integration/structured-outputs.test.ts does it on stories260K).
 */
describe('a constraint that refuses nothing changes nothing', () => {
  const words = ['"', ...'abcdefghijklmnopqrstuvwxyz'.split(''), ' ', ' the', ' cat', 'ing', ' Lily', 'ed', ' and', 'Th', 'um', ' '.repeat(4)];
  const pieces = words.map((w) => Buffer.from(w));
  // Padded past 512 with more letter pairs, so the vocabulary is wide enough for the bitmask paths.
  for (let a = 0; pieces.length < 700; a++) pieces.push(Buffer.from(String.fromCharCode(97 + (a % 26), 97 + (Math.floor(a / 26) % 26))));
  const offsets = new Uint32Array(pieces.length + 1);
  pieces.forEach((p, i) => (offsets[i + 1] = offsets[i] + p.length));
  const outputs = new StructuredOutputs(new VocabTrie({ bytes: new Uint8Array(Buffer.concat(pieces)), offsets }));
  const format = responseFormatOf({ type: 'json_schema', json_schema: { name: 's', schema: { type: 'string' }, strict: true } }, 'response_format')!;
  const n = pieces.length + 4; // logits past the vocabulary (padding), as Qwen's have
  const cases: Array<Partial<SamplingParams>> = [
    { temperature: 0 },
    { temperature: 0, topLogprobs: 3 },
    { temperature: 1 },
    { temperature: 0.7, topLogprobs: 0 },
    { temperature: 1, topK: 5 },
    { temperature: 1, topP: 0.8, topLogprobs: 2 },
  ];
  for (const p of cases) {
    it(`${JSON.stringify(p)}: the same tokens and logprobs`, () => {
      const params: SamplingParams = { temperature: 1, topP: 1, topK: 0, seed: 9, presencePenalty: 0, frequencyPenalty: 0, maxTokens: 100, stopTokenIds: [], topLogprobs: -1, ...p };
      const c = outputs.constrain(format, []);
      c.accept(0); // the opening quote: from here every token of the vocabulary stays in the string
      const [held, free] = [new Sampler(params), new Sampler(params)];
      const random = mulberry32(5);
      for (let step = 0; step < 60; step++) {
        const logits = Float32Array.from({ length: n }, () => 6 * random());
        logits[0] = -40; // the closing quote: allowed, but never the pick, so the string goes on
        logits.fill(-Infinity, pieces.length);
        expect(c.mask().count).toBe(pieces.length);
        const a = held.sample(logits.slice(), c);
        const b = free.sample(logits.slice());
        expect(a, `step ${step}`).toEqual(b);
        c.accept(a.token);
      }
    });
  }
});

describe('structured outputs: schema errors name the path', () => {
  const bad = (schema: unknown, strict = true) => {
    try {
      responseFormatOf({ type: 'json_schema', json_schema: { name: 'x', schema, strict } }, 'response_format');
    } catch (err) {
      expect(err).toBeInstanceOf(ApiError);
      return { param: (err as ApiError).param, status: (err as ApiError).status };
    }
    throw new Error('accepted');
  };
  const obj = (properties: object) => ({ type: 'object', properties, required: Object.keys(properties), additionalProperties: false });

  it('unsupported keywords', () => {
    expect(bad(obj({ x: { type: 'string', pattern: '^a' } }))).toEqual({ param: 'response_format.json_schema.schema.properties.x.pattern', status: 400 });
    expect(bad(obj({ x: { type: 'string', format: 'email' } })).param).toBe('response_format.json_schema.schema.properties.x.format');
    expect(bad(obj({ x: { type: 'string', maxLength: 1.5 } })).param).toBe('response_format.json_schema.schema.properties.x.maxLength');
    expect(bad(obj({ x: { type: 'string', minLength: 3, maxLength: 2 } })).param).toBe('response_format.json_schema.schema.properties.x.maxLength');
    expect(bad(obj({ x: { type: 'number', minimum: 0 } })).param).toBe('response_format.json_schema.schema.properties.x.minimum');
    expect(bad(obj({ x: { oneOf: [] } })).param).toBe('response_format.json_schema.schema.properties.x.oneOf');
  });

  it('strict-mode rules, references and bounds', () => {
    expect(bad({ type: 'object', properties: { a: { type: 'string' } }, required: [], additionalProperties: false }).param).toBe('response_format.json_schema.schema.required');
    expect(bad({ type: 'object', properties: {}, required: [] }).param).toBe('response_format.json_schema.schema.additionalProperties');
    expect(bad({ ...obj({ a: { $ref: '#/$defs/n' } }), $defs: { n: obj({ b: { $ref: '#/$defs/n' } }) } }).param).toBe(
      'response_format.json_schema.schema.properties.a.$defs.n.properties.b.$ref',
    );
    expect(bad(obj({ a: { $ref: 'http://x/y' } })).param).toBe('response_format.json_schema.schema.properties.a.$ref');
    let deep: object = { type: 'string' };
    for (let i = 0; i < 12; i++) deep = obj({ a: deep });
    expect(bad(deep).status).toBe(400);
    let abyss: object = {};
    for (let i = 0; i < 100_000; i++) abyss = { a: abyss };
    expect(bad(abyss)).toEqual({ param: 'response_format.json_schema.schema', status: 400 });
    expect(bad(obj({ a: { type: 'array', items: { type: 'string' }, maxItems: 100000 } })).param).toBe('response_format.json_schema.schema.properties.a.maxItems');
  });

  it('the same schema compiles once', () => {
    const f = { type: 'json_schema', json_schema: { name: 'x', schema: SCHEMAS.nested, strict: true } };
    expect(responseFormatOf(f, 'response_format')).toBe(responseFormatOf(structuredClone(f), 'response_format'));
  });
});

describe('the vocabulary structured outputs read (vocabularyOf)', () => {
  it('on stories260K: SentencePiece spaces are a space, control tokens have no bytes', async () => {
    const vocab = (await ggufToCheckpoint(STORIES_GGUF)).vocab;
    if ('model' in vocab) throw new Error('stories260K.gguf has a SentencePiece vocabulary');
    // Through JSON, as the package's files are read back from disk.
    const files = JSON.parse(JSON.stringify(buildTokenizerFiles(vocab, { modelMaxLength: 2048 }))) as { tokenizerJson: object; tokenizerConfig: Record<string, unknown> };
    const hf = new HfTokenizer(files.tokenizerJson, files.tokenizerConfig);
    const tokenizer = new ModelTokenizer(hf, files.tokenizerConfig, 512);
    const { bytes, offsets } = vocabularyOf(tokenizer);
    const bytesOf = (id: number) => Array.from(bytes.subarray(offsets[id], offsets[id + 1]));
    expect(offsets).toHaveLength(513);
    // The lone `▁` and the byte piece <0x20> decode to '' on their own (decode drops a text's leading
    // space), yet a constrained output writes its spaces with them.
    for (const piece of ['▁', '<0x20>']) expect(bytesOf(hf.token_to_id(piece)!), piece).toEqual([0x20]);
    for (const piece of ['<unk>', '<s>', '</s>']) expect(bytesOf(hf.token_to_id(piece)!), piece).toEqual([]);
    for (let id = 0; id < 512; id++) expect(bytesOf(id)).toEqual(tokenizer.isSpecial(id) ? [] : tokenizer.piece(id).bytes);
  });
});
