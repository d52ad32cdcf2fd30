/**
 * Structured outputs (response_format) at a 152k vocabulary: what the token mask costs, and what it
 * does to decode throughput.
 *
 *   node --import tsx bench/structured-output.ts [--walks 20] [--concurrency 1,32] [--decode 32]
 *        [--shape qwen2.5-0.5b] [--threads 1] [--skip-engine]
 *
 * 1. Mask cost, no model: the real Qwen3 vocabulary (151,669 tokens, byte-level BPE, read from
 *    ../shared/tokenizers/qwen3/tokenizer.json through @huggingface/tokenizers) as the vocabulary
 *    trie the worker builds; random walks through each test schema taking random allowed tokens.
 *    Per token: the check of a proposed token (the sampler's try-first path), a cold mask (a state
 *    seen for the first time: the trie walk), a warm mask (cache hit) applied to 151,936 logits.
 *    Then the sampler's own CPU time per token at that width, with each format vs without.
 * 2. Decode tokens/s, the engine worker as the gateway drives it, on a model of `--shape` (default
 *    Qwen2.5-0.5B's, whose vocabulary is Qwen3's 151,936) with seeded random weights (so it never "wants" JSON: the
 *    try-first path fails often and masks are built and applied: a worst case), temperature 1, C
 *    concurrent streams, with each schema vs without; ratio constrained / unconstrained, where the
 *    unconstrained run that each schema's run is compared with (run right after it) stops each
 *    stream at the length the constrained one reached, so both batches thin out alike.
 *    `--shape smollm2-135m`: SmolLM2-135M's shape (49,152 logits; the vocabulary is Qwen3's first ids).
 */
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { Engine } from '../src/engine/engine.js';
import { Sampler } from '../src/engine/sampler.js';
import { Automaton } from '../src/engine/structured/grammar.js';
import { StructuredOutputs, VocabTrie, type ResponseFormatSpec, type VocabularyBytes } from '../src/engine/structured/token-mask.js';
import type { SamplingParams } from '../src/engine/worker-messages.js';
import { writeLlamaGguf } from '../src/model/gguf.js';
import { HfTokenizer } from '../src/model/tokenizer.js';
import { responseFormatOf } from '../src/openai/response-format.js';
import { BENCH_OUT, modelPackage } from './lib/artifacts.js';
import { intOption } from './lib/options.js';
import { mulberry32 } from './lib/rng.js';
import { percentile, table } from './lib/stats.js';
import { SHAPES, syntheticCheckpoint, type ShapeName } from './lib/synthetic-model.js';

