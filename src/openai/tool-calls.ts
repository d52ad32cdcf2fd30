import { createHash, randomUUID } from 'node:crypto';
import { ApiError } from '../core/errors.js';
import type { Grammar } from '../engine/structured/grammar.js';
import type { ResponseFormatSpec } from '../engine/structured/token-mask.js';
import type { ChatTemplate, TemplateTool, TemplateToolCall } from '../model/chat-template.js';
import { schemaFormat } from './response-format.js';
import type { ChatCompletionRequest, ChatTool } from './schemas.js';

/**
 * Tool calling on /v1/chat/completions and /v1/responses: which syntax a model's template teaches it, the grammar that
 * enforces `tool_choice: "required"` or a named function in that syntax, and the parser that turns
 * the model's text back into OpenAI `tool_calls`, incrementally, so streaming and non-streaming
 * responses are made by the same code from the same text.
 *
 * Syntaxes (as vLLM's `hermes` and `llama3_json` parsers read them):
 * - `hermes` (Qwen2.5, Qwen3 and other Hermes-style templates): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
 *   any number of them, after optional text (the message content);
 * - `llama3-json` (Llama 3.1+): the whole reply is `{"name": …, "parameters": {…}}`, optionally after
 *   `<|python_tag|>`, several separated by `;`.
 */
export type ToolSyntax = 'hermes' | 'llama3-json';

/**
 * The tool-call syntax a chat template teaches, or null when the template does not render tools
 * (no reference to `tools`) or renders them for a syntax this server does not parse.
 */
export function toolSyntaxOf(template: ChatTemplate): ToolSyntax | null {
  if (!template.referencesTools) return null;
  if (template.source.includes('<tool_call>')) return 'hermes';
  if (template.source.includes('<|start_header_id|>') && template.source.includes('"parameters"')) return 'llama3-json';
  return null;
}

/** What a chat request asks of tools, checked: what the template sees, what constrains decoding, what is parsed. */
export interface ToolPlan {
  /** For the template's `tools` (null: none). */
  templateTools: TemplateTool[] | null;
  /** The grammar for `required` / a named function; null for `auto` and `none`. */
  format: ResponseFormatSpec | null;
  /** The syntax to parse replies with; null under `none` (no calls are read). */
  parse: ToolSyntax | null;
  /** Most calls a reply keeps (1 with parallel_tool_calls false). */
  maxCalls: number;
}

/**
 * Where a request's tool fields are, for error messages and `param`: chat nests a function's fields
 * under `function`, the Responses API has them flat on the tool (and `text.format` for response_format).
 */
export interface ToolFields {
  /** The path of tool `i`'s function fields: `tools[i].function` on chat, `tools[i]` on /v1/responses. */
  fn(i: number): string;
  /** The path of a named tool_choice's name. */
  choiceName: string;
  /** The path of the structured-output format. */
  format: string;
}
export const CHAT_TOOL_FIELDS: ToolFields = { fn: (i) => `tools[${i}].function`, choiceName: 'tool_choice.function.name', format: 'response_format' };

/** The fields of a request that tool calling reads, in chat's shape (/v1/responses maps its own to it). */
export type ToolRequest = Pick<ChatCompletionRequest, 'tools' | 'tool_choice' | 'parallel_tool_calls' | 'response_format'>;

/**
 * Validates `tools`, `tool_choice` and `parallel_tool_calls` against the model (a 400 naming the field
 * otherwise) and plans the request. `tool_choice` defaults to `auto` with tools, `none` without (OpenAI's).
 */
