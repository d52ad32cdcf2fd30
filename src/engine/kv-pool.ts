import * as ort from 'onnxruntime-node';
import { TensorNames } from '../model/tensor-names.js';

export interface KvGeometry {
  layers: number;
  kvHeads: number;
  /** The fused body's head dim (padded to a multiple of 16). */
  headDim: number;
}

/**
 * The base's attention cache for many sequences, in the layout the pooled body reads in place: per
 * layer, one key and one value buffer [slots, kv_heads, capacity, head_dim]. A sequence owns a
 * slot; its positions 0..length-1 are valid. Rows run together must be adjacent slots (a batch is a
 * contiguous sub-array fed as the past), so whoever owns the slot order keeps the rows it batches at
 * the front and moves slots instead of gathering them.
 *
 * ONNX Runtime only reads these buffers (graph inputs are not copied); each step's new keys and
 * values come back as small outputs and are appended here, a few hundred bytes per row and layer.
 * Whole-slot copies happen only when a slot moves (a sequence ends or finishes its prefill) or the
 * pool grows.
 */
export class KvPool {
  private keys: Float32Array[] = [];
  private values: Float32Array[] = [];
  private slotCount = 0;
  /** Slots the buffers have room for (≥ slotCount): slots up to it are added without a copy. */
  private reserved = 0;
  private cap = 0;
  /** Valid positions per slot. */
  private lengths = new Int32Array(0);
  /** Zeros that bindEmpty feeds (never written: ONNX Runtime only reads inputs). */
  private empty = new Float32Array(0);

  constructor(readonly geometry: KvGeometry) {}

  get slots(): number {
    return this.slotCount;
  }

  get capacity(): number {
    return this.cap;
  }

  /** Bytes one slot-position costs (every layer's key and value). */
  get bytesPerPosition(): number {
    const g = this.geometry;
    return g.layers * 2 * g.kvHeads * g.headDim * 4;
  }

  get bytes(): number {
    return this.slotCount * this.cap * this.bytesPerPosition;
  }

  length(slot: number): number {
    return this.lengths[slot];
  }

  setLength(slot: number, length: number): void {
    this.lengths[slot] = length;
  }

  /**
   * Grows to at least `slots` slots of at least `capacity` positions, keeping every slot's valid
   * positions. Never shrinks: `release()` does, when the pool is empty.
   *
   * When it must reallocate it makes room for `reserve` slots: a slot is [kv_heads, capacity,
   * head_dim] and slots are laid end to end, so at a fixed capacity more slots are only more
   * buffer, and a burst of arrivals then costs one allocation instead of a copy of the pool per
   * arrival. The room is zero-filled lazily by the OS (untouched pages take no memory), and only
   * `slots` count in `bytes`.
   */
  ensure(slots: number, capacity: number, reserve = slots): void {
    if (slots <= this.slotCount && capacity <= this.cap) return;
    const newSlots = Math.max(slots, this.slotCount);
    if (capacity <= this.cap && newSlots <= this.reserved) {
      const lengths = new Int32Array(newSlots);
      lengths.set(this.lengths.subarray(0, this.slotCount));
      this.lengths = lengths;
      this.slotCount = newSlots;
      return;
    }
    this.reshape(newSlots, Math.max(capacity, this.cap), Math.max(reserve, newSlots));
  }

  /**
   * Reallocates to exactly `slots` × `capacity` (with room for `reserve` slots), keeping the valid
   * positions of the first `slots` slots; shrinking below a kept slot's length is refused. If the
   * room cannot be had, it falls back to exactly `slots`.
   */
  reshape(newSlots: number, newCap: number, reserve = newSlots): void {
    for (let s = 0; s < Math.min(newSlots, this.slotCount); s++) {
      if (this.lengths[s] > newCap) throw new Error(`cannot shrink the KV pool to ${newCap} positions: slot ${s} holds ${this.lengths[s]}`);
    }
    if (reserve > newSlots) {
      try {
        this.allocate(newSlots, newCap, reserve);
        return;
      } catch {
        // Address space or memory for the room refused: the exact size may still fit.
      }
    }
    this.allocate(newSlots, newCap, newSlots);
  }

