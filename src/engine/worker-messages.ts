import type { CaptureResult } from './capture.js';
import type { CarryOnSpec } from './carry-on-session.js';
import type { ResponseFormatSpec, VocabularyBytes } from './structured/token-mask.js';

/**
 * Messages between the gateway's main thread and the engine worker. The worker owns the ONNX sessions
 * and every sequence's KV cache; the main thread owns admission, text and HTTP. Only token ids and
 * small numbers cross the boundary.
 */
export interface SamplingParams {
  /** 0 = greedy (argmax, lowest id on ties, as llama.cpp). */
  temperature: number;
  topP: number;
  /** 0 = disabled. */
  topK: number;
  /** null: seeded from a random source, so output varies. */
  seed: number | null;
  presencePenalty: number;
  frequencyPenalty: number;
  /** Tokens to generate at most. */
  maxTokens: number;
  /** Ending on one of these gives finish_reason "stop"; the token itself is not part of the output. */
  stopTokenIds: number[];
  /** How many alternatives to report per token; -1: no logprobs at all. */
  topLogprobs: number;
}

/** Greedy, no penalties, no logprobs: for sequences that only need their states (embeddings, harvest replays). */
export const GREEDY_PARAMS: Omit<SamplingParams, 'maxTokens'> = {
  temperature: 0, topP: 1, topK: 0, seed: 0, presencePenalty: 0, frequencyPenalty: 0, stopTokenIds: [], topLogprobs: -1,
};

export type FinishReason = 'stop' | 'length';

export interface TokenEvent {
  seqId: number;
  /** -1 when the event only finishes the sequence (e.g. max tokens reached after a stop token). */
  token: number;
  logprob?: number;
  /** [tokenId, logprob] pairs, best first. */
  top?: Array<[number, number]>;
  finish?: FinishReason;
  /** An embedding sequence's result (it ends with this event and produces no tokens). */
  embedding?: Float32Array;
  /** On a sequence's first token: how many of its prompt tokens came from the prefix cache. */
  cachedTokens?: number;
}

/** What one engine step did: for batching metrics and tests that must see batching happen. */
export interface StepStats {
  /** Sequences that decoded a token together in this step's batched body pass. */
  decodeRows: number;
  /** Sequences that read a prompt chunk in this step. */
  prefillRows: number;
  /** Prompt tokens the base body computed in this step (cached ones are not computed). */
  prefillTokens: number;
  /** Bytes held by the shared KV pool after the step. */
  kvBytes: number;
  /** The prefix cache after the step, with its counters since the last report; null: caching is off. */
  prefixCache: {
    bytes: number;
    blocks: number;
    /** Prompt tokens looked up. */
    queries: number;
    /** Prompt tokens found cached. */
    hits: number;
    evictions: number;
  } | null;
}

export interface EngineInit {
  modelDir: string;
  provider: 'cpu' | 'cuda' | 'webgpu';
  threads: number;
  prefillChunk: number;
  /** Serve at most this many positions per sequence (0 or absent: the model's max_position_embeddings). */
  contextLength?: number;
  /** Admission bound on the shared KV cache (see StepLoopOptions); default 2 GiB. */
  kvBudgetBytes?: number;
  /** Milliseconds per prompt-chunk slice (see StepLoopOptions); absent or 0: whole chunks. */
  prefillSliceMs?: number;
  /** Prefix caching of the base (see StepLoopOptions); absent: off. */
  prefixCache?: { blockTokens: number; budgetBytes: number };
}

export interface ModelInfo {
  vocabSize: number;
  hiddenSize: number;
  contextLength: number;
  numLayers: number;
}

/** A sequence's carry-on: which resident session, and the α of x + α · g ⊙ Δx. */
export interface CarryOnUse {
  key: string;
  alpha: number;
}

export type ToWorker =
  | { type: 'init'; init: EngineInit }
  | {
      type: 'add';
      seqId: number;
      promptIds: number[];
      params: SamplingParams;
      carryOn: CarryOnUse | null;
      /** Base layers to capture for harvesting; null: this sequence is not harvested. */
      harvestLayers: Array<'final' | number> | null;
      /** Structured output: the grammar the sampled tokens must follow; null: free text. */
      format: ResponseFormatSpec | null;
      /** Prefix-cache namespace (the tenant's, or the shared one); null: not cached. */
      cacheNamespace: string | null;
    }
  /** The tokens' bytes, sent once before the first sequence with a response format. */
  | { type: 'vocab'; vocab: VocabularyBytes }
  | { type: 'loadCarryOn'; requestId: number; spec: CarryOnSpec }
  | { type: 'unloadCarryOn'; key: string }
  | { type: 'cancel'; seqId: number }
  /** One embedding input: read through the step loop like a prompt, then pooled (see pooling.ts). */
  | { type: 'addEmbedding'; seqId: number; promptIds: number[] }
  /** Drops the prefix cache (every namespace, or one). */
  | { type: 'clearPrefixCache'; namespace?: string }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'fatal'; message: string }
  | { type: 'tokens'; events: TokenEvent[]; step: StepStats }
  | { type: 'seqError'; seqId: number; message: string }
  | { type: 'carryOnLoaded'; requestId: number; error?: string }
  | { type: 'captured'; capture: CaptureResult }
  | { type: 'closed' };