export function toolPlanOf(body: ToolRequest, template: ChatTemplate, fields: ToolFields = CHAT_TOOL_FIELDS): ToolPlan {
  const tools = body.tools ?? [];
  const choice = body.tool_choice ?? (tools.length > 0 ? 'auto' : 'none');
  if (tools.length === 0) {
    if (choice !== 'none') {
      throw new ApiError('invalid_value', "'tool_choice' is only allowed when 'tools' are specified.", { param: 'tool_choice' });
    }
    return { templateTools: null, format: null, parse: null, maxCalls: 0 };
  }
  const syntax = toolSyntaxOf(template);
  if (!syntax) {
    const why = template.referencesTools ? "this model's chat template renders tools in a syntax this server does not parse" : "this model's chat template does not render tools";
    throw new ApiError('unsupported_parameter', `'tools' is not supported by this model: ${why}.`, { param: 'tools' });
  }
  const seen = new Set<string>();
  tools.forEach((t, i) => {
    if (seen.has(t.function.name)) {
      throw new ApiError('invalid_value', `${fields.fn(i)}.name '${t.function.name}' is given twice.`, { param: `${fields.fn(i)}.name` });
    }
    seen.add(t.function.name);
  });
  const maxCalls = body.parallel_tool_calls === false ? 1 : Number.POSITIVE_INFINITY;
  const templateTools = tools as TemplateTool[];
  if (choice === 'none') return { templateTools, format: null, parse: null, maxCalls: 0 };
  if (choice === 'auto') return { templateTools, format: null, parse: syntax, maxCalls };
  if (body.response_format && body.response_format.type !== 'text') {
    throw new ApiError('invalid_value', `'${fields.format}' cannot be combined with a tool_choice that forces a call; the call's arguments follow the tool's parameters schema.`, {
      param: fields.format,
    });
  }
  let chosen = tools.map((t, i) => ({ t, i }));
  if (typeof choice === 'object') {
    chosen = chosen.filter(({ t }) => t.function.name === choice.function.name);
    if (chosen.length === 0) {
      throw new ApiError('invalid_value', `tool_choice names the function '${choice.function.name}', which is not in 'tools'.`, { param: fields.choiceName });
    }
  }
  return { templateTools, format: toolCallFormat(syntax, chosen, fields), parse: syntax, maxCalls: 1 };
}

const lit = (text: string): Grammar => ({ t: 'lit', values: [text] });

/**
 * Exactly one call, in the model's own syntax, to one of `tools`, whose arguments follow the tool's
 * `parameters` schema (compiled as structured outputs compile a schema; `strict` as the tool says).
 */
export function toolCallFormat(syntax: ToolSyntax, tools: Array<{ t: ChatTool; i: number }>, fields: ToolFields = CHAT_TOOL_FIELDS): ResponseFormatSpec {
  const keys: string[] = [syntax];
  const cases = tools.map(({ t, i }) => {
    const { name, parameters, strict } = t.function;
    // No parameters: a function that takes none (OpenAI's reading), so its arguments are `{}`.
    const args = parameters == null ? null : schemaFormat(parameters, strict === true, `${fields.fn(i)}.parameters`);
    keys.push(`${name}:${args?.key ?? '{}'}`);
    // Names are [a-zA-Z0-9_-]: written in JSON as they are.
    const text = syntax === 'hermes' ? `${name}", "arguments": ` : `${name}", "parameters": `;
    const then: Grammar = args?.grammar ?? { t: 'obj', props: [] };
    return { text, then };
  });
  const [open, close] = syntax === 'hermes' ? ['<tool_call>\n{"name": "', '}\n</tool_call>'] : ['{"name": "', '}'];
  // One tool: its fixed text in one piece; several: the name chosen in one step, whatever their number.
  const call: Grammar[] = cases.length === 1 ? [lit(open + cases[0].text), cases[0].then] : [lit(open), { t: 'switch', cases }];
  const key = 'tools:' + createHash('sha256').update(keys.join('\n')).digest('hex');
  return { key, grammar: { t: 'seq', items: [...call, lit(close)] } };
}

/**
 * An earlier call as the template takes it: `arguments` parsed into an object (the Llama 3.1 and
 * Qwen2.5 templates print it with `tojson`; transformers and vLLM hand templates a dict); a 400
 * naming `param` when it is not JSON.
 */
export function templateCall(id: string, name: string, args: string, param: string): TemplateToolCall {
  let parsed: unknown;
  try {
    parsed = JSON.parse(args);
  } catch {
    throw new ApiError('invalid_value', `${param} is not valid JSON.`, { param });
  }
  return { id, type: 'function', function: { name, arguments: parsed } };
}

/** A fresh call id, as OpenAI's look: `call_` and 24 hex digits. */
export function callId(): string {
  return `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`;
}

/** What the parser finds, in order: message text, a call's start (its name), and pieces of its arguments. */
export type ToolEvent = { kind: 'content'; text: string } | { kind: 'call'; index: number; id: string; name: string } | { kind: 'args'; index: number; text: string };

const HERMES_OPEN = '<tool_call>';
const HERMES_CLOSE = '</tool_call>';
const PYTHON_TAG = '<|python_tag|>';
const HERMES_HEAD = /^\s*\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"(?:arguments|parameters)"\s*:/;
const LLAMA_HEAD = /^\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"([^"\\]*)"\s*,\s*"(?:parameters|arguments)"\s*:/;