const { values } = parseArgs({
  options: {
    walks: { type: 'string', default: '20' },
    concurrency: { type: 'string', default: '1,32' },
    decode: { type: 'string', default: '32' },
    shape: { type: 'string', default: 'qwen2.5-0.5b' },
    threads: { type: 'string', default: '1' },
    'skip-engine': { type: 'boolean', default: false },
  },
});
const WALKS = intOption('walks', values.walks, 1);
const CONCURRENCY = values.concurrency.split(',').map((c) => intOption('concurrency', c, 1));
const DECODE = intOption('decode', values.decode, 2);
if (!(values.shape in SHAPES)) throw new Error(`--shape: one of ${Object.keys(SHAPES).join(', ')}`);
const SHAPE = values.shape as ShapeName;
const THREADS = intOption('threads', values.threads, 1);
const QWEN = path.resolve(import.meta.dirname, '../../shared/tokenizers/qwen3/tokenizer.json');
const VOCAB_SIZE = 151_936; // Qwen2.5/3's logits (the tokenizer's 151,669 ids, padded)
const IM_END = 151_645;
const log = (m: string) => process.stderr.write(`[structured ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

const obj = (properties: Record<string, unknown>, extra: object = {}) => ({ type: 'object', properties, required: Object.keys(properties), additionalProperties: false, ...extra });
const SCHEMAS: Record<string, object | null> = {
  story: obj({ title: { type: 'string' }, story: { type: 'string' } }),
  character: obj(
    {
      name: { type: 'string' },
      age: { type: 'integer' },
      mood: { enum: ['happy', 'sad', 'sleepy'] },
      friends: { type: 'array', items: { $ref: '#/$defs/friend' }, maxItems: 2 },
      home: obj({ town: { type: 'string' }, size: { anyOf: [{ type: 'number' }, { type: 'null' }, { enum: ['big', 'small'] }] } }),
      good: { type: 'boolean' },
    },
    { $defs: { friend: obj({ name: { type: 'string' }, kind: { enum: ['cat', 'dog'] } }) } },
  ),
  /** Strings bounded by minLength/maxLength: near either bound a state needs its own trie walk. */
  bounded: obj({ title: { type: 'string', minLength: 8, maxLength: 40 }, tag: { type: 'string', maxLength: 12 } }),
  json_object: null,
};

/** CPU ms of 200 compiles of `name`'s schema, each a distinct copy (a fresh `$comment`), so none is served from the compile cache. */
function compileTimes(name: string): number[] {
  const schema = SCHEMAS[name];
  return Array.from({ length: 200 }, (_, i) =>
    cpuMs(() => {
      const f = schema ? { type: 'json_schema', json_schema: { name, schema: { ...schema, $comment: `copy ${i} ${Math.random()}` }, strict: true } } : { type: 'json_object' };
      void new Automaton(responseFormatOf(f, 'response_format')!.grammar);
    }),
  );
}

function formatOf(name: string): ResponseFormatSpec {
  const schema = SCHEMAS[name];
  const f = schema ? { type: 'json_schema', json_schema: { name, schema, strict: true } } : { type: 'json_object' };
  return responseFormatOf(f, 'response_format')!;
}

/** GPT-2's byte ↔ character table, which byte-level BPE vocabularies are written in. */
function byteDecoder(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(bs.map((b, i) => [String.fromCodePoint(cs[i]), b]));
}

/** Qwen3's tokens as bytes, padded to the logits' width; special tokens get none (as src/serving/vocabulary.ts does). */
function qwenVocabulary(): VocabularyBytes {
  const json = JSON.parse(fs.readFileSync(QWEN, 'utf8')) as { added_tokens: Array<{ id: number; special: boolean }> };
  const tok = new HfTokenizer(json, {});
  const special = new Set(json.added_tokens.filter((t) => t.special).map((t) => t.id));
  const table = byteDecoder();
  const pieces: number[][] = [];
  for (let id = 0; id < VOCAB_SIZE; id++) {
    const s = tok.id_to_token(id);
    pieces.push(s === undefined || special.has(id) ? [] : [...s].map((c) => table.get(c) ?? 0));
  }
  const offsets = new Uint32Array(VOCAB_SIZE + 1);
  pieces.forEach((p, i) => (offsets[i + 1] = offsets[i] + p.length));
  const bytes = new Uint8Array(offsets[VOCAB_SIZE]);
  pieces.forEach((p, i) => bytes.set(p, offsets[i]));
  return { bytes, offsets };
}

/**
 * CPU milliseconds of one call of `fn` (the mean of `times` calls): CPU time, not wall time, so
 * other processes on a shared machine do not inflate it.
 */
function cpuMs(fn: () => void, times = 1): number {
  const start = process.cpuUsage();
  for (let i = 0; i < times; i++) fn();
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1000 / times;
}

const us = (ms: number) => `${(ms * 1000).toFixed(1)} µs`;
const msf = (ms: number) => `${ms.toFixed(2)} ms`;

/** Part 1: the mask's own cost per token, per schema. */
function maskCost(vocab: VocabularyBytes): void {
  let trie: VocabTrie | null = null;
  const buildMs = cpuMs(() => (trie = new VocabTrie(vocab)));
  const prepareMs = cpuMs(() => trie!.prepare());
  log(`vocabulary trie of ${trie!.size} tokens (${trie!.nodes} nodes): built in ${msf(buildMs)} CPU, string tables in ${msf(prepareMs)} CPU`);
  const closing = [IM_END];
  for (let id = 0; id < VOCAB_SIZE; id++) if (vocab.bytes.subarray(vocab.offsets[id], vocab.offsets[id + 1]).some((b) => b === 0x22 || b === 0x7d || b === 0x5d)) closing.push(id);
  const rows: string[][] = [];
  for (const name of Object.keys(SCHEMAS)) {
    const outputs = new StructuredOutputs(trie!);
    const format = formatOf(name);
    const compile = compileTimes(name);
    const cold: number[] = [];
    const warm: number[] = [];
    const check: number[] = [];
    const logits = new Float32Array(VOCAB_SIZE);
    let tokens = 0;
    for (let w = 0; w < WALKS; w++) {
      const rnd = mulberry32(w + 1);
      const c = outputs.constrain(format, [IM_END]);
      for (let step = 0; step < 200 && !c.finished; step++) {
        const misses = outputs.masks.misses;
        let mask: Uint32Array = new Uint32Array(0);
        const dt = cpuMs(() => (mask = c.mask().mask));
        if (outputs.masks.misses > misses) cold.push(dt);
        warm.push(cpuMs(() => c.restrict(logits), 20));
        // A random allowed token (drawn until one is allowed; a list only when few are), favouring
        // ones that close strings and values after a while, so walks end.
        const has = (id: number) => (mask[id >>> 5] & (1 << (id & 31))) !== 0;
        const closable = step > 30 && rnd() < 0.5 ? closing.filter(has) : [];
        let id = closable.length > 0 ? closable[Math.floor(rnd() * closable.length)] : -1;
        for (let tries = 0; id < 0 && tries < 200; tries++) {
          const r = Math.floor(rnd() * VOCAB_SIZE);
          if (has(r)) id = r;
        }
        if (id < 0) {
          const allowed: number[] = [];
          for (let i = 0; i < VOCAB_SIZE; i++) if (has(i)) allowed.push(i);
          id = allowed[Math.floor(rnd() * allowed.length)];
        }
        check.push(cpuMs(() => c.allows(id), 20));
        if (id === IM_END) break;
        c.accept(id);
        tokens++;
      }
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    rows.push([
      name,
      `${msf(percentile(compile, 50))} / ${msf(percentile(compile, 99))}`,
      String(tokens),
      us(mean(check)),
      `${cold.length}`,
      `${msf(percentile(cold, 50))} / ${msf(percentile(cold, 99))}`,
      us(mean(warm)),
      `${(100 - (100 * cold.length) / Math.max(1, tokens)).toFixed(0)}%`,
    ]);
  }
  console.log(`\n## Mask cost per token (CPU time), Qwen3 vocabulary (${VOCAB_SIZE} logits), ${WALKS} random walks per schema\n`);
  console.log(`Vocabulary trie: ${msf(buildMs)} to build, ${msf(prepareMs)} for the string tables (once per worker, when the vocabulary arrives).\n`);
  console.log('Schema compile: JSON Schema → grammar → automaton, as a request with a schema not seen before pays it (200 compiles, each of a distinct copy).\n');
  console.log(table(['format', 'compile p50 / p99', 'tokens', 'token check (try-first)', 'cold masks', 'cold p50 / p99', 'warm mask + apply', 'tokens with a cached mask'], rows));
}

