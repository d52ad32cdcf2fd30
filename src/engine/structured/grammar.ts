/**
 * Structured outputs, the automaton: a byte-level pushdown machine for compact JSON restricted by a
 * schema. The protocol layer compiles a JSON Schema into a `Grammar` (plain data, so it crosses into
 * the engine worker); here it becomes frames on an immutable stack, advanced one byte at a time, so
 * a token's bytes (a multi-byte character split over tokens too) are checked by walking them.
 *
 * Output is compact JSON (no whitespace outside strings, object keys in schema order), as OpenAI's
 * is: that keeps the number of distinct states small, which is what makes per-state token masks
 * cacheable (see token-mask.ts).
 */
import { BODY, CLOSED, completesHigh, entersEscape, lengthStep, REFUSED, STRING_MODES, stringStep } from './string-bytes.js';
import type { StringPosition } from './string-tables.js';

export type Grammar =
  /** An object with these keys, in this order; optional ones may be left out. */
  | { t: 'obj'; props: Array<{ key: string; value: Grammar; required: boolean }> }
  /** max -1: unbounded. */
  | { t: 'arr'; items: Grammar; min: number; max: number }
  /** A string; `min`/`max`: its length in code points (max −1: any), when the schema bounds it. */
  | { t: 'str'; min?: number; max?: number }
  /** -?(0|[1-9]d{0,14})(.d{1,15})? ; `int`: without the fraction. No exponent. */
  | { t: 'num'; int: boolean }
  /** One of these JSON texts exactly (enum, const, boolean, null). */
  | { t: 'lit'; values: string[] }
  /** Any JSON value (objects and arrays nested up to MAX_GENERIC_DEPTH). */
  | { t: 'any' }
  /** Any JSON object: `json_object`'s root. */
  | { t: 'anyobj' }
  | { t: 'or'; options: Grammar[] }
  /** These, one after another (tool calls: fixed text around a schema's value). */
  | { t: 'seq'; items: Grammar[] }
  /**
   * One of these texts, then the grammar that goes with it (a tool's name, then its arguments): one
   * choice however many cases, where an `or` of sequences would keep a stack per case alive.
   */
  | { t: 'switch'; cases: Array<{ text: string; then: Grammar }> };

/** Nesting bound of free-form JSON (json_object), so its states stay few. */
export const MAX_GENERIC_DEPTH = 8;
/** Digits of a number's integer part and of its fraction: within a double's exact range. */
export const MAX_DIGITS = 15;

/** A stack of frames, innermost first; null: the value is complete. */
export type Stack = Cell | null;
export interface Cell {
  readonly f: Frame;
  readonly next: Stack;
}

interface Frame {
  /** Identifies the frame's state, so equal stacks share cached token masks. */
  readonly key: string;
  /** Feeds byte `b` to the stack `self` (whose top is this frame); pushes every resulting stack. */
  step(b: number, self: Cell, out: Stack[]): void;
  /** Whether the stack `self` may end here (the value is complete). */
  canEnd(self: Cell): boolean;
}

const cell = (f: Frame, next: Stack): Cell => ({ f, next });

export function advance(s: Stack, b: number, out: Stack[]): void {
  if (s !== null) s.f.step(b, s, out);
}

export function canEnd(s: Stack): boolean {
  return s === null || s.f.canEnd(s);
}

export function stackKey(s: Stack): string {
  let k = '';
  for (let c = s; c !== null; c = c.next) k += c.f.key + '|';
  return k;
}

const Q = 0x22;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;

