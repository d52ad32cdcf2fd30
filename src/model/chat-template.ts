import { Environment as JinjaEnvironment, Interpreter as JinjaInterpreter, Template } from '@huggingface/jinja';

/**
 * The parts of @huggingface/jinja's runtime used here. Its index.d.ts re-exports Environment and
 * Interpreter from './runtime' without a file extension, which NodeNext resolution does not follow
 * (TypeScript sees them as unresolved); these are their signatures from dist/runtime.d.ts.
 */
interface RuntimeValue {
  type: string;
  value: unknown;
  toString(): string;
}
interface Environment {
  set(name: string, value: unknown): RuntimeValue;
}
type Statement = { type: string } | undefined;
interface Interpreter {
  run(program: unknown): RuntimeValue;
  evaluate(statement: Statement, environment: Environment): RuntimeValue;
}
const Environment = JinjaEnvironment as new () => Environment;
const Interpreter = JinjaInterpreter as new (env: Environment) => Interpreter;

export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
  /** An assistant turn's calls, as transformers expects them: `arguments` an object, not a JSON string. */
  tool_calls?: TemplateToolCall[];
  /** A `tool` turn: the id of the call it answers. */
  tool_call_id?: string;
}

export interface TemplateToolCall {
  id?: string;
  type: 'function';
  function: { name: string; arguments: unknown };
}

/** A tool as `apply_chat_template(tools=...)` takes it: `{type: 'function', function: {name, description, parameters}}`. */
export type TemplateTool = Record<string, unknown>;

/**
 * The tokenizer's special tokens as transformers hands them to a chat template
 * (`PreTrainedTokenizerBase.special_tokens_map`): bos_token, eos_token, unk_token, sep_token, pad_token,
 * cls_token, mask_token (strings) and additional_special_tokens (a list), each only when the tokenizer
 * has it. A token the tokenizer lacks (Qwen has no BOS) is absent, so the template sees it undefined.
 */
export type SpecialTokens = Record<string, string | string[]>;

/**
 * Used when the model package has no `chat_template` (base models such as stories260K): the messages'
 * contents joined by newlines after BOS, with no role markers, so the model simply continues the text.
 */
export const PLAIN_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% if not loop.last %}\n{% endif %}{% endfor %}";

/** The template itself refused the conversation through `raise_exception(message)`. */
export class TemplateRaisedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateRaisedError';
  }
}

export interface RenderOptions {
  /**
   * Append the template's opening of an assistant turn. The gateway always wants it (it generates the
   * reply); transformers' own default is false, so the parity test renders both ways.
   */
  addGenerationPrompt?: boolean;
  /** The request's tools (transformers' `tools` argument); none when absent or empty. */
  tools?: TemplateTool[] | null;
}

/**
 * Renders chat messages with the model's own Jinja template, compiled once, the way transformers renders
 * it (`render_jinja_template`), so a prompt here is byte-for-byte the prompt the model was trained on:
 * - @huggingface/jinja's Template already lexes with trim_blocks and lstrip_blocks (transformers' settings),
 *   and has loop controls, `{% generation %}` and a `tojson` that is json.dumps with ensure_ascii=False;
 * - `tools` is the request's list of tools, or none as transformers passes it when a request has none
 *   (`tools is defined` is true there, `tools is none` too); `documents` is always none;
 * - the globals are the library's own, two replaced: `raise_exception` throws a TemplateRaisedError
 *   carrying the template's message (which the 400 names), and `strftime_now` is Python's strftime in
 *   the C locale (the library's knows eight directives and names months in the process's locale);
 * - loop controls keep what the iteration printed before them, as jinja2 does (LoopFaithfulInterpreter).
 * A gap left: printing a boolean or none directly (`{{ flag }}`) gives "true" / "" where jinja2 gives
 * "True" / "None"; the Llama 3 and Qwen3 templates never do, they test such values.
 * Nothing else is passed: no `enable_thinking` and the like, so Qwen3's template renders its default
 * (thinking) turn, as transformers does when the caller passes nothing.
 */
export class ChatTemplate {
  private readonly template: Template;
  readonly isFallback: boolean;
  private toolsReferenced: boolean | undefined;

  private readonly sourceText: string;

  constructor(
    source: string | null,
    private readonly specials: SpecialTokens,
  ) {
    this.isFallback = source === null;
    this.sourceText = source ?? PLAIN_CHAT_TEMPLATE;
    this.template = new Template(source ?? PLAIN_CHAT_TEMPLATE);
  }

  /** The template's source (the fallback's when the model has none). */
  get source(): string {
    return this.sourceText;
  }

  /**
   * Whether the template reads the `tools` variable anywhere (an identifier in its syntax tree, not a
   * word in its text): the templates that render tools (Llama 3.1+, Qwen2.5, Qwen3) all do.
   */
  get referencesTools(): boolean {
    this.toolsReferenced ??= mentionsIdentifier(this.template.parsed, 'tools');
    return this.toolsReferenced;
  }

  /** Throws TemplateRaisedError when the template refuses the messages, or the library's Error when it fails on them. */
  render(messages: ChatMessage[], opts: RenderOptions = {}): string {
    // Template.render would declare the library's own globals first, and a variable cannot be declared
    // twice, so the environment is built here: our globals, then the variables transformers passes.
    const env = new Environment();
    for (const [name, value] of Object.entries(GLOBALS)) env.set(name, value);
    for (const [name, value] of Object.entries(this.specials)) env.set(name, value);
    env.set('messages', messages);
    env.set('tools', opts.tools && opts.tools.length > 0 ? opts.tools : null);
    env.set('documents', null);
    env.set('add_generation_prompt', opts.addGenerationPrompt ?? true);
    return String(new LoopFaithfulInterpreter(env).run(this.template.parsed).value);
  }
}

