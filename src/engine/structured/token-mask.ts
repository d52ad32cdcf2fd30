import { STRING_MODES } from './string-bytes.js';
import { advance, advanceAll, Automaton, canEnd, dedupe, stateKey, stringPosition, type Grammar, type Stack } from './grammar.js';
import { buildStringTable, fillBody, openExits, type StringTable } from './string-tables.js';

/**
 * Structured outputs, the token side: which vocabulary tokens an automaton state allows. A state's
 * set is found by walking a trie of the tokens' bytes once, stepping the automaton along each edge
 * (shared prefixes are stepped once), and is then cached by the state's key: the same schema
 * position in any sequence, any request, reuses it. Sampling first tries the model's own pick and
 * builds a mask only when that pick is refused (see Sampler), so most tokens cost a few byte steps.
 */

/** The tokens' bytes, concatenated; token i is bytes[offsets[i] .. offsets[i + 1]). Empty: never generated as text (special tokens). */
export interface VocabularyBytes {
  bytes: Uint8Array;
  offsets: Uint32Array;
}

/**
 * The vocabulary as a byte trie in flat arrays (first child / next sibling), built from the tokens
 * sorted by their bytes in one pass: a 152k vocabulary is ~400k nodes, built without a map per node.
 */
export class VocabTrie {
  /** Node n's edge byte (from its parent), first child and next sibling (−1: none); node 0 is the root. */
  readonly edgeByte: Uint8Array;
  readonly firstChild: Int32Array;
  readonly nextSibling: Int32Array;
  /** Tokens whose bytes end at node n: sortedIds[tokenFirst[n] .. + tokenCount[n]). */
  readonly tokenFirst: Uint32Array;
  readonly tokenCount: Uint16Array;
  readonly sortedIds: Uint32Array;
  /** Per string mode: the tokens that stay inside a string, and the nodes just after its closing quote. */
  private readonly strings = new Map<number, StringTable>();
  readonly size: number;
  readonly nodes: number;

  constructor(readonly vocab: VocabularyBytes) {
    this.size = vocab.offsets.length - 1;
    const bytesOf = (id: number) => vocab.bytes.subarray(vocab.offsets[id], vocab.offsets[id + 1]);
    const ids: number[] = [];
    for (let id = 0; id < this.size; id++) if (vocab.offsets[id + 1] > vocab.offsets[id]) ids.push(id);
    const views: Uint8Array[] = [];
    for (let id = 0; id < this.size; id++) views.push(bytesOf(id));
    ids.sort((a, b) => Buffer.compare(views[a], views[b]) || a - b);
    const cap = vocab.bytes.length + 1;
    this.edgeByte = new Uint8Array(cap);
    this.firstChild = new Int32Array(cap).fill(-1);
    this.nextSibling = new Int32Array(cap).fill(-1);
    this.tokenFirst = new Uint32Array(cap);
    this.tokenCount = new Uint16Array(cap);
    this.sortedIds = Uint32Array.from(ids);
    const lastChild = new Int32Array(cap).fill(-1);
    const path = [0];
    let nodes = 1;
    let prev: Uint8Array = new Uint8Array(0);
    ids.forEach((id, k) => {
      const b = views[id];
      let lcp = 0;
      while (lcp < b.length && lcp < prev.length && b[lcp] === prev[lcp]) lcp++;
      // Sorted order: a new node is always its parent's last (greatest) child so far.
      for (let i = lcp; i < b.length; i++) {
        const n = nodes++;
        const parent = path[i];
        this.edgeByte[n] = b[i];
        if (lastChild[parent] < 0) this.firstChild[parent] = n;
        else this.nextSibling[lastChild[parent]] = n;
        lastChild[parent] = n;
        path[i + 1] = n;
      }
      const end = path[b.length];
      if (this.tokenCount[end] === 0) this.tokenFirst[end] = k;
      this.tokenCount[end]++;
      prev = b;
    });
    this.nodes = nodes;
  }

  tokenBytes(id: number): Uint8Array {
    return this.vocab.bytes.subarray(this.vocab.offsets[id], this.vocab.offsets[id + 1]);
  }

