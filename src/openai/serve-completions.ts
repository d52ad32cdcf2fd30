import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway, ModelServices } from '../serving/gateway.js';
import type { TokenDetail } from '../serving/generation.js';
import type { CompletionRequest } from './schemas.js';
import { requestId, samplingFrom } from './request-params.js';
import { collect, type ServeResult } from './serve-result.js';

/** /v1/completions serving logic: one prompt (text or token ids) → generation → text_completion objects. */
export async function serveCompletion(gw: Gateway, body: CompletionRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('cmpl');
  const m = gw.model();
  if (body.suffix) throw new ApiError('unsupported_parameter', "'suffix' is not supported by this model.", { param: 'suffix' });
  if (body.best_of != null && body.best_of !== (body.n ?? 1)) {
    throw new ApiError('unsupported_parameter', "'best_of' other than n is not supported.", { param: 'best_of' });
  }
  const promptIds = await promptToIds(m, body.prompt);
  const wantLogprobs = body.logprobs != null;
  const run = await m.inference.generate({
    promptIds,
    promptParam: 'prompt',
    maxTokens: body.max_tokens ?? 16, // OpenAI's default for legacy completions
    maxTokensParam: 'max_tokens',
    ...samplingFrom(body, wantLogprobs ? (body.logprobs ?? 0) : -1, gw.limits.maxN),
    model: body.model,
    alpha: body.carry_on_alpha ?? null,
    caller,
    harvestOptOut: optOut || body.carry_on_harvest === false,
    responseId: id,
    signal,
  });
  const echoText = body.echo ? m.tokenizer.decode(promptIds) : '';
  const created = Math.floor(Date.now() / 1000);
  const base = { id, object: 'text_completion', created, model: body.model, system_fingerprint: null };
  const logprobs = (tokens: TokenDetail[], offset: number) => (wantLogprobs ? completionLogprobs(m, tokens, offset) : null);

  if (!body.stream) {
    const choices = await collect(run.deltas(), body.n ?? 1);
    return {
      kind: 'json',
      body: {
        ...base,
        choices: choices.map((c, index) => ({
          index,
          text: echoText + c.text,
          logprobs: logprobs(c.tokens, echoText.length),
          finish_reason: c.finishReason,
        })),
        usage: run.usage,
      },
    };
  }

  const includeUsage = body.stream_options?.include_usage === true;
  async function* chunks(): AsyncGenerator<object> {
    const offsets = new Map<number, number>();
    for await (const d of run.deltas()) {
      let text = d.text;
      if (!offsets.has(d.index)) {
        offsets.set(d.index, 0);
        text = echoText + text;
      }
      if (!text && !d.finishReason && d.tokens.length === 0) continue;
      const offset = offsets.get(d.index)!;
      offsets.set(d.index, offset + text.length);
      yield {
        ...base,
        choices: [{ index: d.index, text, logprobs: d.tokens.length > 0 ? logprobs(d.tokens, offset) : null, finish_reason: d.finishReason ?? null }],
        ...(includeUsage ? { usage: null } : {}),
      };
    }
    if (includeUsage) yield { ...base, choices: [], usage: run.usage };
  }
  return { kind: 'stream', chunks: chunks(), cancel: () => run.cancel() };
}

async function promptToIds(m: ModelServices, prompt: CompletionRequest['prompt']): Promise<number[]> {
  if (typeof prompt === 'string') return m.encoder.encode(prompt, true, 'prompt');
  const lists: Array<string | number[]> = typeof prompt[0] === 'number' ? [prompt as number[]] : (prompt as Array<string | number[]>);
  if (lists.length > 1) {
    throw new ApiError('invalid_value', 'Only one prompt per request is supported; send one request per prompt.', { param: 'prompt' });
  }
  const only = lists[0];
  if (typeof only === 'string') return m.encoder.encode(only, true, 'prompt');
  const ids = only;
  const vocab = m.tokenizer.vocabSize;
  const bad = ids.findIndex((t) => t >= vocab);
  if (bad >= 0) throw new ApiError('invalid_value', `Token id ${ids[bad]} is outside the vocabulary (size ${vocab}).`, { param: 'prompt' });
  return ids;
}

function completionLogprobs(m: ModelServices, tokens: TokenDetail[], offset: number) {
  const text_offset: number[] = [];
  let at = offset;
  for (const t of tokens) {
    text_offset.push(at);
    at += m.tokenizer.piece(t.id).text.length;
  }
  return {
    tokens: tokens.map((t) => m.tokenizer.piece(t.id).text),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map(([id, lp]) => [m.tokenizer.piece(id).text, lp]))),
    text_offset,
  };
}
