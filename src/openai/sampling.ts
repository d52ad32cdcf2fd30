import type { Caller } from '../carryon/routing.js';
import { ApiError } from '../errors.js';
import type { Gateway } from '../gateway.js';
import type { GenerationRequest } from '../generation.js';

interface CommonSamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  n?: number | null;
  stop?: string | string[] | null;
  max_tokens?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  seed?: number | null;
  logit_bias?: Record<string, number> | null;
}

/** OpenAI sampling fields → the generator's, with OpenAI's defaults (temperature 1, top_p 1). */
export function samplingFrom(
  body: CommonSamplingFields,
  topLogprobs: number,
  maxN: number,
): Pick<GenerationRequest, 'n' | 'sampling' | 'stop'> {
  if (body.logit_bias && Object.keys(body.logit_bias).length > 0) {
    throw new ApiError('unsupported_parameter', "'logit_bias' is not supported by this server.", { param: 'logit_bias' });
  }
  const n = body.n ?? 1;
  if (n > maxN) throw new ApiError('invalid_value', `'n' may be at most ${maxN} on this server.`, { param: 'n' });
  const stop = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
  if (stop.some((s) => s.length === 0)) throw new ApiError('invalid_value', "'stop' strings must not be empty.", { param: 'stop' });
  return {
    n,
    stop,
    sampling: {
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      topK: body.top_k != null && body.top_k > 0 ? body.top_k : 0,
      seed: body.seed ?? null,
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
      topLogprobs,
    },
  };
}

/** The request's carry-on (from its `model`) and the α to apply; null for the base. */
export function carryOnFor(
  gw: Gateway,
  body: { model: string; carry_on_alpha?: number | null },
  caller: Caller,
): GenerationRequest['carryOn'] {
  const record = gw.route(body.model, caller);
  return record ? { record, alpha: body.carry_on_alpha ?? record.manifest.default_alpha } : null;
}

/**
 * Whether this request is harvested: only when the caller's key opted in, the sample draw says so,
 * and the request did not opt out (`carry_on_harvest: false` or header `x-carryon-harvest: off`).
 */
export function harvestFor(
  caller: Caller,
  optOut: boolean,
  responseId: string,
): GenerationRequest['harvest'] {
  const policy = caller.harvest;
  if (!policy || optOut || !(Math.random() < policy.sampleRate)) return null;
  return { policy, requestId: responseId, tenantId: caller.tenantId };
}

export function requestId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replace(/-/g, '')}`;
}