  private allocate(newSlots: number, newCap: number, reserve: number): void {
    const { kvHeads, headDim } = this.geometry;
    const size = reserve * kvHeads * newCap * headDim;
    if (newCap >= this.cap && size <= this.roomFloats) {
      this.relayout(newSlots, newCap);
      return;
    }
    // Twice the room when growing: the next regrowths then move rows within these buffers.
    this.rebuffer(newCap > this.cap ? Math.max(size, 2 * this.roomFloats) : size, newSlots, newCap);
  }

  /**
   * Makes the buffers big enough for `slots` slots of `capacity` positions without changing the
   * pool's shape, so growing to it later moves rows in place (see relayout). For a long prompt at
   * admission: the room is address space until rows reach it.
   */
  makeRoom(slots: number, capacity: number): void {
    const floats = slots * this.geometry.kvHeads * capacity * this.geometry.headDim;
    if (this.keys.length > 0 && floats > this.roomFloats) this.rebuffer(floats, this.slotCount, this.cap);
  }

  private get roomFloats(): number {
    return this.keys.length > 0 ? this.keys[0].length : 0;
  }

  /** New buffers of `room` floats holding the first slots' valid positions at the new shape. */
  private rebuffer(room: number, newSlots: number, newCap: number): void {
    const { layers, kvHeads, headDim } = this.geometry;
    const grow = (old: Float32Array | undefined): Float32Array => {
      const next = new Float32Array(room);
      if (old) this.moveRows(old, next, newSlots, newCap);
      return next;
    };
    const keys = Array.from({ length: layers }, (_, i) => grow(this.keys[i]));
    const values = Array.from({ length: layers }, (_, i) => grow(this.values[i]));
    this.keys = keys;
    this.values = values;
    this.reserved = Math.floor(room / (kvHeads * newCap * headDim));
    this.setShape(newSlots, newCap);
  }

  /**
   * Grows capacity inside the buffers the pool already has: each slot's valid positions move up
   * to their new offsets (moveRows). A fresh
   * buffer would cost more than the copy: the memory it touches is new to the process, and a
   * first touch costs a page fault per 4 KiB (100 MB: about 0.4 s on the development VM, 10× the
   * copy itself).
   */
  private relayout(newSlots: number, newCap: number): void {
    const { kvHeads, headDim } = this.geometry;
    if (newCap !== this.cap) for (const buf of [...this.keys, ...this.values]) this.moveRows(buf, buf, newSlots, newCap);
    this.reserved = Math.floor(this.roomFloats / (kvHeads * newCap * headDim));
    this.setShape(newSlots, newCap);
  }

  /**
   * Copies the first `slots` slots' valid positions from the current layout in `from` to a layout of
   * `newCap` positions per slot in `to`. Within one buffer (`to === from`, capacity growing) the runs
   * move up, last one first, so none overwrites a run still to move.
   */
  private moveRows(from: Float32Array, to: Float32Array, slots: number, newCap: number): void {
    const { kvHeads, headDim } = this.geometry;
    for (let s = Math.min(slots, this.slotCount) - 1; s >= 0; s--) {
      const n = this.lengths[s] * headDim;
      for (let h = kvHeads - 1; h >= 0; h--) {
        const src = (s * kvHeads + h) * this.cap * headDim;
        const dst = (s * kvHeads + h) * newCap * headDim;
        if (to === from) to.copyWithin(dst, src, src + n);
        else to.set(from.subarray(src, src + n), dst);
      }
    }
  }

  private setShape(newSlots: number, newCap: number): void {
    const lengths = new Int32Array(newSlots);
    lengths.set(this.lengths.subarray(0, Math.min(newSlots, this.slotCount)));
    this.lengths = lengths;
    this.slotCount = newSlots;
    this.cap = newCap;
  }

