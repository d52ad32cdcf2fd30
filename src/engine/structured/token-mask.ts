import { advance, advanceAll, Automaton, canEnd, dedupe, stateKey, type Grammar, type Stack } from './grammar.js';

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

/** The vocabulary as a byte trie, flattened into arrays (a 152k vocabulary is ~400k nodes). */
export class VocabTrie {
  /** Children of node n: childByte/childNode[childStart[n] .. childStart[n + 1]). */
  private readonly childStart: Uint32Array;
  private readonly childByte: Uint8Array;
  private readonly childNode: Uint32Array;
  /** Tokens whose bytes end at node n: tokenIds[tokenStart[n] .. tokenStart[n + 1]). */
  private readonly tokenStart: Uint32Array;
  private readonly tokenIds: Uint32Array;
  readonly size: number;

  constructor(readonly vocab: VocabularyBytes) {
    this.size = vocab.offsets.length - 1;
    // Build with maps, then flatten (children in byte order) for a walk without allocation.
    const kids: Array<Map<number, number>> = [new Map<number, number>()];
    const ends: number[][] = [[]];
    for (let id = 0; id < this.size; id++) {
      const from = vocab.offsets[id];
      const to = vocab.offsets[id + 1];
      if (to === from) continue;
      let n = 0;
      for (let i = from; i < to; i++) {
        const b = vocab.bytes[i];
        let c = kids[n].get(b);
        if (c === undefined) {
          c = kids.length;
          kids[n].set(b, c);
          kids.push(new Map<number, number>());
          ends.push([]);
        }
        n = c;
      }
      ends[n].push(id);
    }
    const nodes = kids.length;
    this.childStart = new Uint32Array(nodes + 1);
    this.tokenStart = new Uint32Array(nodes + 1);
    let edges = 0;
    let toks = 0;
    for (let n = 0; n < nodes; n++) {
      edges += kids[n].size;
      toks += ends[n].length;
    }
    this.childByte = new Uint8Array(edges);
    this.childNode = new Uint32Array(edges);
    this.tokenIds = new Uint32Array(toks);
    let e = 0;
    let t = 0;
    for (let n = 0; n < nodes; n++) {
      this.childStart[n] = e;
      for (const [b, c] of [...kids[n]].sort((x, y) => x[0] - y[0])) {
        this.childByte[e] = b;
        this.childNode[e++] = c;
      }
      this.tokenStart[n] = t;
      for (const id of ends[n]) this.tokenIds[t++] = id;
    }
    this.childStart[nodes] = e;
    this.tokenStart[nodes] = t;
  }

  tokenBytes(id: number): Uint8Array {
    return this.vocab.bytes.subarray(this.vocab.offsets[id], this.vocab.offsets[id + 1]);
  }

  /** Sets in `mask` every token whose bytes `states` accept in full; returns how many. */
  fill(states: Stack[], mask: Uint32Array): number {
    let count = 0;
    const outs: Stack[][] = [];
    const walk = (node: number, cur: Stack[], depth: number): void => {
      const out = (outs[depth] ??= []);
      for (let e = this.childStart[node]; e < this.childStart[node + 1]; e++) {
        out.length = 0;
        const b = this.childByte[e];
        for (const s of cur) advance(s, b, out);
        if (out.length === 0) continue;
        const child = this.childNode[e];
        for (let t = this.tokenStart[child]; t < this.tokenStart[child + 1]; t++) {
          const id = this.tokenIds[t];
          mask[id >>> 5] |= 1 << (id & 31);
          count++;
        }
        if (this.childStart[child + 1] > this.childStart[child]) walk(child, out.length > 1 ? dedupe(out) : out, depth + 1); // `out` is this depth's: the child writes the next one's
      }
    };
    walk(0, states, 0);
    return count;
  }
}

/** Cached masks, least recently used first out, bounded by bytes (each mask is vocab/8 bytes). */
export class MaskCache {
  private readonly map = new Map<string, { mask: Uint32Array; count: number }>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly maxBytes = 64 * 1024 ** 2) {}

  get(key: string): { mask: Uint32Array; count: number } | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
      this.hits++;
    } else this.misses++;
    return v;
  }

  set(key: string, v: { mask: Uint32Array; count: number }): void {
    this.map.set(key, v);
    this.bytes += v.mask.byteLength;
    for (const [k, old] of this.map) {
      if (this.bytes <= this.maxBytes || k === key) break;
      this.map.delete(k);
      this.bytes -= old.mask.byteLength;
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
    const bytes = this.outputs.trie.tokenBytes(token);
    return bytes.length > 0 && advanceAll(this.states, bytes).length > 0;
  }

  /** The allowed tokens as a bitmask (cached by state), and how many there are. */
  mask(): { mask: Uint32Array; count: number } {
    const cacheKey = `${this.formatKey}\n${this.key}`;
    const cached = this.outputs.masks.get(cacheKey);
    if (cached) return cached;
    const trie = this.outputs.trie;
    const mask = new Uint32Array(Math.ceil(trie.size / 32));
    let count = trie.fill(this.states, mask);
    if (this.complete) {
      for (const id of this.stopTokenIds) {
        if (id < trie.size && !(mask[id >>> 5] & (1 << (id & 31)))) count++;
        mask[id >>> 5] |= 1 << (id & 31);
      }
    }
    const v = { mask, count };
    this.outputs.masks.set(cacheKey, v);
    return v;
  }

  /** Sets every refused token's logit to −∞; returns how many tokens remain. */
  restrict(logits: Float32Array): number {
    const { mask, count } = this.mask();
    for (let i = 0; i < logits.length; i++) if (!(mask[i >>> 5] & (1 << (i & 31)))) logits[i] = -Infinity;
    return count;
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