  /** Sets in `mask` every token whose bytes `states` accept in full; returns how many tokens the mask holds. */
  fill(states: Stack[], mask: Uint32Array): number {
    const inside = states.length === 1 ? stringPosition(states[0]) : null;
    if (inside === null) this.walk(0, states, mask, 0);
    else {
      // Inside a string: the tokens that stay in it are the same wherever the string is (less
      // those too long for a bounded one), so only the tokens that close it, and the subtrees
      // after, are walked with what follows the string.
      const table = this.stringTable(inside.mode);
      fillBody(table, inside, mask);
      const rest = [states[0]!.next];
      for (const e of openExits(table, inside)) {
        this.allow(e, mask);
        this.walk(e, rest, mask, 0);
      }
    }
    let count = 0;
    for (const w of mask) count += popcount(w);
    return count;
  }

  /** Builds the string tables up front (the vocabulary's arrival), so no request's first string pays for them. */
  prepare(): void {
    for (let mode = 0; mode < STRING_MODES; mode++) this.stringTable(mode);
  }

  private stringTable(mode: number): StringTable {
    let t = this.strings.get(mode);
    if (!t) this.strings.set(mode, (t = buildStringTable(this, mode)));
    return t;
  }

  /** Sets the tokens whose bytes end at trie node `node`. */
  private allow(node: number, mask: Uint32Array): void {
    for (let t = this.tokenFirst[node], end = t + this.tokenCount[node]; t < end; t++) {
      const id = this.sortedIds[t];
      mask[id >>> 5] |= 1 << (id & 31);
    }
  }

  private readonly outs: Stack[][] = [];

  /** Depth-first below `node`. */
  private walk(node: number, cur: Stack[], mask: Uint32Array, depth: number): void {
    const out = (this.outs[depth] ??= []);
    for (let c = this.firstChild[node]; c >= 0; c = this.nextSibling[c]) {
      out.length = 0;
      const b = this.edgeByte[c];
      for (const s of cur) advance(s, b, out);
      if (out.length === 0) continue;
      this.allow(c, mask);
      // `out` is this depth's array, read-only below: the child writes the next depth's.
      if (this.firstChild[c] >= 0) this.walk(c, out.length > 1 ? dedupe(out) : out, mask, depth + 1);
    }
  }
}

