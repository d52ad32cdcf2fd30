import type { CaptureResult } from '../engine/capture.js';
import type { HarvestedSequence, HarvestPolicy } from './types.js';

/**
 * Applies the policy's `keep` (prompt rows, completion rows or both) to an engine capture and labels
 * it with the request it came from. Returns null when nothing is left to keep.
 */
export function toHarvestedSequence(
  capture: CaptureResult,
  keep: HarvestPolicy['keep'],
  hiddenSize: number,
  label: Pick<HarvestedSequence, 'requestId' | 'tenantId' | 'carryOnId' | 'baseFingerprint'>,
): HarvestedSequence | null {
  const rows = capture.tokenIds.length;
  const keepRow = (i: number) => keep === 'both' || (keep === 'completion') === (capture.isCompletion[i] === 1);
  const kept: number[] = [];
  for (let i = 0; i < rows; i++) if (keepRow(i)) kept.push(i);
  if (kept.length === 0) return null;
  const all = kept.length === rows;
  const pick = <T extends Int32Array | Uint8Array>(src: T, make: (n: number) => T): T => {
    if (all) return src;
    const out = make(kept.length);
    kept.forEach((r, j) => (out[j] = src[r]));
    return out;
  };
  const hidden = capture.hidden.map((h) => {
    if (all) return h;
    const out = new Float32Array(kept.length * hiddenSize);
    kept.forEach((r, j) => out.set(h.subarray(r * hiddenSize, (r + 1) * hiddenSize), j * hiddenSize));
    return out;
  });
  return {
    ...label,
    layers: capture.layers,
    hidden,
    hiddenSize,
    tokenIds: pick(capture.tokenIds, (n) => new Int32Array(n)),
    targetIds: pick(capture.targetIds, (n) => new Int32Array(n)),
    isCompletion: pick(capture.isCompletion, (n) => new Uint8Array(n)),
    finishedAt: Date.now(),
  };
}