  /** Frees the buffers (the pool must hold no live sequence). */
  release(): void {
    this.keys = [];
    this.values = [];
    this.slotCount = 0;
    this.reserved = 0;
    this.cap = 0;
    this.lengths = new Int32Array(0);
  }

  /** Copies slot `from`'s valid positions into slot `to` (whose contents are dropped). */
  move(from: number, to: number): void {
    if (from === to) return;
    const n = this.lengths[from] * this.geometry.headDim;
    for (const buf of [...this.keys, ...this.values]) {
      for (let h = 0; h < this.geometry.kvHeads; h++) {
        const src = this.offset(from, h);
        buf.copyWithin(this.offset(to, h), src, src + n);
      }
    }
    this.lengths[to] = this.lengths[from];
    this.lengths[from] = 0;
  }

  /** Exchanges two slots' contents. */
  swap(a: number, b: number): void {
    if (a === b) return;
    const { headDim, kvHeads } = this.geometry;
    const n = Math.max(this.lengths[a], this.lengths[b]) * headDim;
    const tmp = new Float32Array(n);
    for (const buf of [...this.keys, ...this.values]) {
      for (let h = 0; h < kvHeads; h++) {
        const oa = this.offset(a, h);
        const ob = this.offset(b, h);
        tmp.set(buf.subarray(oa, oa + n));
        buf.copyWithin(oa, ob, ob + n);
        buf.set(tmp, ob);
      }
    }
    const la = this.lengths[a];
    this.lengths[a] = this.lengths[b];
    this.lengths[b] = la;
  }