function popcount(w: number): number {
  w -= (w >>> 1) & 0x55555555;
  w = (w & 0x33333333) + ((w >>> 2) & 0x33333333);
  return (((w + (w >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/**
 * A state's allowed tokens: the bitmask, how many, and, when one side is small, that side's ids
 * (`allowed` says which side), so applying it touches those entries rather than the whole vocabulary.
 */
export interface TokenMask {
  mask: Uint32Array;
  count: number;
  ids: Uint32Array | null;
  allowed: boolean;
}

/** Cached masks, least recently used first out, bounded by bytes (a mask is vocab/8 bytes, plus its id list). */
export class MaskCache {
  private readonly map = new Map<string, TokenMask>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly maxBytes = 64 * 1024 ** 2) {}

  get(key: string): TokenMask | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
      this.hits++;
    } else this.misses++;
    return v;
  }

  set(key: string, v: TokenMask): void {
    const size = (m: TokenMask) => m.mask.byteLength + (m.ids?.byteLength ?? 0);
    this.map.set(key, v);
    this.bytes += size(v);
    for (const [k, old] of this.map) {
      if (this.bytes <= this.maxBytes || k === key) break;
      this.map.delete(k);
      this.bytes -= size(old);
    }
  }
}

/** A response format as the engine takes it: the grammar, and a key naming it (the schema's hash) for caches. */
export interface ResponseFormatSpec {
  key: string;
  grammar: Grammar;
}

/**
 * Everything the worker keeps for structured outputs: the vocabulary trie, automata by format key
 * (least recently used out), and the mask cache they share.
 */
export class StructuredOutputs {
  private readonly automata = new Map<string, Automaton>();
  readonly masks: MaskCache;

  constructor(
    readonly trie: VocabTrie,
    maxMaskBytes?: number,
    private readonly maxAutomata = 256,
  ) {
    this.masks = new MaskCache(maxMaskBytes);
    trie.prepare();
  }

  /** A new sequence's constraint; `stopTokenIds` may end it once the value is complete. */
  constrain(format: ResponseFormatSpec, stopTokenIds: number[]): TokenConstraint {
    let a = this.automata.get(format.key);
    if (a) this.automata.delete(format.key);
    else a = new Automaton(format.grammar);
    this.automata.set(format.key, a);
    if (this.automata.size > this.maxAutomata) this.automata.delete(this.automata.keys().next().value!);
    return new TokenConstraint(this, format.key, a.start, stopTokenIds);
  }
}

/** One sequence's position in its format: what the next token may be, advanced with each token taken. */
export class TokenConstraint {
  private states: Stack[];
  private key: string;

  constructor(
    private readonly outputs: StructuredOutputs,
    private readonly formatKey: string,
    start: Stack[],
    private readonly stopTokenIds: number[],
  ) {
    this.states = start;
    this.key = stateKey(start);
  }

  /** The value is complete and nothing can extend it: the sequence ends here. */
  get finished(): boolean {
    return this.states.every((s) => s === null);
  }

  /** Whether the value is complete (a stop token may end the output now). */
  get complete(): boolean {
    return this.states.some(canEnd);
  }

  allows(token: number): boolean {
    if (this.stopTokenIds.includes(token)) return this.complete;
    if (token >= this.outputs.trie.size) return false;
    const bytes = this.outputs.trie.tokenBytes(token);
    return bytes.length > 0 && advanceAll(this.states, bytes).length > 0;
  }

  /** The allowed tokens (cached by state). */
  mask(): TokenMask {
    const cacheKey = `${this.formatKey}\n${this.key}`;
    const cached = this.outputs.masks.get(cacheKey);
    if (cached) return cached;
    const trie = this.outputs.trie;
    const mask = new Uint32Array(Math.ceil(trie.size / 32));
    let count = trie.fill(this.states, mask);
    if (this.complete) {
      for (const id of this.stopTokenIds) {
        if (id >= trie.size) continue;
        if (!(mask[id >>> 5] & (1 << (id & 31)))) count++;
        mask[id >>> 5] |= 1 << (id & 31);
      }
    }
    const v: TokenMask = { mask, count, ids: null, allowed: count * 2 < trie.size };
    // The smaller side's ids, when small enough to be worth their bytes (a sixteenth of the vocabulary).
    const side = v.allowed ? count : trie.size - count;
    if (side <= trie.size / 16) {
      const ids = new Uint32Array(side);
      for (let i = 0, k = 0; i < trie.size; i++) if (((mask[i >>> 5] & (1 << (i & 31))) !== 0) === v.allowed) ids[k++] = i;
      v.ids = ids;
    }
    this.outputs.masks.set(cacheKey, v);
    return v;
  }

  /** Sets every refused token's logit to −∞; returns how many tokens remain. */
  restrict(logits: Float32Array): number {
    const { mask, count, ids, allowed } = this.mask();
    const n = logits.length;
    if (ids && allowed) {
      // Few allowed: keep their logits, clear everything, put them back.
      const keep = Float32Array.from(ids, (id) => logits[id]);
      logits.fill(-Infinity);
      ids.forEach((id, k) => (logits[id] = keep[k]));
    } else if (ids) {
      for (const id of ids) logits[id] = -Infinity; // few refused (inside a string)
    } else {
      // A word at a time: runs of 32 allowed or refused skip the per-token test.
      for (let w = 0, base = 0; base < n; w++, base += 32) {
        const m = w < mask.length ? mask[w] : 0;
        if (m === 0xffffffff) continue;
        if (m === 0) logits.fill(-Infinity, base, Math.min(n, base + 32));
        else for (let i = base, end = Math.min(n, base + 32); i < end; i++) if (!(m & (1 << (i - base)))) logits[i] = -Infinity;
      }
    }
    // Logits past the vocabulary's tokens (padding) are never allowed.
    if (n > this.outputs.trie.size) logits.fill(-Infinity, this.outputs.trie.size);
    return count;
  }

  allowedIds(): Uint32Array | null {
    const m = this.mask();
    return m.ids && m.allowed ? m.ids : null;
  }

  /** Takes a token the constraint allowed (a stop token ends the sequence and changes nothing). */
  accept(token: number): void {
    if (this.stopTokenIds.includes(token)) return;
    const next = advanceAll(this.states, this.outputs.trie.tokenBytes(token));
    if (next.length === 0) throw new Error(`token ${token} is not allowed by the response format here`);
    this.states = next;
    this.key = stateKey(next);
  }
}
