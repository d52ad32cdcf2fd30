import { ApiError } from '../core/errors.js';
import type { FinishReason } from '../engine/worker-messages.js';
import type { ChatMessage } from '../model/chat-template.js';
import type { Gateway } from '../serving/gateway.js';
import type { Usage } from '../serving/generation.js';
import type { Caller } from '../serving/model-routing.js';
import { requestId, samplingFrom, targetOf } from './request-params.js';
import type { ResponsesFunctionCallItem, ResponsesFunctionCallOutputItem, ResponsesFunctionTool, ResponsesMessageItem, ResponsesRequest } from './responses-schemas.js';
import type { ChatTool } from './schemas.js';
import { renderMessages } from './serve-chat.js';
import { collect, type ServeResult } from './serve-result.js';
import { responseFormatOf } from './response-format.js';
import { templateCall, ToolCallParser, toolPlanOf, type ToolEvent, type ToolFields, type ToolRequest } from './tool-calls.js';

/**
 * `POST /v1/responses` (OpenAI's Responses API): `instructions` + `input` → the chat template → one
 * generation → a `response` object, or its documented event stream. Function tools go through the
 * same plan, grammar and parser as chat's (tool-calls.ts): the reply's text before any call is a
 * `message` item, each call a `function_call` item. Stateless: nothing is stored, so `store: true`
 * is answered as `store: false` (vLLM does the same without its store).
 */
export async function serveResponses(gw: Gateway, body: ResponsesRequest, caller: Caller, signal: AbortSignal, optOut = false): Promise<ServeResult> {
  const id = requestId('resp', '_');
  const { services: m, route } = await gw.modelFor(body.model, caller);
  refuseUnsupported(body);
  const toolRequest = toolRequestOf(body);
  const tools = toolPlanOf(toolRequest, m.chatTemplate, RESPONSES_TOOL_FIELDS);
  const maxCalls = Math.min(tools.maxCalls, body.max_tool_calls ?? Number.POSITIVE_INFINITY);
  // text.format carries json_schema's fields flat (name, schema, strict beside type).
  const responseFormat = responseFormatOf(body.text?.format, 'text.format', true);
  const format = tools.format ?? responseFormat;
  // Under a text.format the reply is that document: it is not read for calls.
  const syntax = responseFormat ? null : tools.parse;
  const prompt = renderMessages(m.chatTemplate, messagesOf(body, m.chatTemplate.referencesTools === true), 'input', { tools: tools.templateTools });
  const promptIds = await m.encoder.encode(prompt, false, 'input');
  const run = await m.inference.generate({
    promptIds,
    promptParam: 'input',
    maxTokens: body.max_output_tokens ?? null,
    maxTokensParam: 'max_output_tokens',
    ...samplingFrom({ temperature: body.temperature, top_p: body.top_p }, -1, 1, m.samplingDefaults),
    ...targetOf(body, route, caller, optOut, id, signal),
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
    max_tool_calls: body.max_tool_calls ?? null,
    metadata: body.metadata ?? {},
    model: body.model,
    output,
    parallel_tool_calls: body.parallel_tool_calls ?? true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: body.temperature ?? 1,
    text: { format: body.text?.format ?? { type: 'text' } },
    tool_choice: body.tool_choice ?? 'auto',
    tools: (toolRequest.tools ?? []).map((t) => ({
      type: 'function',
      name: t.function.name,
      description: t.function.description ?? null,
      parameters: t.function.parameters ?? null,
      strict: t.function.strict === true,
    })),
    top_p: body.top_p ?? 1,
    truncation: 'disabled',
    usage: usage && {
      input_tokens: usage.prompt_tokens,
      input_tokens_details: { cached_tokens: usage.prompt_tokens_details.cached_tokens },
      output_tokens: usage.completion_tokens,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: usage.total_tokens,
    },
    user: body.user ?? null,
  });
  /** The finished response: cut by length is `incomplete` (OpenAI's only length reason is max_output_tokens). */
  const statusOf = (finish: FinishReason | null) => (finish === 'length' ? 'incomplete' : 'completed');
  const finished = (output: OutputItems, finish: FinishReason | null) => response(statusOf(finish), output.items, run.usage, finish === 'length');
  /** The reply's text → output items, read for calls when tools are: the same steps streaming or not. */
  const reader = () => {
    const output = new OutputItems(syntax !== null);
    const parser = syntax ? new ToolCallParser(syntax, maxCalls) : null;
    const read = (text: string, finish: FinishReason | null | undefined): OutputEvent[] => {
      const events = parser ? output.apply(parser.push(text)) : output.apply(text ? [{ kind: 'content', text }] : []);
      if (finish) events.push(...(parser ? output.apply(parser.end()) : []), ...output.end(statusOf(finish)));
      return events;
    };
    return { output, start: () => output.start(), read };
  };

  if (!body.stream) {
    const [choice] = await collect(run.deltas(), 1);
    const r = reader();
    r.start();
    r.read(choice.text, choice.finishReason ?? 'stop');
    return { kind: 'json', body: finished(r.output, choice.finishReason) };
  }

  async function* events(): AsyncGenerator<object> {
    let sequence = 0;
    const event = ({ type, ...fields }: OutputEvent) => ({ type, sequence_number: sequence++, ...fields });
    const started = response('in_progress', [], null);
    yield event({ type: 'response.created', response: started });
    yield event({ type: 'response.in_progress', response: started });
    const r = reader();
    for (const e of r.start()) yield event(e);
    let finish: FinishReason | null = null;
    for await (const d of run.deltas()) {
      if (d.finishReason) finish = d.finishReason;
      for (const e of r.read(d.text, d.finishReason)) yield event(e);
    }
    // A run that ends without a finish reason (cancelled) still closes what it opened.
    if (finish === null) for (const e of r.read('', 'stop')) yield event(e);
    const done = finished(r.output, finish);
    yield event({ type: done.status === 'completed' ? 'response.completed' : 'response.incomplete', response: done });
  }
  return { kind: 'stream', chunks: events(), cancel: () => run.cancel(), events: true };
}

