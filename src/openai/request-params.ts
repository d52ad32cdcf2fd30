import { ApiError } from '../core/errors.js';
import type { GenerationPlan } from '../serving/generation.js';
import type { GenerateRequest } from '../serving/inference.js';
import type { Caller, Route } from '../serving/model-routing.js';
import type { SamplingDefaults } from '../model/generation-defaults.js';

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

/**
 * OpenAI sampling fields → the generator's. What the request leaves out comes from the model's own
 * defaults (its generation_config.json), else OpenAI's (temperature 1, top_p 1).
 */
export function samplingFrom(
  body: CommonSamplingFields,
  topLogprobs: number,
  maxN: number,
  defaults: SamplingDefaults = {},
): Pick<GenerationPlan, 'n' | 'sampling' | 'stop'> {
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
      temperature: body.temperature ?? defaults.temperature ?? 1,
      topP: body.top_p ?? defaults.topP ?? 1,
      topK: body.top_k != null ? Math.max(0, body.top_k) : (defaults.topK ?? 0),
      seed: body.seed ?? null,
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
      topLogprobs,
    },
  };
}

/** A fresh object id: `chatcmpl-<hex>`; the Responses API's objects use `_` (`resp_<hex>`, `msg_<hex>`). */
export function requestId(prefix: string, sep: '-' | '_' = '-'): string {
  return `${prefix}${sep}${crypto.randomUUID().replace(/-/g, '')}`;
}

/** Who asks and where it routed: the request fields the inference service runs and harvests by. */
export function targetOf(
  body: { carry_on_alpha?: number | null; carry_on_harvest?: boolean | null },
  route: Route,
  caller: Caller,
  optOut: boolean,
  responseId: string,
  signal: AbortSignal,
): Pick<GenerateRequest, 'route' | 'alpha' | 'caller' | 'harvestOptOut' | 'responseId' | 'signal'> {
  return { route, alpha: body.carry_on_alpha ?? null, caller, harvestOptOut: optOut || body.carry_on_harvest === false, responseId, signal };
}

/**
 * OpenAI's text-or-tokens input, as /v1/completions `prompt` and /v1/embeddings `input` take it (a
 * string, token ids, or an array of either), as one list of items.
 */
export function inputItems(input: string | number[] | Array<string | number[]>): Array<string | number[]> {
  if (typeof input === 'string') return [input];
  return typeof input[0] === 'number' ? [input as number[]] : (input as Array<string | number[]>);
}