/**
 * Finds where one JSON value ends in text arriving piece by piece: leading whitespace skipped, then
 * an object or array (bracket depth, strings and escapes respected), a string, or a bare scalar.
 */
class ValueScanner {
  started = false;
  done = false;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scalar = false;

  /** Reads `s` until the value ends; returns [index of the value's first character here, index after what was read]. */
  feed(s: string): [number, number] {
    let from = this.started ? 0 : -1;
    let i = 0;
    for (; i < s.length && !this.done; i++) {
      const ch = s[i];
      if (!this.started) {
        if (/\s/.test(ch)) continue;
        this.started = true;
        from = i;
        if (ch === '{' || ch === '[') this.depth = 1;
        else if (ch === '"') this.inString = true;
        else this.scalar = true;
      } else if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === '\\') this.escaped = true;
        else if (ch === '"') {
          this.inString = false;
          if (this.depth === 0) this.done = true;
        }
      } else if (this.scalar) {
        if (/[\s,}\]]/.test(ch)) {
          this.done = true;
          break; // the delimiter is not the value's
        }
      } else if (ch === '"') this.inString = true;
      else if (ch === '{' || ch === '[') this.depth++;
      else if (ch === '}' || ch === ']') {
        if (--this.depth === 0) this.done = true;
      }
    }
    return [from < 0 ? i : from, i];
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A whole call written in a shape the incremental reading does not follow (e.g. arguments before name). */
function wholeCall(text: string): { name: string; args: string } | null {
  try {
    const v: unknown = JSON.parse(text);
    if (!isObject(v) || typeof v.name !== 'string') return null;
    const args = v.arguments ?? v.parameters;
    return isObject(args) ? { name: v.name, args: JSON.stringify(args) } : null;
  } catch {
    return null;
  }
}

/**
 * One choice's reply → content and tool calls, fed as the text arrives. A call's name is reported
 * once its head (`{"name": "…", "arguments":`) is complete and its arguments as they are written
 * (the model's own text of the JSON value); text that may be the start of a call is held back
 * rather than reported as content. Only the text before the first call is content (as vLLM's
 * parsers); under `maxCalls` later calls are read and dropped. The result depends on the text
 * alone, never on how it was split.
 */
export class ToolCallParser {
  private pending = '';
  private raw = '';
  private state: 'text' | 'start' | 'plain' | 'head' | 'args' | 'tail' | 'between' | 'done';
  private calls = 0;
  private emitted = 0;
  private current = -1;
  private scanner = new ValueScanner();

  constructor(
    private readonly syntax: ToolSyntax,
    private readonly maxCalls = Number.POSITIVE_INFINITY,
    private readonly newId: () => string = callId,
  ) {
    this.state = syntax === 'hermes' ? 'text' : 'start';
  }

  /** How many calls were reported. */
  get callCount(): number {
    return this.emitted;
  }

  push(text: string): ToolEvent[] {
    this.pending += text;
    this.raw += text;
    const out: ToolEvent[] = [];
    this.run(out, false);
    return out;
  }

  /** The reply is over: what was held back is settled. */
  end(): ToolEvent[] {
    const out: ToolEvent[] = [];
    this.run(out, true);
    return out;
  }

  private content(out: ToolEvent[], text: string): void {
    if (text && this.calls === 0) out.push({ kind: 'content', text });
  }

  private startCall(out: ToolEvent[], name: string): void {
    this.calls++;
    if (this.emitted < this.maxCalls) {
      this.current = this.emitted++;
      out.push({ kind: 'call', index: this.current, id: this.newId(), name });
    } else this.current = -1;
    this.scanner = new ValueScanner();
  }

  private args(out: ToolEvent[], text: string): void {
    if (text && this.current >= 0) out.push({ kind: 'args', index: this.current, text });
  }