/** A stream event before its sequence number. */
type OutputEvent = { type: string } & Record<string, unknown>;
interface MessageItem {
  id: string;
  type: 'message';
  status: string;
  role: 'assistant';
  content: Array<{ type: 'output_text'; text: string; annotations: []; logprobs: [] }>;
}
interface CallItem {
  id: string;
  type: 'function_call';
  status: string;
  call_id: string;
  name: string;
  arguments: string;
}
const textPart = (text: string) => ({ type: 'output_text' as const, text, annotations: [] as [], logprobs: [] as [] });

/**
 * The response's `output` as the reply is read, with the stream events that build it: a `message`
 * item for text, a `function_call` item per call, each opened, filled and closed in order (the last
 * one closed with the response's status, the others `completed`). Without tools the message is
 * opened before any text (so an empty reply is an empty message); with tools it is opened by the
 * first text that is not white space, so white space before a call makes no item, and a reply with
 * no call always ends with one message.
 */
class OutputItems {
  readonly items: Array<MessageItem | CallItem> = [];
  private open = false;
  private held = '';

  constructor(private readonly readsCalls: boolean) {}

  start(): OutputEvent[] {
    return this.readsCalls ? [] : this.openMessage();
  }

  apply(parsed: ToolEvent[]): OutputEvent[] {
    const out: OutputEvent[] = [];
    for (const e of parsed) {
      if (e.kind === 'content') {
        if (!this.open && this.readsCalls) {
          this.held += e.text;
          if (this.held.trim() === '') continue;
          out.push(...this.openMessage());
          out.push(...this.text(this.held));
          this.held = '';
        } else out.push(...this.text(e.text));
      } else if (e.kind === 'call') {
        out.push(...this.close('completed'));
        const item: CallItem = { id: requestId('fc', '_'), type: 'function_call', status: 'in_progress', call_id: e.id, name: e.name, arguments: '' };
        this.items.push(item);
        this.open = true;
        out.push({ type: 'response.output_item.added', output_index: this.items.length - 1, item: { ...item } });
      } else if (e.text) {
        const item = this.items.at(-1) as CallItem;
        item.arguments += e.text;
        out.push({ type: 'response.function_call_arguments.delta', item_id: item.id, output_index: this.items.length - 1, delta: e.text });
      }
    }
    return out;
  }

  /** The reply is over: what is open closes with `status`; a reply that made no item is one message. */
  end(status: string): OutputEvent[] {
    const out: OutputEvent[] = [];
    if (this.items.length === 0) out.push(...this.openMessage(), ...this.text(this.held));
    this.held = '';
    out.push(...this.close(status));
    return out;
  }

  private openMessage(): OutputEvent[] {
    const item: MessageItem = { id: requestId('msg', '_'), type: 'message', status: 'in_progress', role: 'assistant', content: [textPart('')] };
    this.items.push(item);
    this.open = true;
    const at = this.items.length - 1;
    return [
      { type: 'response.output_item.added', output_index: at, item: { ...item, content: [] } },
      { type: 'response.content_part.added', item_id: item.id, output_index: at, content_index: 0, part: textPart('') },
    ];
  }

  private text(text: string): OutputEvent[] {
    if (!text) return [];
    const item = this.items.at(-1) as MessageItem;
    item.content[0].text += text;
    return [{ type: 'response.output_text.delta', item_id: item.id, output_index: this.items.length - 1, content_index: 0, delta: text, logprobs: [] }];
  }

  private close(status: string): OutputEvent[] {
    if (!this.open) return [];
    this.open = false;
    const at = this.items.length - 1;
    const item = this.items[at];
    item.status = status;
    if (item.type === 'message') {
      const where = { item_id: item.id, output_index: at, content_index: 0 };
      const text = item.content[0].text;
      return [
        { type: 'response.output_text.done', ...where, text, logprobs: [] },
        { type: 'response.content_part.done', ...where, part: textPart(text) },
        { type: 'response.output_item.done', output_index: at, item: structuredClone(item) },
      ];
    }
    return [
      { type: 'response.function_call_arguments.done', item_id: item.id, output_index: at, name: item.name, arguments: item.arguments },
      { type: 'response.output_item.done', output_index: at, item: { ...item } },
    ];
  }
}

