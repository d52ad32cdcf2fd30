import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { advanceAll } from '../../src/engine/structured/grammar.js';
import { StructuredOutputs, VocabTrie, type VocabularyBytes } from '../../src/engine/structured/token-mask.js';
import { responseFormatOf } from '../../src/openai/response-format.js';
import { ApiError } from '../../src/core/errors.js';

/** A small vocabulary with the awkward cases: multi-byte characters split over tokens, tokens spanning several JSON parts, a special token (no bytes). */
function vocabulary(): { vocab: VocabularyBytes; stop: number } {
  const pieces: Uint8Array[] = [];
  for (let c = 0x20; c < 0x7f; c++) pieces.push(Uint8Array.of(c));
  const words = ['{"', '":', '",', '"}', '"]', '},', '}]', 'name', '"name":"', 'true', 'fal', 'se', 'null', '12', '0.', '.5', '[', '],', '"é', 'é', 'ab"', '",“', '"a","b"', ':{"', '-0', '1e', '\\u00', '\\n', 'red', 'green', '"red"', '[{"', '":[', 'count', '":1', '":"x"}'];
  for (const w of words) pieces.push(new Uint8Array(Buffer.from(w, 'utf8')));
  pieces.push(Uint8Array.of(0xc3), Uint8Array.of(0xa9), Uint8Array.of(0xe2), Uint8Array.of(0x80, 0x9c), Uint8Array.of(0xff));
  const stop = pieces.length;
  pieces.push(new Uint8Array(0));
  const offsets = new Uint32Array(pieces.length + 1);
  pieces.forEach((p, i) => (offsets[i + 1] = offsets[i] + p.length));
  const bytes = new Uint8Array(offsets[pieces.length]);
  pieces.forEach((p, i) => bytes.set(p, offsets[i]));
  return { vocab: { bytes, offsets }, stop };
}

const SCHEMAS: Record<string, object> = {
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

/** Deterministic PRNG for the random walks. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
        const random = rng(seed);
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
    expect(c.allows(stop)).toBe(false);
  });
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