  private run(out: ToolEvent[], final: boolean): void {
    for (;;) {
      switch (this.state) {
        case 'done':
          this.pending = '';
          return;
        case 'plain':
          this.content(out, this.pending);
          this.pending = '';
          return;
        case 'text': {
          // hermes: content until `<tool_call>`; a tail that may begin one waits.
          const at = this.pending.indexOf(HERMES_OPEN);
          if (at >= 0) {
            this.content(out, this.pending.slice(0, at));
            this.pending = this.pending.slice(at + HERMES_OPEN.length);
            this.state = 'head';
            continue;
          }
          const keep = final ? 0 : heldPrefix(this.pending, HERMES_OPEN);
          this.content(out, this.pending.slice(0, this.pending.length - keep));
          this.pending = this.pending.slice(this.pending.length - keep);
          return;
        }
        case 'start': {
          // llama3-json: a reply that starts (after whitespace, maybe <|python_tag|>) with '{' is read as calls.
          const t = this.pending.trimStart();
          if (t.startsWith(PYTHON_TAG)) {
            this.pending = t.slice(PYTHON_TAG.length);
            continue;
          }
          if (t.startsWith('{')) {
            this.pending = t;
            this.state = 'head';
            continue;
          }
          if (!final && (t === '' || PYTHON_TAG.startsWith(t))) return;
          this.pending = this.raw;
          this.state = 'plain';
          continue;
        }
        case 'head': {
          const m = (this.syntax === 'hermes' ? HERMES_HEAD : LLAMA_HEAD).exec(this.pending);
          if (m) {
            this.startCall(out, m[1]);
            this.pending = this.pending.slice(m[0].length);
            this.state = 'args';
            continue;
          }
          if (this.syntax === 'hermes') {
            const close = this.pending.indexOf(HERMES_CLOSE);
            if (close < 0 && !final) return;
            const body = close < 0 ? this.pending : this.pending.slice(0, close);
            const call = close < 0 ? null : wholeCall(body);
            if (call) {
              this.startCall(out, call.name);
              this.args(out, call.args);
            } else this.content(out, HERMES_OPEN + body + (close < 0 ? '' : HERMES_CLOSE));
            this.pending = close < 0 ? '' : this.pending.slice(close + HERMES_CLOSE.length);
            this.state = 'text';
            if (close < 0) return;
            continue;
          }
          // llama3-json: the whole rest is one value, settled at the end.
          if (!final) return;
          const call = wholeCall(this.pending);
          if (call) {
            this.startCall(out, call.name);
            this.args(out, call.args);
          } else if (this.calls === 0) this.content(out, this.raw);
          this.state = 'done';
          continue;
        }
        case 'args': {
          const [from, to] = this.scanner.feed(this.pending);
          this.args(out, this.pending.slice(from, to));
          this.pending = this.pending.slice(to);
          if (!this.scanner.done) return;
          this.state = 'tail';
          continue;
        }
        case 'tail': {
          if (this.syntax === 'hermes') {
            const close = this.pending.indexOf(HERMES_CLOSE);
            if (close < 0) {
              if (final) this.pending = '';
              return;
            }
            this.pending = this.pending.slice(close + HERMES_CLOSE.length);
            this.state = 'text';
            continue;
          }
          const t = this.pending.trimStart();
          if (t === '') {
            this.pending = '';
            if (final) this.state = 'done';
            else return;
            continue;
          }
          this.pending = t.slice(1);
          this.state = t[0] === '}' ? 'between' : 'done';
          continue;
        }
        case 'between': {
          // llama3-json: `; {…}` is another call; anything else ends the calls.
          const t = this.pending.replace(/^[\s;]+/, '');
          if (t === '') {
            if (final) this.state = 'done';
            else return;
            continue;
          }
          this.pending = t;
          this.state = t[0] === '{' ? 'head' : 'done';
          continue;
        }
      }
    }
  }
}

/** The length of the longest end of `text` that is the start of `tag` (and not all of it). */
function heldPrefix(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) if (tag.startsWith(text.slice(text.length - n))) return n;
  return 0;
}

export interface ParsedReply {
  content: string | null;
  toolCalls: Array<{ id: string; type: 'function'; function: { name: string; arguments: string } }>;
}

/** A whole reply's content and calls (the non-streaming response), from the same parser the stream uses. */
export function parseReply(syntax: ToolSyntax, text: string, maxCalls = Number.POSITIVE_INFINITY, newId: () => string = callId): ParsedReply {
  const p = new ToolCallParser(syntax, maxCalls, newId);
  let content = '';
  const toolCalls: ParsedReply['toolCalls'] = [];
  for (const e of [...p.push(text), ...p.end()]) {
    if (e.kind === 'content') content += e.text;
    else if (e.kind === 'call') toolCalls.push({ id: e.id, type: 'function', function: { name: e.name, arguments: '' } });
    else toolCalls[e.index].function.arguments += e.text;
  }
  return { content: toolCalls.length > 0 && content.trim() === '' ? null : content, toolCalls };
}
