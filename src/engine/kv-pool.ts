import * as ort from 'onnxruntime-node';
import { TensorNames } from '../model/tensor-names.js';

export interface KvGeometry {
  layers: number;
  kvHeads: number;
  /** The fused body's head dim (padded to a multiple of 16). */
  headDim: number;
}

/**
 * The base's attention cache for many sequences, in the layout the fused body reads and writes in
 * place: per layer, one key and one value buffer [slots, kv_heads, capacity, head_dim]. A sequence
 * owns a slot; its positions 0..length-1 are valid. Rows run together must be adjacent slots (a
 * batch is a contiguous sub-array, fed as past and bound as present), so whoever owns the slot
 * order keeps the rows it batches at the front and moves slots instead of gathering them.
 *
 * No JavaScript copy happens per step: ONNX Runtime writes each step's keys into these buffers.
 * JavaScript copies only when a slot moves (a sequence ends or finishes its prefill) or the pool
 * grows. (onnxruntime-node 1.30 cannot alias a CPU output to an input, so ORT itself still writes
 * the bound rows' whole buffers once per step: keep the capacity tight.)
 */
export class KvPool {
  private keys: Float32Array[] = [];
  private values: Float32Array[] = [];
  private slotCount = 0;
  private cap = 0;
  /** Valid positions per slot. */
  private lengths = new Int32Array(0);

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
   */
  ensure(slots: number, capacity: number): void {
    if (slots <= this.slotCount && capacity <= this.cap) return;
    const newSlots = Math.max(slots, this.slotCount);
    const newCap = Math.max(capacity, this.cap);
    const { layers, kvHeads, headDim } = this.geometry;
    const size = newSlots * kvHeads * newCap * headDim;
    const grow = (old: Float32Array | undefined): Float32Array => {
      const next = new Float32Array(size);
      if (old) {
        for (let s = 0; s < this.slotCount; s++) {
          const n = this.lengths[s] * headDim;
          for (let h = 0; h < kvHeads; h++) {
            const from = (s * kvHeads + h) * this.cap * headDim;
            next.set(old.subarray(from, from + n), (s * kvHeads + h) * newCap * headDim);
          }
        }
      }
      return next;
    };
    this.keys = Array.from({ length: layers }, (_, i) => grow(this.keys[i]));
    this.values = Array.from({ length: layers }, (_, i) => grow(this.values[i]));
    const lengths = new Int32Array(newSlots);
    lengths.set(this.lengths);
    this.lengths = lengths;
    this.slotCount = newSlots;
    this.cap = newCap;
  }

  /** Frees the buffers (the pool must hold no live sequence). */
  release(): void {
    this.keys = [];
    this.values = [];
    this.slotCount = 0;
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

  /**
   * Past inputs and present outputs for rows first..first+count-1: the same memory, so the body
   * appends in place. Returned as feeds and fetches for `session.run`.
   */
  bind(first: number, count: number): { feeds: Record<string, ort.Tensor>; fetches: Record<string, ort.Tensor> } {
    if (first + count > this.slotCount) throw new Error(`KV rows ${first}..${first + count - 1} beyond ${this.slotCount} slots`);
    const { kvHeads, headDim } = this.geometry;
    const per = kvHeads * this.cap * headDim;
    const dims = [count, kvHeads, this.cap, headDim];
    const view = (buf: Float32Array) => new ort.Tensor('float32', buf.subarray(first * per, (first + count) * per), dims);
    const feeds: Record<string, ort.Tensor> = {};
    const fetches: Record<string, ort.Tensor> = {};
    for (let i = 0; i < this.geometry.layers; i++) {
      feeds[TensorNames.pastKey(i)] = view(this.keys[i]);
      feeds[TensorNames.pastValue(i)] = view(this.values[i]);
      fetches[TensorNames.presentKey(i)] = view(this.keys[i]);
      fetches[TensorNames.presentValue(i)] = view(this.values[i]);
    }
    return { feeds, fetches };
  }

  private offset(slot: number, head: number): number {
    return (slot * this.geometry.kvHeads + head) * this.cap * this.geometry.headDim;
  }
}
