import type { Caller } from '../carryon/routing.js';
import { ApiError } from '../errors.js';
import type { Gateway } from '../gateway.js';
import type { EmbeddingRequest } from './protocol.js';

/**
 * /v1/embeddings: the base's final-layer hidden state (after the final norm), mean-pooled over the
 * input's tokens (BOS included) and L2-normalised. See src/engine/pooling.ts. Served by the base
 * alone: a carry-on corrects next-token predictions, not the representation.
 */
export async function serveEmbeddings(gw: Gateway, body: EmbeddingRequest, caller: Caller, signal: AbortSignal): Promise<object> {
  gw.requireBase(body.model);
  const m = gw.model();
  if (body.dimensions != null && body.dimensions !== m.hiddenSize) {
    throw new ApiError('unsupported_parameter', `This model's embeddings have ${m.hiddenSize} dimensions; 'dimensions' must be ${m.hiddenSize} or omitted.`, {
      param: 'dimensions',
    });
  }
  const inputs = toIdLists(body.input, (t) => m.tokenizer.encode(t, true));
  if (inputs.length > gw.limits.maxEmbeddingInputs) {
    throw new ApiError('invalid_value', `At most ${gw.limits.maxEmbeddingInputs} inputs per request.`, { param: 'input' });
  }
  inputs.forEach((ids, i) => {
    if (ids.length > m.contextLength) {
      throw new ApiError('context_length_exceeded', `Input ${i} has ${ids.length} tokens; this model's maximum context length is ${m.contextLength} tokens.`, {
        param: 'input',
      });
    }
    if (ids.some((t) => t >= m.tokenizer.vocabSize)) throw new ApiError('invalid_value', `Input ${i} has a token id outside the vocabulary.`, { param: 'input' });
  });
  const release = await gw.scheduler.acquire(1, signal, caller.tenantId);
  let vectors: Float32Array[];
  try {
    vectors = await m.engine.embed(inputs);
  } finally {
    release();
  }
  const base64 = body.encoding_format === 'base64';
  const promptTokens = inputs.reduce((s, ids) => s + ids.length, 0);
  gw.rateLimiter?.charge(caller.keyId, promptTokens);
  return {
    object: 'list',
    data: vectors.map((v, index) => ({
      object: 'embedding',
      index,
      // base64 is the little-endian float32 bytes, which is what the openai SDK decodes.
      embedding: base64 ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : Array.from(v),
    })),
    model: body.model,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}

function toIdLists(input: EmbeddingRequest['input'], encode: (t: string) => number[]): number[][] {
  if (typeof input === 'string') return [encode(input)];
  if (typeof input[0] === 'number') return [input as number[]];
  if (typeof input[0] === 'string') return (input as string[]).map(encode);
  return input as number[][];
}