/** Where the Responses API keeps tool fields: a function's fields flat on the tool. */
const RESPONSES_TOOL_FIELDS: ToolFields = { fn: (i) => `tools[${i}]`, choiceName: 'tool_choice.name', format: 'text.format' };

/**
 * The request's tool fields in chat's shape, for the shared plan: a flat function tool nests its
 * fields under `function` (as the template takes tools, transformers' shape); other tool types and
 * tool choices are refused by name.
 */
function toolRequestOf(body: ResponsesRequest): ToolRequest {
  const tools = (body.tools ?? []).map((t, i): ChatTool => {
    if (t.type !== 'function') {
      throw new ApiError('unsupported_parameter', `Tools of type '${t.type}' are not supported; this server serves function tools.`, { param: `tools[${i}].type` });
    }
    const { name, description, parameters, strict } = t as ResponsesFunctionTool;
    const fn = { name, ...(description != null ? { description } : {}), ...(parameters != null ? { parameters } : {}), ...(strict != null ? { strict } : {}) };
    return { type: 'function', function: fn };
  });
  const choice = body.tool_choice;
  let toolChoice: ToolRequest['tool_choice'];
  if (choice == null || typeof choice === 'string') toolChoice = choice;
  else if (choice.type === 'function' && typeof choice.name === 'string') toolChoice = { type: 'function', function: { name: choice.name } };
  else throw new ApiError('unsupported_parameter', `tool_choice of type '${choice.type}' is not supported; use auto, none, required or {type: "function", name}.`, { param: 'tool_choice' });
  return { tools, tool_choice: toolChoice, parallel_tool_calls: body.parallel_tool_calls, response_format: body.text?.format };
}

/** Fields that would change what is generated, refused by name rather than ignored. */
function refuseUnsupported(body: ResponsesRequest): void {
  const refuse = (param: string, what: string) => {
    throw new ApiError('unsupported_parameter', `${what} is not supported by this server.`, { param });
  };
  if (body.previous_response_id != null) refuse('previous_response_id', "'previous_response_id' (no responses are stored)");
  if (body.conversation != null) refuse('conversation', "'conversation' (no conversations are stored)");
  if (body.prompt != null) refuse('prompt', "'prompt' (stored prompt templates)");
  if (body.background === true) refuse('background', "'background: true'");
  if (body.reasoning && Object.values(body.reasoning).some((v) => v != null)) refuse('reasoning', "'reasoning'");
}

/**
 * `instructions` as a system message first, then the input: a string is one user message. A
 * `function_call` item joins the assistant turn before it (the text a reply gave before its calls,
 * or the calls before it in one reply) or starts one, as chat's `tool_calls`; a `function_call_output`
 * is a `tool` turn. `toolsRendered`: the template reads tools; otherwise those items are refused.
 */
function messagesOf(body: ResponsesRequest, toolsRendered: boolean): ChatMessage[] {
  const out: ChatMessage[] = body.instructions ? [{ role: 'system', content: body.instructions }] : [];
  if (typeof body.input === 'string') return [...out, { role: 'user', content: body.input }];
  body.input.forEach((item, i) => {
    if (isMessage(item)) {
      out.push({ role: item.role, content: textOf(item.content, i) });
      return;
    }
    const served = item.type === 'function_call' || item.type === 'function_call_output';
    if (!served || !toolsRendered) {
      const why = served ? "this model's chat template does not render tool calls" : 'send messages with text content, function_call or function_call_output';
      throw new ApiError('unsupported_parameter', `Input items of type '${item.type}' are not supported: ${why}.`, { param: `input[${i}].type` });
    }
    if (item.type === 'function_call') {
      const call = item as ResponsesFunctionCallItem;
      const tc = templateCall(call.call_id, call.name, call.arguments, `input[${i}].arguments`);
      const last = out.at(-1);
      if (last?.role === 'assistant') (last.tool_calls ??= []).push(tc);
      else out.push({ role: 'assistant', content: '', tool_calls: [tc] });
      return;
    }
    const result = item as ResponsesFunctionCallOutputItem;
    out.push({ role: 'tool', content: textOf(result.output, i, 'output'), tool_call_id: result.call_id });
  });
  return out;
}

/** The schema admits a message item, or another item whose `type` is given and is not `message`. */
function isMessage(item: Exclude<ResponsesRequest['input'], string>[number]): item is ResponsesMessageItem {
  return item.type === undefined || item.type === 'message';
}

function textOf(content: ResponsesMessageItem['content'], i: number, field = 'content'): string {
  if (typeof content === 'string') return content;
  return content
    .map((p, j) => {
      if ((p.type === 'input_text' || p.type === 'output_text') && typeof (p as { text?: unknown }).text === 'string') return (p as { text: string }).text;
      throw new ApiError('invalid_value', `Content part type '${p.type}' is not supported; this model reads text only.`, { param: `input[${i}].${field}[${j}].type` });
    })
    .join('');
}
