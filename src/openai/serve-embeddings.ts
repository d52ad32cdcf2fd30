import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';
import type { EmbeddingRequest } from './schemas.js';

/**
 * /v1/embeddings: the base's final-layer hidden state (after the final norm), mean-pooled over the
 * input's tokens (BOS included) and L2-normalised (see src/engine/pooling.ts). Translates the
 * request to token ids and the vectors to OpenAI's objects; the inference service runs them.
 */
export async function serveEmbeddings(gw: Gateway, body: EmbeddingRequest, caller: Caller, signal: AbortSignal): Promise<object> {
  const m = gw.model();
  if (body.dimensions != null && body.dimensions !== m.hiddenSize) {
    throw new ApiError('unsupported_parameter', `This model's embeddings have ${m.hiddenSize} dimensions; 'dimensions' must be ${m.hiddenSize} or omitted.`, {
      param: 'dimensions',
    });
  }
  const count = typeof body.input === 'string' || typeof body.input[0] === 'number' ? 1 : body.input.length;
  if (count > gw.limits.maxEmbeddingInputs) {
    throw new ApiError('invalid_value', `At most ${gw.limits.maxEmbeddingInputs} inputs per request.`, { param: 'input' });
  }
  const inputs = await toIdLists(body.input, (t) => m.encoder.encode(t, true, 'input'));
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

async function toIdLists(input: EmbeddingRequest['input'], encode: (t: string) => Promise<number[]>): Promise<number[][]> {
  if (typeof input === 'string') return [await encode(input)];
  if (typeof input[0] === 'number') return [input as number[]];
  if (typeof input[0] === 'string') {
    const ids: number[][] = [];
    for (const text of input as string[]) ids.push(await encode(text));
    return ids;
  }
  return input as number[][];
}