/** Inside a string, after the opening quote; `mode` is the byte machine's (string-bytes.ts). */
class StrFrame implements Frame {
  readonly key: string;
  constructor(readonly mode: number) {
    this.key = `S${mode}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const next = stringStep(this.mode, b);
    if (next === CLOSED) out.push(self.next);
    else if (next === this.mode) out.push(self); // the common case allocates nothing
    else if (next !== REFUSED) out.push(cell(STR[next], self.next));
  }
  canEnd(): boolean {
    return false;
  }
}
const STR = Array.from({ length: STRING_MODES }, (_, m) => new StrFrame(m));

/**
 * Inside a string with `minLength`/`maxLength` (max −1: none), `count` code points written so far,
 * `high` when the last one was an escaped high surrogate (a low one next completes the pair at no
 * length). Without a maximum, counts past the minimum behave alike and are stored as the minimum.
 */
class BoundedStrFrame implements Frame {
  readonly key: string;
  constructor(
    readonly mode: number,
    readonly min: number,
    readonly max: number,
    readonly count: number,
    readonly high: boolean,
  ) {
    this.key = `B${min}.${max}.${mode}.${count}${high ? 'h' : ''}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const { mode, min, max } = this;
    const next = stringStep(mode, b);
    if (next === REFUSED) return;
    if (next === CLOSED) {
      if (this.count >= min) out.push(self.next);
      return;
    }
    const full = max >= 0 && this.count >= max;
    const add = lengthStep(mode, next, this.high);
    let { count, high } = this;
    if (add >= 0) {
      if (add > 0 && full) return;
      count += add;
      high = false;
    } else if (full && !high && entersEscape(mode, next)) return;
    if (completesHigh(mode, next)) high = true;
    out.push(cell(boundedStr(next, min, max, count, high), self.next));
  }
  canEnd(): boolean {
    return false;
  }
}
function boundedStr(mode: number, min: number, max: number, count: number, high: boolean): BoundedStrFrame {
  return max < 0 && count >= min ? new BoundedStrFrame(mode, min, max, min, false) : new BoundedStrFrame(mode, min, max, count, high);
}

/** Where the string on top of `s` stands, for the token tables (string-tables.ts); null when `s` is not inside a string the tables serve. */
export function stringPosition(s: Stack): StringPosition | null {
  if (s === null) return null;
  if (s.f instanceof StrFrame) return { mode: s.f.mode, count: 0, min: 0, max: -1 };
  // Right after an escaped high surrogate a low one adds no length, which the tables (walked
  // from no surrogate) do not know: such a state walks the trie itself.
  if (s.f instanceof BoundedStrFrame && !s.f.high) return s.f;
  return null;
}

/** A number: st 0 after '-', 1 after a leading 0, 2 integer digits (n so far), 3 after '.', 4 fraction digits (n). */
class NumFrame implements Frame {
  readonly key: string;
  constructor(
    private readonly int: boolean,
    private readonly st: number,
    private readonly n: number,
  ) {
    this.key = `N${int ? 'i' : 'f'}${st}.${n}`;
  }
  private get done(): boolean {
    return this.st === 1 || this.st === 2 || this.st === 4;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const { st, n, int } = this;
    const to = (s: number, k: number) => out.push(cell(num(int, s, k), self.next));
    if (st === 0) {
      if (b === 0x30) to(1, 0);
      else if (isDigit(b)) to(2, 1);
    } else if ((st === 1 || st === 2) && b === 0x2e && !int) to(3, 0);
    else if (st === 2 && isDigit(b) && n < MAX_DIGITS) to(2, n + 1);
    else if (st === 3 && isDigit(b)) to(4, 1);
    else if (st === 4 && isDigit(b) && n < MAX_DIGITS) to(4, n + 1);
    // A complete number may also end here: the byte then belongs to what follows it.
    if (this.done) advance(self.next, b, out);
  }
  canEnd(self: Cell): boolean {
    return this.done && canEnd(self.next);
  }
}
const NUMS = new Map<string, NumFrame>();
function num(int: boolean, st: number, n: number): NumFrame {
  const k = `${int}${st}.${n}`;
  let f = NUMS.get(k);
  if (!f) NUMS.set(k, (f = new NumFrame(int, st, n)));
  return f;
}

function startNumber(int: boolean, b: number, rest: Stack, out: Stack[]): void {
  if (b === 0x2d) out.push(cell(num(int, 0, 0), rest));
  else num(int, 0, 0).step(b, cell(num(int, 0, 0), rest), out);
}

