/**
 * One sampled sequence's capture, as the engine hands it to the harvest writer: the base's hidden
 * states for every position it ran (no extra forward pass), with the token at each position and the
 * token that followed it (the next-token target a carry-on learns).
 */
export interface HarvestedSequence {
  /** The OpenAI response id (e.g. `chatcmpl-…`) plus `#<choice index>`. */
  requestId: string;
  tenantId: string | null;
  /** The base whose hidden states these are (a tenant's shards of different bases are kept apart). */
  baseFingerprint: string;
  /** The carry-on that served the request, if any (the hidden states are the base's regardless). */
  carryOnId: string | null;
  /** Which base layers `hidden` holds, in order: 'final' = after the final norm; k = residual after block k. */
  layers: Array<'final' | number>;
  /** One [rows × hiddenSize] float32 array per layer. */
  hidden: Float32Array[];
  hiddenSize: number;
  /** Token at each row's position. */
  tokenIds: Int32Array;
  /** Token that followed each row's position (what the model should predict there). */
  targetIds: Int32Array;
  /** 1 where the target is a generated (completion) token, 0 where it is a prompt token. */
  isCompletion: Uint8Array;
  /** Unix ms when the sequence finished. */
  finishedAt: number;
}

/** What to keep of a sampled sequence. */
export interface HarvestPolicy {
  /** Fraction of sequences captured, 0..1. */
  sampleRate: number;
  layers: Array<'final' | number>;
  keep: 'prompt' | 'completion' | 'both';
  /** Other served bases (by name) whose states each sampled sequence also gets, replayed (see replay.ts). */
  bases?: string[];
}

/** Where serving hands captured sequences: must return at once, dropping (false) rather than waiting. */
export interface HarvestSink {
  offer(seq: HarvestedSequence): boolean;
}
