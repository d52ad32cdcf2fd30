import type { VocabTrie } from './token-mask.js';
import { CLOSED, completesHigh, entersEscape, lengthStep, REFUSED, stringStep } from './string-bytes.js';

/** The vocabulary trie's arrays the walk reads. */
type TrieArrays = Pick<VocabTrie, 'size' | 'edgeByte' | 'firstChild' | 'nextSibling' | 'tokenFirst' | 'tokenCount' | 'sortedIds'>;

/**
 * Per string mode, what the vocabulary does inside a string, found by one walk of the trie: the
 * tokens that stay inside it, and the trie nodes right after a closing quote (where what follows
 * the string takes over). Both carry how much room they need, so that one table serves every
 * string of every schema, bounded (minLength/maxLength) or not:
 *  - `need`: a token (or the bytes before a closing quote) is taken with `r` code points of room
 *    left iff need ≤ r (it starts characters, or escapes, up to that many);
 *  - `exitLen`: the code points written before the closing quote (the string may close only once
 *    it has minLength).
 */
export interface StringTable {
  /** Every token that stays inside the string, whatever its length. */
  body: Uint32Array;
  bodyIds: Uint32Array;
  need: Uint16Array;
  /** The largest `need` of a body token: with at least this much room, `body` applies whole. */
  maxNeed: number;
  exits: number[];
  exitLen: number[];
  exitNeed: number[];
}

/** Where a string stands: its byte machine's mode, code points so far, and its bounds (max −1: none). */
export interface StringPosition {
  mode: number;
  count: number;
  min: number;
  max: number;
}

export function buildStringTable(trie: TrieArrays, mode: number): StringTable {
  const body = new Uint32Array(Math.ceil(trie.size / 32));
  const ids: number[] = [];
  const needs: number[] = [];
  const t = { exits: [] as number[], exitLen: [] as number[], exitNeed: [] as number[] };
  // Depth first, carrying what the bytes so far add: code points `k`, whether the last one was an
  // escaped high surrogate, and the room they need (one more than the count before the last
  // character or escape they started, as BoundedStrFrame checks it).
  const walk = (node: number, m: number, k: number, high: boolean, need: number): void => {
    for (let c = trie.firstChild[node]; c >= 0; c = trie.nextSibling[c]) {
      const next = stringStep(m, trie.edgeByte[c]);
      if (next === REFUSED) continue;
      if (next === CLOSED) {
        t.exits.push(c);
        t.exitLen.push(k);
        t.exitNeed.push(need);
        continue;
      }
      let k2 = k;
      let high2 = high;
      let need2 = need;
      const add = lengthStep(m, next, high);
      if (add >= 0) {
        if (add > 0) need2 = k + 1;
        k2 = k + add;
        high2 = false;
      } else if (!high && entersEscape(m, next)) need2 = k + 1;
      if (completesHigh(m, next)) high2 = true;
      for (let i = trie.tokenFirst[c], end = i + trie.tokenCount[c]; i < end; i++) {
        const id = trie.sortedIds[i];
        body[id >>> 5] |= 1 << (id & 31);
        ids.push(id);
        needs.push(need2);
      }
      if (trie.firstChild[c] >= 0) walk(c, next, k2, high2, need2);
    }
  };
  walk(0, mode, 0, false, 0);
  const need = Uint16Array.from(needs, (n) => Math.min(n, 0xffff));
  return { body, bodyIds: Uint32Array.from(ids), need, maxNeed: needs.reduce((a, b) => Math.max(a, b), 0), ...t };
}

/** Sets in `mask` the body tokens that fit at position `p` (all of them when the room is ample). */
export function fillBody(table: StringTable, p: StringPosition, mask: Uint32Array): void {
  const room = p.max < 0 ? Infinity : p.max - p.count;
  if (room >= table.maxNeed) {
    mask.set(table.body);
    return;
  }
  const { bodyIds, need } = table;
  for (let i = 0; i < bodyIds.length; i++) {
    if (need[i] <= room) mask[bodyIds[i] >>> 5] |= 1 << (bodyIds[i] & 31);
  }
}

/** The exits of `table` the string at `p` may take: it has reached its minimum there, and the bytes before fit. */
export function* openExits(table: StringTable, p: StringPosition): Generator<number> {
  const room = p.max < 0 ? Infinity : p.max - p.count;
  for (let i = 0; i < table.exits.length; i++) {
    if (p.count + table.exitLen[i] >= p.min && table.exitNeed[i] <= room) yield table.exits[i];
  }
}
