import type { ChatMessage, RenderOptions, TemplateTool, TemplateToolCall } from '../model/chat-template.js';
import type { Caller } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';
import type { TokenDetail } from '../serving/generation.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { ChatCompletionRequest } from './schemas.js';
import { requestId, samplingFrom, targetOf } from './request-params.js';
import { collect, type ServeResult } from './serve-result.js';
import { responseFormatOf } from './response-format.js';
import { parseReply, templateCall, ToolCallParser, toolPlanOf, type ToolEvent } from './tool-calls.js';

/** /v1/chat/completions serving logic: messages → template → generation → OpenAI objects. */
export async function serveChat(gw: Gateway, body: ChatCompletionRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('chatcmpl');
  const { services: m, route } = await gw.modelFor(body.model, caller);
  // Compiled before anything is admitted: a bad schema is a 400, and the engine gets a ready grammar.
  const tools = toolPlanOf(body, m.chatTemplate);
  const responseFormat = responseFormatOf(body.response_format, 'response_format');
  const format = tools.format ?? responseFormat;
  // Under a response_format the reply is that document: it is not read for calls.
  const syntax = responseFormat ? null : tools.parse;
  const prompt = renderPrompt(m.chatTemplate, body.messages, tools.templateTools, m.chatTemplate.referencesTools);
  const promptIds = await m.encoder.encode(prompt, false, 'messages');
  const wantLogprobs = body.logprobs === true;
  const run = await m.inference.generate({
    promptIds,
    promptParam: 'messages',
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
    maxTokensParam: body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
    ...samplingFrom(body, wantLogprobs ? (body.top_logprobs ?? 0) : -1, gw.limits.maxN, m.samplingDefaults),
    ...targetOf(body, route, caller, optOut, id, signal),
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
        choices: choices.map((c, index) => {
          const reply = syntax ? parseReply(syntax, c.text, tools.maxCalls) : null;
          const called = reply !== null && reply.toolCalls.length > 0;
          return {
            index,
            message: called ? { role: 'assistant', content: reply.content, refusal: null, tool_calls: reply.toolCalls } : { role: 'assistant', content: c.text, refusal: null },
            logprobs: logprobs(c.tokens),
            finish_reason: called && c.finishReason === 'stop' ? 'tool_calls' : c.finishReason,
          };
        }),
        usage: run.usage,
      },
    };
  }

  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[]) => ({ ...base, object: 'chat.completion.chunk', choices, ...(includeUsage ? { usage: null } : {}) });
  // Per choice, when replies are read for calls: text that may start a call is held, calls go out as tool_calls deltas.
  const parsers = new Map<number, ToolCallParser>();
  async function* chunks(): AsyncGenerator<object> {
    const started = new Set<number>();
    for await (const d of run.deltas()) {
      const delta: Record<string, unknown> = {};
      if (!started.has(d.index)) {
        started.add(d.index);
        delta.role = 'assistant';
        delta.content = '';
      }
      let finish: string | null = d.finishReason ?? null;
      if (syntax) {
        let parser = parsers.get(d.index);
        if (!parser) parsers.set(d.index, (parser = new ToolCallParser(syntax, tools.maxCalls)));
        const events = parser.push(d.text);
        if (d.finishReason) events.push(...parser.end());
        Object.assign(delta, toolDelta(events));
        if (finish === 'stop' && parser.callCount > 0) finish = 'tool_calls';
      } else if (d.text) delta.content = d.text;
      if (Object.keys(delta).length === 0 && d.tokens.length === 0 && !finish) continue;
      yield chunk([{ index: d.index, delta, logprobs: d.tokens.length > 0 ? logprobs(d.tokens) : null, finish_reason: finish }]);
    }
    if (includeUsage) yield { ...base, object: 'chat.completion.chunk', choices: [], usage: run.usage };
  }
  return { kind: 'stream', chunks: chunks(), cancel: () => run.cancel() };
}

/** A stream chunk's delta for parser events: content joined, and each call's pieces as one tool_calls entry. */
function toolDelta(events: ToolEvent[]): Record<string, unknown> {
  const delta: { content?: string; tool_calls?: Array<Record<string, unknown> & { index: number; function: { name?: string; arguments: string } }> } = {};
  for (const e of events) {
    if (e.kind === 'content') delta.content = (delta.content ?? '') + e.text;
    else {
      const calls = (delta.tool_calls ??= []);
      if (e.kind === 'call') calls.push({ index: e.index, id: e.id, type: 'function', function: { name: e.name, arguments: '' } });
      else {
        const last = calls.at(-1);
        if (last && last.index === e.index) last.function.arguments += e.text;
        else calls.push({ index: e.index, function: { arguments: e.text } });
      }
    }
  }
  return delta;
}

function renderPrompt(template: { render(m: ChatMessage[], o?: RenderOptions): string }, messages: ChatCompletionRequest['messages'], tools: TemplateTool[] | null, toolsRendered: boolean): string {
  return renderMessages(template, chatMessagesOf(messages, toolsRendered), 'messages', { tools });
}

/**
 * The request's messages as the template takes them: text contents, and for tool calling an assistant
 * turn's `tool_calls` with `arguments` parsed into an object (the Llama 3.1 and Qwen2.5 templates print
 * it with `tojson`; transformers and vLLM hand templates a dict) and a tool turn's `tool_call_id`.
 * `toolsRendered`: the template reads tools; otherwise a turn carrying calls is refused rather than rendered without them.
 */
export function chatMessagesOf(messages: ChatCompletionRequest['messages'], toolsRendered: boolean): ChatMessage[] {
  return messages.map((msg, i) => ({
    role: msg.role,
    content: textOf(msg.content, i),
    ...(msg.name ? { name: msg.name } : {}),
    ...(msg.tool_calls && msg.tool_calls.length > 0 ? { tool_calls: templateCalls(msg.tool_calls, i, toolsRendered) } : {}),
    ...(msg.tool_call_id != null ? { tool_call_id: msg.tool_call_id } : {}),
  }));
}

function templateCalls(calls: NonNullable<ChatCompletionRequest['messages'][number]['tool_calls']>, i: number, toolsRendered: boolean): TemplateToolCall[] {
  if (!toolsRendered) {
    throw new ApiError('unsupported_parameter', `messages[${i}].tool_calls: this model's chat template does not render tool calls.`, { param: `messages[${i}].tool_calls` });
  }
  return calls.map((c, j) => templateCall(c.id, c.function.name, c.function.arguments, `messages[${i}].tool_calls[${j}].function.arguments`));
}

/** Renders messages with the model's chat template; `param` names the request field they came from. */
export function renderMessages(template: { render(m: ChatMessage[], o?: RenderOptions): string }, messages: ChatMessage[], param: string, opts: RenderOptions = {}): string {
  try {
    return template.render(messages, opts);
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
