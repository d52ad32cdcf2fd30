import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';
import { inputItems } from './request-params.js';
import type { EmbeddingRequest } from './schemas.js';

/**
 * /v1/embeddings: the base's final-layer hidden state (after the final norm), mean-pooled over the
 * input's tokens (BOS included) and L2-normalised (see src/engine/pooling.ts). Translates the
 * request to token ids and the vectors to OpenAI's objects; the inference service runs them.
 */
export async function serveEmbeddings(gw: Gateway, body: EmbeddingRequest, caller: Caller, signal: AbortSignal): Promise<object> {
  const { services: m } = await gw.modelFor(body.model, caller);
  if (body.dimensions != null && body.dimensions !== m.hiddenSize) {
    throw new ApiError('unsupported_parameter', `This model's embeddings have ${m.hiddenSize} dimensions; 'dimensions' must be ${m.hiddenSize} or omitted.`, {
      param: 'dimensions',
    });
  }
  const items = inputItems(body.input);
  if (items.length > gw.limits.maxEmbeddingInputs) {
    throw new ApiError('invalid_value', `At most ${gw.limits.maxEmbeddingInputs} inputs per request.`, { param: 'input' });
  }
  const inputs: number[][] = [];
  for (const item of items) inputs.push(typeof item === 'string' ? await m.encoder.encode(item, true, 'input') : item);
  const { vectors, promptTokens } = await m.inference.embed({ inputs, model: body.model, caller, signal });
  const base64 = body.encoding_format === 'base64';
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
