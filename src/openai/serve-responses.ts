import { ApiError } from '../core/errors.js';
import type { FinishReason } from '../engine/worker-messages.js';
import type { ChatMessage } from '../model/chat-template.js';
import type { Gateway } from '../serving/gateway.js';
import type { Usage } from '../serving/generation.js';
import type { Caller } from '../serving/model-routing.js';
import { requestId, samplingFrom, targetOf } from './request-params.js';
import type { ResponsesMessageItem, ResponsesRequest } from './responses-schemas.js';
import { renderMessages } from './serve-chat.js';
import { collect, type ServeResult } from './serve-result.js';
import { responseFormatOf } from './response-format.js';

/**
 * `POST /v1/responses` (OpenAI's Responses API) for text: `instructions` + `input` → the chat template
 * → one generation → a `response` object, or its documented event stream. Stateless: nothing is
 * stored, so `store: true` is answered as `store: false` (vLLM does the same without its store).
 */
export async function serveResponses(gw: Gateway, body: ResponsesRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('resp', '_');
  const itemId = requestId('msg', '_');
  const m = gw.model();
  refuseUnsupported(body);
  // text.format carries json_schema's fields flat (name, schema, strict beside type).
  const format = responseFormatOf(body.text?.format, 'text.format', true);
  const prompt = renderMessages(m.chatTemplate, messagesOf(body), 'input');
  const promptIds = await m.encoder.encode(prompt, false, 'input');
  const run = await m.inference.generate({
    promptIds,
    promptParam: 'input',
    maxTokens: body.max_output_tokens ?? null,
    maxTokensParam: 'max_output_tokens',
    ...samplingFrom({ temperature: body.temperature, top_p: body.top_p }, -1, 1, m.samplingDefaults),
    ...targetOf(body, caller, optOut, id, signal),
    format,
  });
  const createdAt = Math.floor(Date.now() / 1000);

  const response = (status: string, output: object[], usage: Usage | null, incomplete = false) => ({
    id,
    object: 'response',
    created_at: createdAt,
    status,
    background: false,
    error: null,
    incomplete_details: incomplete ? { reason: 'max_output_tokens' } : null,
    instructions: body.instructions ?? null,
    max_output_tokens: body.max_output_tokens ?? null,
    metadata: body.metadata ?? {},
    model: body.model,
    output,
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: body.temperature ?? 1,
    text: { format: body.text?.format ?? { type: 'text' } },
    tool_choice: 'auto',
    tools: [],
    top_p: body.top_p ?? 1,
    truncation: 'disabled',
    usage: usage && {
      input_tokens: usage.prompt_tokens,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: usage.completion_tokens,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: usage.total_tokens,
    },
    user: body.user ?? null,
  });
  const part = (text: string) => ({ type: 'output_text', text, annotations: [], logprobs: [] });
  const message = (status: string, content: object[]) => ({ id: itemId, type: 'message', status, role: 'assistant', content });
  /** The finished response: cut by length is `incomplete` (OpenAI's only length reason is max_output_tokens). */
  const finished = (text: string, finish: FinishReason | null) => {
    const incomplete = finish === 'length';
    const status = incomplete ? 'incomplete' : 'completed';
    return response(status, [message(status, [part(text)])], run.usage, incomplete);
  };

  if (!body.stream) {
    const [choice] = await collect(run.deltas(), 1);
    return { kind: 'json', body: finished(choice.text, choice.finishReason) };
  }

  async function* events(): AsyncGenerator<object> {
    let sequence = 0;
    const event = (type: string, fields: object) => ({ type, sequence_number: sequence++, ...fields });
    const at = { item_id: itemId, output_index: 0, content_index: 0 };
    const started = response('in_progress', [], null);
    yield event('response.created', { response: started });
    yield event('response.in_progress', { response: started });
    yield event('response.output_item.added', { output_index: 0, item: message('in_progress', []) });
    yield event('response.content_part.added', { ...at, part: part('') });
    let text = '';
    let finish: FinishReason | null = null;
    for await (const d of run.deltas()) {
      if (d.finishReason) finish = d.finishReason;
      if (!d.text) continue;
      text += d.text;
      yield event('response.output_text.delta', { ...at, delta: d.text, logprobs: [] });
    }
    const done = finished(text, finish);
    yield event('response.output_text.done', { ...at, text, logprobs: [] });
    yield event('response.content_part.done', { ...at, part: part(text) });
    yield event('response.output_item.done', { output_index: 0, item: done.output[0] });
    yield event(done.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: done });
  }
  return { kind: 'stream', chunks: events(), cancel: () => run.cancel(), events: true };
}

/** Fields that would change what is generated, refused by name rather than ignored. */
function refuseUnsupported(body: ResponsesRequest): void {
  const refuse = (param: string, what: string) => {
    throw new ApiError('unsupported_parameter', `${what} is not supported by this server.`, { param });
  };
  if (body.tools && body.tools.length > 0) refuse('tools', "'tools'");
  if (body.previous_response_id != null) refuse('previous_response_id', "'previous_response_id' (no responses are stored)");
  if (body.conversation != null) refuse('conversation', "'conversation' (no conversations are stored)");
  if (body.prompt != null) refuse('prompt', "'prompt' (stored prompt templates)");
  if (body.background === true) refuse('background', "'background: true'");
  if (body.reasoning && Object.values(body.reasoning).some((v) => v != null)) refuse('reasoning', "'reasoning'");
}

/** `instructions` as a system message first, then the input: a string is one user message. */
function messagesOf(body: ResponsesRequest): ChatMessage[] {
  const system: ChatMessage[] = body.instructions ? [{ role: 'system', content: body.instructions }] : [];
  if (typeof body.input === 'string') return [...system, { role: 'user', content: body.input }];
  return [
    ...system,
    ...body.input.map((item, i): ChatMessage => {
      if (!isMessage(item)) {
        throw new ApiError('unsupported_parameter', `Input items of type '${item.type}' are not supported; send messages with text content.`, {
          param: `input[${i}].type`,
        });
      }
      return { role: item.role, content: textOf(item.content, i) };
    }),
  ];
}

/** The schema admits a message item, or another item whose `type` is given and is not `message`. */
function isMessage(item: Exclude<ResponsesRequest['input'], string>[number]): item is ResponsesMessageItem {
  return item.type === undefined || item.type === 'message';
}

function textOf(content: ResponsesMessageItem['content'], i: number): string {
  if (typeof content === 'string') return content;
  return content
    .map((p, j) => {
      if ((p.type === 'input_text' || p.type === 'output_text') && typeof (p as { text?: unknown }).text === 'string') return (p as { text: string }).text;
      throw new ApiError('invalid_value', `Content part type '${p.type}' is not supported; this model reads text only.`, { param: `input[${i}].content[${j}].type` });
    })
    .join('');
}