/** Whether a parsed template's tree holds an identifier named `name` (iterative: trees can be deep). */
function mentionsIdentifier(tree: unknown, name: string): boolean {
  const stack: unknown[] = [tree];
  while (stack.length > 0) {
    const node = stack.pop();
    if (typeof node !== 'object' || node === null) continue;
    const n = node as { type?: unknown; value?: unknown };
    if (n.type === 'Identifier' && n.value === name) return true;
    for (const child of Object.values(node)) if (typeof child === 'object' && child !== null) stack.push(child);
  }
  return false;
}

/** The library's BreakControl / ContinueControl (not exported), carrying what its iteration printed before it. */
type LoopControl = Error & { partial?: string };
const isLoopControl = (err: unknown): err is LoopControl =>
  err instanceof Error && (err.constructor.name === 'BreakControl' || err.constructor.name === 'ContinueControl');

/**
 * @huggingface/jinja (0.5.11, and 0.5.13 still) drops what a loop iteration printed before its
 * `{% break %}` or `{% continue %}`: the control is thrown out of the block that was collecting that
 * output. jinja2 keeps it (`{% for x in [1,2,3] %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% endfor %}`
 * is "12" there, "1" in the library). This interpreter carries the output along with the control up to
 * the loop's body, which returns it as the iteration's output; a break then ends the loop at the next
 * iteration's start, before its body prints anything.
 */
class LoopFaithfulInterpreter extends Interpreter {
  readonly loops: { body: unknown; pendingBreak: LoopControl | null }[] = [];

  override evaluate(statement: Statement, environment: Environment): RuntimeValue {
    if (statement?.type !== 'For') return super.evaluate(statement, environment);
    this.loops.push({ body: (statement as unknown as { body: unknown }).body, pendingBreak: null });
    try {
      return super.evaluate(statement, environment);
    } finally {
      this.loops.pop();
    }
  }
}

// evaluateBlock is private in the library's declarations (a compile-time mark only), so it is replaced on
// the prototype; the parity test (test/integration/chat-template-parity.test.ts) pins its behaviour.
type BlockEvaluator = (this: LoopFaithfulInterpreter, statements: Statement[], environment: Environment) => RuntimeValue;
const interpreterProto = LoopFaithfulInterpreter.prototype as unknown as { evaluateBlock: BlockEvaluator };
const libraryEvaluateBlock = interpreterProto.evaluateBlock;
interpreterProto.evaluateBlock = function (statements, environment) {
  const loop = this.loops.at(-1);
  const isLoopBody = loop !== undefined && loop.body === statements;
  if (isLoopBody && loop.pendingBreak) throw loop.pendingBreak;
  const stringValue = libraryEvaluateBlock.call(this, [], environment);
  let out = '';
  for (const statement of statements) {
    try {
      const value = this.evaluate(statement, environment);
      if (value.type !== 'NullValue' && value.type !== 'UndefinedValue') out += value.toString();
    } catch (err) {
      if (!isLoopControl(err)) throw err;
      out += err.partial ?? '';
      if (!isLoopBody) {
        err.partial = out;
        throw err;
      }
      if (err.constructor.name === 'BreakControl') {
        err.partial = '';
        loop.pendingBreak = err;
      }
      break;
    }
  }
  // The library's StringValue class is not exported: make one like the empty block's.
  return new (stringValue.constructor as new (value: string) => RuntimeValue)(out);
};

/** The globals a template sees: the library's own (Template.render's setupGlobals), two of them replaced. */
const GLOBALS: Record<string, unknown> = {
  true: true,
  false: false,
  none: null,
  True: true,
  False: false,
  None: null,
  range: pythonRange,
  raise_exception: (message: unknown) => {
    throw new TemplateRaisedError(String(message));
  },
  strftime_now: (format: unknown) => strftime(new Date(), String(format)),
};

/** Python's range(stop) / range(start, stop[, step]). */
function pythonRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

/** Python's `datetime.strftime` in the C locale, local time, for the directives templates use; others stay as written. */
export function strftime(date: Date, format: string): string {
  const pad = (n: number, width = 2) => String(n).padStart(width, '0');
  const hour12 = date.getHours() % 12 === 0 ? 12 : date.getHours() % 12;
  const startOfYear = new Date(date.getFullYear(), 0, 1);
  const dayOfYear = Math.round((new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime() - startOfYear.getTime()) / 86_400_000) + 1;
  const directives: Record<string, () => string> = {
    a: () => DAYS[date.getDay()].slice(0, 3),
    A: () => DAYS[date.getDay()],
    b: () => MONTHS[date.getMonth()].slice(0, 3),
    B: () => MONTHS[date.getMonth()],
    d: () => pad(date.getDate()),
    H: () => pad(date.getHours()),
    I: () => pad(hour12),
    j: () => pad(dayOfYear, 3),
    m: () => pad(date.getMonth() + 1),
    M: () => pad(date.getMinutes()),
    p: () => (date.getHours() < 12 ? 'AM' : 'PM'),
    S: () => pad(date.getSeconds()),
    y: () => pad(date.getFullYear() % 100),
    Y: () => String(date.getFullYear()),
    '%': () => '%',
  };
  return format.replace(/%(.)/gs, (whole, d: string) => directives[d]?.() ?? whole);
}
