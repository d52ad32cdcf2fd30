import type { ChatMessage } from '../model/chat-template.js';
import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';
import type { TokenDetail } from '../serving/generation.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { ChatCompletionRequest } from './schemas.js';
import { requestId, samplingFrom, targetOf } from './request-params.js';
import { collect, type ServeResult } from './serve-result.js';
import { responseFormatOf } from './response-format.js';

/** /v1/chat/completions serving logic: messages → template → generation → OpenAI objects. */
export async function serveChat(gw: Gateway, body: ChatCompletionRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('chatcmpl');
  const m = gw.model();
  refuseUnsupported(body);
  // Compiled before anything is admitted: a bad schema is a 400, and the engine gets a ready grammar.
  const format = responseFormatOf(body.response_format, 'response_format');
  const prompt = renderPrompt(m.chatTemplate, body.messages);
  const promptIds = await m.encoder.encode(prompt, false, 'messages');
  const wantLogprobs = body.logprobs === true;
  const run = await m.inference.generate({
    promptIds,
    promptParam: 'messages',
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
    maxTokensParam: body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
    ...samplingFrom(body, wantLogprobs ? (body.top_logprobs ?? 0) : -1, gw.limits.maxN, m.samplingDefaults),
    ...targetOf(body, caller, optOut, id, signal),
    format,
  });
  const created = Math.floor(Date.now() / 1000);
  const base = { id, created, model: body.model, system_fingerprint: null };
  const logprobs = (tokens: TokenDetail[]) => (wantLogprobs ? { content: tokens.map((t) => chatLogprob(m.tokenizer, t)) } : null);

  if (!body.stream) {
    const choices = await collect(run.deltas(), body.n ?? 1);
    return {
      kind: 'json',
      body: {
        ...base,
        object: 'chat.completion',
        choices: choices.map((c, index) => ({
          index,
          message: { role: 'assistant', content: c.text, refusal: null },
          logprobs: logprobs(c.tokens),
          finish_reason: c.finishReason,
        })),
        usage: run.usage,
      },
    };
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[]) => ({ ...base, object: 'chat.completion.chunk', choices, ...(includeUsage ? { usage: null } : {}) });
  async function* chunks(): AsyncGenerator<object> {
    const started = new Set<number>();
    for await (const d of run.deltas()) {
      const delta: Record<string, string> = {};
      if (!started.has(d.index)) {
        started.add(d.index);
        delta.role = 'assistant';
        delta.content = '';
      }
      if (d.text) delta.content = d.text;
      if (!d.text && d.tokens.length === 0 && !d.finishReason && !delta.role) continue;
      yield chunk([{ index: d.index, delta, logprobs: d.tokens.length > 0 ? logprobs(d.tokens) : null, finish_reason: d.finishReason ?? null }]);
    }
    if (includeUsage) yield { ...base, object: 'chat.completion.chunk', choices: [], usage: run.usage };
  }
  return { kind: 'stream', chunks: chunks(), cancel: () => run.cancel() };
}

function refuseUnsupported(body: ChatCompletionRequest): void {
  if (body.tools && body.tools.length > 0) {
    throw new ApiError('unsupported_parameter', "'tools' is not supported by this model.", { param: 'tools' });
  }
}

function renderPrompt(template: { render(m: ChatMessage[]): string }, messages: ChatCompletionRequest['messages']): string {
  const plain: ChatMessage[] = messages.map((msg, i) => ({
    role: msg.role,
    content: textOf(msg.content, i),
    ...(msg.name ? { name: msg.name } : {}),
  }));
  return renderMessages(template, plain, 'messages');
}

/** Renders plain-text messages with the model's chat template; `param` names the request field they came from. */
export function renderMessages(template: { render(m: ChatMessage[]): string }, messages: ChatMessage[], param: string): string {
  try {
    return template.render(messages);
  } catch (err) {
    // Templates raise on conversations they do not accept (e.g. roles out of order).
    throw new ApiError('invalid_value', `The chat template rejected these messages: ${(err as Error).message}`, { param });
  }
}

function textOf(content: ChatCompletionRequest['messages'][number]['content'], i: number): string {
  if (content == null) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part, j) => {
      if (part.type === 'text' && typeof (part as { text?: unknown }).text === 'string') return (part as { text: string }).text;
      throw new ApiError('invalid_value', `Content part type '${part.type}' is not supported; this model reads text only.`, {
        param: `messages[${i}].content[${j}].type`,
      });
    })
    .join('');
}

function chatLogprob(tok: ModelTokenizer, t: TokenDetail) {
  const entry = (id: number, logprob: number) => {
    const p = tok.piece(id);
    return { token: p.text, logprob, bytes: p.bytes };
  };
  return { ...entry(t.id, t.logprob), top_logprobs: t.top.map(([id, lp]) => entry(id, lp)) };
}