/**
 * A choice between fixed byte strings (enum values, `true`, an object's next `"key":` or its `}`):
 * `complete(k, rest)` is the stack once candidate k has been read in full.
 */
interface Choice {
  id: string;
  cands: Uint8Array[];
  complete(k: number, rest: Stack): Stack;
}

class ChoiceFrame implements Frame {
  readonly key: string;
  constructor(
    private readonly c: Choice,
    private readonly pos: number,
    private readonly alive: number[],
  ) {
    this.key = `C${c.id}.${pos}.${alive.join(',')}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const next: number[] = [];
    for (const k of this.alive) {
      const bytes = this.c.cands[k];
      if (bytes.length === this.pos) advance(this.c.complete(k, self.next), b, out);
      else if (bytes[this.pos] === b) next.push(k);
    }
    pushChoice(this.c, this.pos + 1, next, self.next, out);
  }
  canEnd(self: Cell): boolean {
    return this.alive.some((k) => this.c.cands[k].length === this.pos && canEnd(this.c.complete(k, self.next)));
  }
}

/** Pushes the choice's state after `pos` bytes, popped at once when only a complete candidate is left. */
function pushChoice(c: Choice, pos: number, alive: number[], rest: Stack, out: Stack[]): void {
  if (alive.length === 0) return;
  if (alive.every((k) => c.cands[k].length === pos)) out.push(c.complete(alive[0], rest));
  else out.push(cell(new ChoiceFrame(c, pos, alive), rest));
}

function enterChoice(c: Choice, b: number, rest: Stack, out: Stack[]): void {
  pushChoice(
    c,
    1,
    c.cands.flatMap((bytes, k) => (bytes[0] === b ? [k] : [])),
    rest,
    out,
  );
}

const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));

/** A grammar node made runnable: ids for state keys and the byte strings of its choices. */
type Node =
  | { t: 'obj'; id: number; props: Array<{ key: string; value: Node; required: boolean }>; choices: Map<string, Choice> }
  | { t: 'arr'; id: number; items: Node; min: number; max: number }
  | { t: 'str'; id: number; min: number; max: number }
  | { t: 'num'; id: number; int: boolean }
  | { t: 'lit'; id: number; choice: Choice }
  | { t: 'any'; id: number }
  | { t: 'anyobj'; id: number }
  | { t: 'or'; id: number; options: Node[] }
  | { t: 'seq'; id: number; items: Node[] }
  | { t: 'switch'; id: number; choice: Choice };

/** Expects a value of `node` next. */
class ValueFrame implements Frame {
  readonly key: string;
  constructor(private readonly node: Node) {
    this.key = `V${node.id}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    enter(this.node, b, self.next, out);
  }
  canEnd(): boolean {
    return false;
  }
}
const VALUE_FRAMES = new WeakMap<Node, ValueFrame>();
function valueFrame(node: Node): ValueFrame {
  let f = VALUE_FRAMES.get(node);
  if (!f) VALUE_FRAMES.set(node, (f = new ValueFrame(node)));
  return f;
}

/**
 * An array after '[' (phase 0), after an item (1) or after ',' (2). With no maxItems, counts past
 * minItems behave alike and are stored as minItems, so they add no states.
 */
