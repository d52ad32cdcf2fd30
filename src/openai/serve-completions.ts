import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway, ModelServices } from '../serving/gateway.js';
import type { GenerationRun, TokenDetail, Usage } from '../serving/generation.js';
import type { CompletionRequest } from './schemas.js';
import { inputItems, requestId, samplingFrom, targetOf } from './request-params.js';
import { collect, mergeDeltas, type ServeResult } from './serve-result.js';
import { responseFormatOf } from './response-format.js';

/**
 * /v1/completions serving logic: prompts (text or token ids, one or an array, as OpenAI accepts
 * them) → one generation per prompt → text_completion objects. Choice `p·n + i` is choice i of
 * prompt p, as OpenAI numbers them.
 */
export async function serveCompletion(gw: Gateway, body: CompletionRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('cmpl');
  const { services: m, route } = await gw.modelFor(body.model, caller);
  if (body.suffix) throw new ApiError('unsupported_parameter', "'suffix' is not supported by this model.", { param: 'suffix' });
  if (body.best_of != null && body.best_of !== (body.n ?? 1)) {
    throw new ApiError('unsupported_parameter', "'best_of' other than n is not supported.", { param: 'best_of' });
  }
  const format = responseFormatOf(body.response_format, 'response_format');
  const prompts = await promptsToIds(m, body.prompt, gw.limits.maxPrompts);
  const n = body.n ?? 1;
  const wantLogprobs = body.logprobs != null;
  const sampling = samplingFrom(body, wantLogprobs ? (body.logprobs ?? 0) : -1, gw.limits.maxN, m.samplingDefaults);
  const runs = await startAll(
    prompts.map((promptIds, p) => () =>
      m.inference.generate({
        promptIds,
        promptParam: 'prompt',
        maxTokens: body.max_tokens ?? 16, // OpenAI's default for legacy completions
        maxTokensParam: 'max_tokens',
        ...sampling,
        ...targetOf(body, route, caller, optOut, id, signal),
        choiceOffset: p * n,
        format,
      }),
    ),
  );
  const echoText = prompts.map((ids) => (body.echo ? m.tokenizer.decode(ids) : ''));
  const echoOf = (index: number) => echoText[Math.floor(index / n)];
  const usage = () => sumUsage(runs.map((r) => r.usage));
  const deltas = runs.length === 1 ? runs[0].deltas() : mergeDeltas(runs.map((r) => r.deltas()));
  const cancel = () => runs.forEach((r) => r.cancel());
  const created = Math.floor(Date.now() / 1000);
  const base = { id, object: 'text_completion', created, model: body.model, system_fingerprint: null };
  const logprobs = (tokens: TokenDetail[], offset: number) => (wantLogprobs ? completionLogprobs(m, tokens, offset) : null);

  if (!body.stream) {
    const choices = await collect(deltas, prompts.length * n);
    return {
      kind: 'json',
      body: {
        ...base,
        choices: choices.map((c, index) => ({
          index,
          text: echoOf(index) + c.text,
          logprobs: logprobs(c.tokens, echoOf(index).length),
          finish_reason: c.finishReason,
        })),
        usage: usage(),
      },
    };
  }

  const includeUsage = body.stream_options?.include_usage === true;
  async function* chunks(): AsyncGenerator<object> {
    const offsets = new Map<number, number>();
    for await (const d of deltas) {
      let text = d.text;
      if (!offsets.has(d.index)) {
        offsets.set(d.index, 0);
        text = echoOf(d.index) + text;
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
    if (includeUsage) yield { ...base, choices: [], usage: usage() };
  }
  return { kind: 'stream', chunks: chunks(), cancel };
}

/** Starts every run; if one is refused, the ones already admitted are cancelled and the refusal thrown. */
async function startAll(starts: Array<() => Promise<GenerationRun>>): Promise<GenerationRun[]> {
  const settled = await Promise.allSettled(starts.map((start) => start()));
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  const runs = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  if (failed) {
    for (const run of runs) run.cancel();
    throw failed.reason;
  }
  return runs;
}

function sumUsage(all: Usage[]): Usage {
  const sum = (pick: (u: Usage) => number) => all.reduce((n, u) => n + pick(u), 0);
  return {
    prompt_tokens: sum((u) => u.prompt_tokens),
    completion_tokens: sum((u) => u.completion_tokens),
    total_tokens: sum((u) => u.total_tokens),
    prompt_tokens_details: { cached_tokens: sum((u) => u.prompt_tokens_details.cached_tokens) },
  };
}

/** The request's prompts as token ids: a string, token ids, or an array of either (at most `max`). */
async function promptsToIds(m: ModelServices, prompt: CompletionRequest['prompt'], max: number): Promise<number[][]> {
  const lists = inputItems(prompt);
  if (lists.length > max) throw new ApiError('invalid_value', `At most ${max} prompts per request.`, { param: 'prompt' });
  const vocab = m.tokenizer.vocabSize;
  const out: number[][] = [];
  for (const [p, one] of lists.entries()) {
    const param = lists.length === 1 ? 'prompt' : `prompt[${p}]`;
    if (typeof one === 'string') {
      out.push(await m.encoder.encode(one, true, param));
      continue;
    }
    const bad = one.findIndex((t) => t >= vocab);
    if (bad >= 0) throw new ApiError('invalid_value', `Token id ${one[bad]} is outside the vocabulary (size ${vocab}).`, { param });
    out.push(one);
  }
  return out;
}

/**
 * text_offset: where each token's text starts in the choice's text. A token adds the characters its
 * bytes complete (a token holding half a character adds nothing, the one finishing it adds the
 * character) and a special token adds none, as the reply's text is built; a piece's logprob `text`
 * (`bytes:\xNN`, `<|eot_id|>`) is not what the reply shows.
 */
function completionLogprobs(m: ModelServices, tokens: TokenDetail[], offset: number) {
  const text_offset: number[] = [];
  const utf8 = new TextDecoder('utf-8');
  let at = offset;
  for (const t of tokens) {
    text_offset.push(at);
    if (!m.tokenizer.isSpecial(t.id)) at += utf8.decode(Uint8Array.from(m.tokenizer.piece(t.id).bytes), { stream: true }).length;
  }
  return {
    tokens: tokens.map((t) => m.tokenizer.piece(t.id).text),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map(([id, lp]) => [m.tokenizer.piece(id).text, lp]))),
    text_offset,
  };
}