/**
 * Part 1b: the sampler's CPU time per token at the full width (151,936 logits), with each format vs
 * without: random logits (a model with no wish to write JSON, as the engine part's), temperature 1,
 * the same logits for both, the constraint advanced with each token as the worker does.
 */
function samplingCost(vocab: VocabularyBytes): void {
  const outputs = new StructuredOutputs(new VocabTrie(vocab));
  const rows: string[][] = [];
  const params: SamplingParams = { temperature: 1, topP: 1, topK: 0, seed: 1, presencePenalty: 0, frequencyPenalty: 0, maxTokens: 64, stopTokenIds: [IM_END], topLogprobs: -1 };
  const pool = Array.from({ length: 8 }, (_, k) => {
    const rnd = mulberry32(100 + k);
    return Float32Array.from({ length: VOCAB_SIZE }, () => 8 * rnd());
  });
  for (const name of Object.keys(SCHEMAS)) {
    const format = formatOf(name);
    const free: number[] = [];
    const held: number[] = [];
    for (let w = 0; w < WALKS; w++) {
      const c = outputs.constrain(format, [IM_END]);
      const [a, b] = [new Sampler({ ...params, seed: w + 1 }), new Sampler({ ...params, seed: w + 1 })];
      for (let step = 0; step < 64 && !c.finished; step++) {
        const logits = pool[(w + step) % pool.length];
        const x = logits.slice();
        const y = logits.slice();
        free.push(cpuMs(() => a.sample(x)));
        let token = -1;
        held.push(cpuMs(() => {
          token = b.sample(y, c).token;
          if (token !== IM_END) c.accept(token);
        }));
        if (token === IM_END) break;
      }
    }
    const mean = (xs: number[]) => xs.reduce((u, v) => u + v, 0) / Math.max(1, xs.length);
    rows.push([name, String(held.length), us(mean(free)), us(mean(held)), `${(mean(free) / mean(held)).toFixed(2)}×`]);
  }
  console.log(`\n## Sampling per token (CPU time), ${VOCAB_SIZE} random logits, temperature 1, ${WALKS} walks per format (masks warm after the first)\n`);
  console.log(table(['format', 'tokens', 'unconstrained', 'with the format (+ accept)', 'ratio'], rows));
}