  /** Past inputs for rows first..first+count-1: views of the pool, which the body reads in place. */
  bind(first: number, count: number): Record<string, ort.Tensor> {
    if (first + count > this.slotCount) throw new Error(`KV rows ${first}..${first + count - 1} beyond ${this.slotCount} slots`);
    const { kvHeads, headDim } = this.geometry;
    const per = kvHeads * this.cap * headDim;
    const dims = [count, kvHeads, this.cap, headDim];
    const view = (buf: Float32Array) => new ort.Tensor('float32', buf.subarray(first * per, (first + count) * per), dims);
    const feeds: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.geometry.layers; i++) {
      feeds[TensorNames.pastKey(i)] = view(this.keys[i]);
      feeds[TensorNames.pastValue(i)] = view(this.values[i]);
    }
    return feeds;
  }

  /**
   * Past inputs for one slot, copied into buffers of `capacity` positions (at least its length).
   * For a row far shorter than the pool's capacity (a prompt read beside a 2,000-token one), the
   * copy costs a few microseconds per position; reading the masked positions in place costs every
   * new token a dot product with each of them, in every layer.
   */
  bindCompact(slot: number, capacity: number): Record<string, ort.Tensor> {
    const n = this.lengths[slot];
    if (capacity < n) throw new Error(`KV slot ${slot} holds ${n} positions; cannot bind ${capacity}`);
    const { layers, kvHeads, headDim } = this.geometry;
    const feeds: Record<string, ort.Tensor> = {};
    const dims = [1, kvHeads, capacity, headDim];
    for (let l = 0; l < layers; l++) {
      for (const [buf, name] of [[this.keys[l], TensorNames.pastKey(l)], [this.values[l], TensorNames.pastValue(l)]] as const) {
        const out = new Float32Array(kvHeads * capacity * headDim);
        for (let h = 0; h < kvHeads; h++) {
          const from = this.offset(slot, h);
          out.set(buf.subarray(from, from + n * headDim), h * capacity * headDim);
        }
        feeds[name] = new ort.Tensor('float32', out, dims);
      }
    }
    return feeds;
  }

  /**
   * Past inputs for `count` rows that hold nothing yet: one masked position each instead of the
   * pool's capacity. The body reads every row up to the capacity, so a fresh prompt's first chunk
   * bound to a pool grown by a 2,000-token row would read 2,000 masked positions per token; masked
   * positions add exact zeros either way, so the result is the same.
   */
  bindEmpty(count: number): Record<string, ort.Tensor> {
    const { kvHeads, headDim } = this.geometry;
    if (this.empty.length < count * kvHeads * headDim) this.empty = new Float32Array(count * kvHeads * headDim);
    const past = new ort.Tensor('float32', this.empty.subarray(0, count * kvHeads * headDim), [count, kvHeads, 1, headDim]);
    const feeds: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.geometry.layers; i++) {
      feeds[TensorNames.pastKey(i)] = past;
      feeds[TensorNames.pastValue(i)] = past;
    }
    return feeds;
  }

  /**
   * Appends one call's keys and values for `layer`: `newKeys`/`newValues` are [count, kv_heads, n,
   * head_dim] for rows first..first+count-1, written at each row's current length. Lengths are
   * advanced separately (`setLength`), once every layer is written.
   */
  append(layer: number, first: number, count: number, n: number, newKeys: Float32Array, newValues: Float32Array): void {
    const { kvHeads, headDim } = this.geometry;
    const chunk = n * headDim;
    for (let r = 0; r < count; r++) {
      const at = this.lengths[first + r] * headDim;
      if (this.lengths[first + r] + n > this.cap) throw new Error(`KV slot ${first + r} holds ${this.cap} positions; ${this.lengths[first + r] + n} needed`);
      for (let h = 0; h < kvHeads; h++) {
        const from = (r * kvHeads + h) * chunk;
        const to = this.offset(first + r, h) + at;
        this.keys[layer].set(newKeys.subarray(from, from + chunk), to);
        this.values[layer].set(newValues.subarray(from, from + chunk), to);
      }
    }
  }

  /** Floats `readPositions` fills for `n` positions: every layer's keys and values. */
  positionFloats(n: number): number {
    return this.geometry.layers * 2 * this.geometry.kvHeads * n * this.geometry.headDim;
  }

  /**
   * Copies positions start..start+n-1 of `slot` out, laid out [layer][key, value][kv_head][n][head_dim]
   * (a prefix-cache block).
   */
  readPositions(slot: number, start: number, n: number): Float32Array {
    if (start + n > this.lengths[slot]) throw new Error(`KV slot ${slot} holds ${this.lengths[slot]} positions; ${start + n} read`);
    // Uninitialised: the runs below write every float (zero-filling it first measured as a cost).
    const floats = this.positionFloats(n);
    const out = new Float32Array(Buffer.allocUnsafeSlow(floats * 4).buffer, 0, floats);
    this.eachRun(slot, start, n, (buf, at, o) => out.set(buf.subarray(at, at + n * this.geometry.headDim), o));
    return out;
  }

  /** Writes what readPositions produced at positions start..start+n-1 of `slot` (lengths are the caller's). */
  writePositions(slot: number, start: number, n: number, data: Float32Array): void {
    if (start + n > this.cap) throw new Error(`KV slot ${slot} holds ${this.cap} positions; ${start + n} written`);
    this.eachRun(slot, start, n, (buf, at, o) => buf.set(data.subarray(o, o + n * this.geometry.headDim), at));
  }

  /** Visits each (layer, key/value, head) run of `n` positions: its pool buffer, offset there, and offset in a block. */
  private eachRun(slot: number, start: number, n: number, visit: (buf: Float32Array, at: number, blockOffset: number) => void): void {
    const { layers, kvHeads, headDim } = this.geometry;
    let o = 0;
    for (let l = 0; l < layers; l++) {
      for (const buf of [this.keys[l], this.values[l]]) {
        for (let h = 0; h < kvHeads; h++) {
          visit(buf, this.offset(slot, h) + start * headDim, o);
          o += n * headDim;
        }
      }
    }
  }

  private offset(slot: number, head: number): number {
    return (slot * this.geometry.kvHeads + head) * this.cap * this.geometry.headDim;
  }
}