class ArrFrame implements Frame {
  readonly key: string;
  constructor(
    private readonly node: Extract<Node, { t: 'arr' }>,
    private readonly count: number,
    private readonly phase: number,
  ) {
    this.key = `A${node.id}.${count}.${phase}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const { node, count, phase } = this;
    const item = () => enter(node.items, b, cell(arr(node, count + 1, 1), self.next), out);
    if (phase === 0) {
      if (b === 0x5d && node.min === 0) out.push(self.next);
      if (node.max !== 0) item();
    } else if (phase === 1) {
      if (b === 0x2c && (node.max < 0 || count < node.max)) out.push(cell(arr(node, count, 2), self.next));
      if (b === 0x5d && count >= node.min) out.push(self.next);
    } else item();
  }
  canEnd(): boolean {
    return false;
  }
}
function arr(node: Extract<Node, { t: 'arr' }>, count: number, phase: number): ArrFrame {
  return new ArrFrame(node, node.max < 0 ? Math.min(count, node.min) : count, phase);
}

/** Free-form JSON. Object phases: 0 after '{', 1 after ',', 2 after a key, 3 after a value; arrays: 0 after '[', 1 after an item, 2 after ','. */
class GenericFrame implements Frame {
  readonly key: string;
  constructor(
    private readonly kind: 'o' | 'a' | 'v',
    private readonly depth: number,
    private readonly phase: number,
  ) {
    this.key = `G${kind}${depth}.${phase}`;
  }
  step(b: number, self: Cell, out: Stack[]): void {
    const { kind, depth: d, phase } = this;
    const rest = self.next;
    if (kind === 'v') return enterAny(d, b, rest, out);
    if (kind === 'o') {
      if ((phase === 0 || phase === 1) && b === Q) out.push(cell(STR[BODY], cell(generic('o', d, 2), rest)));
      else if (phase === 2 && b === 0x3a) out.push(cell(generic('v', d, 0), cell(generic('o', d, 3), rest)));
      else if (phase === 3 && b === 0x2c) out.push(cell(generic('o', d, 1), rest));
      if ((phase === 0 || phase === 3) && b === 0x7d) out.push(rest);
      return;
    }
    if (phase === 1) {
      if (b === 0x2c) out.push(cell(generic('a', d, 2), rest));
    } else enterAny(d, b, cell(generic('a', d, 1), rest), out);
    if ((phase === 0 || phase === 1) && b === 0x5d) out.push(rest);
  }
  canEnd(): boolean {
    return false;
  }
}
const GENERIC = new Map<string, GenericFrame>();
function generic(kind: 'o' | 'a' | 'v', depth: number, phase: number): GenericFrame {
  const k = `${kind}${depth}.${phase}`;
  let f = GENERIC.get(k);
  if (!f) GENERIC.set(k, (f = new GenericFrame(kind, depth, phase)));
  return f;
}

const SCALARS: Choice = { id: 'tfn', cands: ['true', 'false', 'null'].map(utf8), complete: (_k, rest) => rest };

/** The first byte of a free-form value at nesting `d`. */
function enterAny(d: number, b: number, rest: Stack, out: Stack[]): void {
  if (b === 0x7b && d < MAX_GENERIC_DEPTH) out.push(cell(generic('o', d + 1, 0), rest));
  else if (b === 0x5b && d < MAX_GENERIC_DEPTH) out.push(cell(generic('a', d + 1, 0), rest));
  else if (b === Q) out.push(cell(STR[BODY], rest));
  else if (b === 0x2d || isDigit(b)) startNumber(false, b, rest, out);
  else enterChoice(SCALARS, b, rest, out);
}

/** The first byte of a value of `node`. */
function enter(node: Node, b: number, rest: Stack, out: Stack[]): void {
  switch (node.t) {
    case 'lit':
    case 'switch':
      return enterChoice(node.choice, b, rest, out);
    case 'str':
      if (b !== Q) return;
      out.push(cell(node.min === 0 && node.max < 0 ? STR[BODY] : boundedStr(BODY, node.min, node.max, 0, false), rest));
      return;
    case 'num':
      if (b === 0x2d || isDigit(b)) startNumber(node.int, b, rest, out);
      return;
    case 'obj':
      if (b === 0x7b) out.push(cell(new ChoiceFrame(objChoice(node, 0, true), 0, allOf(objChoice(node, 0, true))), rest));
      return;
    case 'arr':
      if (b === 0x5b) out.push(cell(arr(node, 0, 0), rest));
      return;
    case 'any':
      return enterAny(0, b, rest, out);
    case 'anyobj':
      if (b === 0x7b) out.push(cell(generic('o', 1, 0), rest));
      return;
    case 'or':
      for (const o of node.options) enter(o, b, rest, out);
      return;
    case 'seq': {
      // The items after the first wait on the stack, each as a value still expected.
      let after = rest;
      for (let i = node.items.length - 1; i > 0; i--) after = cell(valueFrame(node.items[i]), after);
      if (node.items.length > 0) enter(node.items[0], b, after, out);
    }
  }
}

const allOf = (c: Choice) => c.cands.map((_, k) => k);

/**
 * What may follow in an object whose properties before `i` are settled: the `"key":` of property i,
 * or of a later one when those between are optional (with ',' unless `first`), or '}' once every
 * required property is written.
 */
function objChoice(node: Extract<Node, { t: 'obj' }>, i: number, first: boolean): Choice {
  const id = `${i}${first ? 'f' : 'n'}`;
  let c = node.choices.get(id);
  if (c) return c;
  const cands: Uint8Array[] = [];
  const targets: number[] = [];
  let j = i;
  for (; j < node.props.length; j++) {
    cands.push(utf8(`${first ? '' : ','}${JSON.stringify(node.props[j].key)}:`));
    targets.push(j);
    if (node.props[j].required) break;
  }
  if (j === node.props.length) {
    cands.push(utf8('}'));
    targets.push(-1);
  }
  c = {
    id: `${node.id}.${id}`,
    cands,
    complete: (k, rest) => {
      const p = targets[k];
      if (p < 0) return rest;
      const after = objChoice(node, p + 1, false);
      return cell(valueFrame(node.props[p].value), cell(new ChoiceFrame(after, 0, allOf(after)), rest));
    },
  };
  node.choices.set(id, c);
  return c;
}

/** A compiled grammar: its start state, ready to step. */
export class Automaton {
  readonly start: Stack[];

  constructor(grammar: Grammar) {
    let next = 0;
    const build = (g: Grammar): Node => {
      const id = next++;
      switch (g.t) {
        case 'obj':
          return { t: 'obj', id, props: g.props.map((p) => ({ key: p.key, required: p.required, value: build(p.value) })), choices: new Map() };
        case 'arr':
          return { t: 'arr', id, items: build(g.items), min: g.min, max: g.max };
        case 'lit':
          return { t: 'lit', id, choice: { id: `${id}`, cands: g.values.map(utf8), complete: (_k, rest) => rest } };
        case 'or':
          return { t: 'or', id, options: g.options.map(build) };
        case 'seq':
          return { t: 'seq', id, items: g.items.map(build) };
        case 'switch': {
          const then = g.cases.map((c) => build(c.then));
          const choice: Choice = { id: `${id}`, cands: g.cases.map((c) => utf8(c.text)), complete: (k, rest) => cell(valueFrame(then[k]), rest) };
          return { t: 'switch', id, choice };
        }
        case 'num':
          return { t: 'num', id, int: g.int };
        case 'str':
          return { t: 'str', id, min: g.min ?? 0, max: g.max ?? -1 };
        default:
          return { t: g.t, id };
      }
    };
    this.start = [cell(valueFrame(build(grammar)), null)];
  }
}

/** Most alternative stacks a state keeps (anyOf branches alive at once); more are dropped, which only narrows the output. */
const MAX_STACKS = 64;

/** Feeds `bytes` to every stack of `states`; the empty list: refused. Duplicates are merged. */
export function advanceAll(states: Stack[], bytes: ArrayLike<number>): Stack[] {
  let cur = states;
  for (let i = 0; i < bytes.length && cur.length > 0; i++) {
    const out: Stack[] = [];
    for (const s of cur) advance(s, bytes[i], out);
    cur = out.length > 1 ? dedupe(out) : out;
  }
  return cur;
}

export function dedupe(states: Stack[]): Stack[] {
  const seen = new Map<string, Stack>();
  for (const s of states) {
    const k = stackKey(s);
    if (!seen.has(k)) seen.set(k, s);
  }
  return [...seen.values()].slice(0, MAX_STACKS);
}

export function stateKey(states: Stack[]): string {
  return states.length === 1 ? stackKey(states[0]) : states.map(stackKey).sort().join('\n');
}