/** Part 2: decode tokens/s with a format vs without, C streams. */
async function decodeRatio(vocab: VocabularyBytes): Promise<void> {
  const name = `${SHAPE}-shape-random-f32`;
  const gguf = path.join(BENCH_OUT, 'gguf', `${name}.gguf`);
  if (!fs.existsSync(gguf)) {
    fs.mkdirSync(path.dirname(gguf), { recursive: true });
    log(`writing ${gguf} (seeded random weights)`);
    await writeLlamaGguf(gguf, syntheticCheckpoint(SHAPE, 135), { quant: 'f32', name });
  }
  const dir = await modelPackage(gguf, name, log);
  const engine = await Engine.start({ modelDir: dir, provider: 'cpu', threads: THREADS, prefillChunk: 256 });
  // The structured vocabulary is Qwen3's, padded to this model's logits (a shape with fewer logits takes its first ones).
  const n = engine.info.vocabSize;
  engine.useVocabulary(() => ({ bytes: vocab.bytes, offsets: n <= VOCAB_SIZE ? vocab.offsets.slice(0, n + 1) : Uint32Array.from({ length: n + 1 }, (_, i) => vocab.offsets[Math.min(i, VOCAB_SIZE)]) }));
  const params = (seed: number, stop: number[]): SamplingParams => ({
    temperature: 1, topP: 1, topK: 0, seed, presencePenalty: 0, frequencyPenalty: 0, maxTokens: DECODE, stopTokenIds: stop, topLogprobs: -1,
  });
  const rnd = mulberry32(7);
  const prompt = () => [1, ...Array.from({ length: 15 }, () => 2 + Math.floor(rnd() * (Math.min(n, 50_000) - 2)))];
  /**
   * C streams at once: aggregate decode tokens/s (tokens after each stream's first, over the first
   * first token to the last token), and tokens per CPU second of the whole process (engine worker
   * and ONNX Runtime threads included), which other load on a shared machine does not distort.
   */
  const run = (c: number, format: ResponseFormatSpec | null, lengths?: number[]): Promise<{ tps: number; cpuTps: number; lengths: number[] }> =>
    new Promise((resolve, reject) => {
      const got: number[] = new Array<number>(c).fill(0);
      let first = Infinity;
      let last = 0;
      let tokens = 0;
      let all = 0;
      let open = c;
      const cpu = process.cpuUsage();
      for (let i = 0; i < c; i++) {
        let seen = 0;
        engine.submit(prompt(), { ...params(i + 1, format ? [IM_END] : []), ...(lengths ? { maxTokens: Math.max(1, lengths[i]) } : {}) }, {
          onEvent(ev) {
            const now = performance.now();
            if (ev.token >= 0) {
              all++;
              got[i]++;
              if (seen++ === 0) first = Math.min(first, now);
              else tokens++;
              last = now;
            }
            if (ev.finish && --open === 0) {
              const d = process.cpuUsage(cpu);
              resolve({ tps: tokens / ((last - first) / 1000), cpuTps: all / ((d.user + d.system) / 1e6), lengths: got });
            }
          },
          onError: (m) => reject(new Error(m)),
        }, null, null, format);
      }
    });
  const rows: string[][] = [];
  await run(1, null); // warm-up: sessions, allocations
  for (const c of CONCURRENCY) {
    await run(c, null); // the pool's growth to C rows
    const base = await run(c, null);
    const row = [String(c), `${base.tps.toFixed(1)} / ${base.cpuTps.toFixed(1)}`];
    for (const name of Object.keys(SCHEMAS)) {
      const format = formatOf(name);
      await run(c, format); // first contact: cold masks of the states this schema reaches
      const r = await run(c, format);
      // Unconstrained again, each stream as long as its constrained run was: a format's streams end
      // when their value does, and a batch that thins out decodes fewer tokens/s whatever the mask.
      const m = await run(c, null, r.lengths);
      row.push(`${r.tps.toFixed(1)} / ${r.cpuTps.toFixed(1)} (${(r.tps / m.tps).toFixed(2)}× / ${(r.cpuTps / m.cpuTps).toFixed(2)}×)`);
    }
    rows.push(row);
    log(`C=${c} done`);
  }
  await engine.close();
  console.log(
    `\n## Decode, ${SHAPES[SHAPE].label} (${n} logits), ${THREADS} thread(s), temperature 1, ${DECODE} tokens per stream at most ` +
      `(a format's stream ends once its value is complete); second run of each schema (warm masks). Each cell: wall tokens/s / tokens per CPU second ` +
      `(ratios to an unconstrained run right after it whose streams stop at the same lengths)\n`,
  );
  console.log(table(['streams', 'unconstrained', ...Object.keys(SCHEMAS)], rows));
}

const vocab = qwenVocabulary();
maskCost(vocab);
samplingCost(vocab);
if (!values['skip-engine']) await decodeRatio(vocab);
