import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { advanceAll, Automaton, canEnd } from '../../src/engine/structured/grammar.js';
import { ChatTemplate } from '../../src/model/chat-template.js';
import { parseReply, toolCallFormat, ToolCallParser, toolSyntaxOf, type ToolEvent, type ToolSyntax } from '../../src/openai/tool-calls.js';
import type { ChatTool } from '../../src/openai/schemas.js';
import { REPO_ROOT, SHARED } from '../helpers/paths.js';

/**
 * `tool_choice: "auto"` leaves the model free, so reading its calls is tested here on text: the
 * syntaxes Qwen (Hermes style) and Llama 3.1+ write, content around them, malformed calls, and the
 * parser's promise that the result does not depend on how the text was split into stream deltas.
 */
let n = 0;
const ids = () => `call_${++n}`;
const parse = (syntax: ToolSyntax, text: string, maxCalls?: number) => parseReply(syntax, text, maxCalls, ids);

/** The same reply fed one character at a time, reassembled as a client reassembles stream deltas. */
function streamed(syntax: ToolSyntax, text: string, maxCalls?: number) {
  const p = new ToolCallParser(syntax, maxCalls, ids);
  const events: ToolEvent[] = [];
  for (const ch of text) events.push(...p.push(ch));
  events.push(...p.end());
  let content = '';
  const calls: Array<{ name: string; arguments: string }> = [];
  for (const e of events) {
    if (e.kind === 'content') content += e.text;
    else if (e.kind === 'call') calls.push({ name: e.name, arguments: '' });
    else calls[e.index].arguments += e.text;
  }
  return { content, calls };
}

const calls = (r: ReturnType<typeof parseReply>) => r.toolCalls.map((c) => ({ name: c.function.name, arguments: c.function.arguments }));

type Cases = Record<string, { text: string; content: string | null; calls: Array<{ name: string; arguments: string }> }>;

const HERMES_CASES: Cases = {
  'one call': {
    text: '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    content: null,
    calls: [{ name: 'get_weather', arguments: '{"city": "Paris", "unit": "celsius"}' }],
  },
  'text before, two calls, braces and tags inside strings': {
    text: 'Let me check.\n<tool_call>\n{"name": "a", "arguments": {"q": "x}</tool_call>{\\"y"}}\n</tool_call>\n<tool_call>\n{"name":"b","arguments":{}}\n</tool_call>',
    content: 'Let me check.\n',
    calls: [
      { name: 'a', arguments: '{"q": "x}</tool_call>{\\"y"}' },
      { name: 'b', arguments: '{}' },
    ],
  },
  'arguments before the name: read whole': {
    text: '<tool_call>\n{"arguments": {"n": 1}, "name": "count"}\n</tool_call>',
    content: null,
    calls: [{ name: 'count', arguments: '{"n":1}' }],
  },
  'no call at all, with a lone < and a partial tag at the end': {
    text: 'a < b and <tool_',
    content: 'a < b and <tool_',
    calls: [],
  },
  'a malformed call stays content': {
    text: 'Hmm <tool_call>\nnot json\n</tool_call>',
    content: 'Hmm <tool_call>\nnot json\n</tool_call>',
    calls: [],
  },
  'thinking first (Qwen3)': {
    text: '<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "w", "arguments": {"deep": [1, {"x": [2]}]}}\n</tool_call>',
    content: '<think>\nThe user wants weather.\n</think>\n\n',
    calls: [{ name: 'w', arguments: '{"deep": [1, {"x": [2]}]}' }],
  },
};

const LLAMA_CASES: Cases = {
  'one call': {
    text: '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    content: null,
    calls: [{ name: 'get_weather', arguments: '{"city": "Paris"}' }],
  },
  'after <|python_tag|>, two calls separated by ;': {
    text: '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
    content: null,
    calls: [
      { name: 'a', arguments: '{"x": 1}' },
      { name: 'b', arguments: '{}' },
    ],
  },
  'Llama 3.2 style with a type field, and "arguments"': {
    text: ' {"type": "function", "name": "f", "arguments": {"s": "}"}}',
    content: null,
    calls: [{ name: 'f', arguments: '{"s": "}"}' }],
  },
  'plain text': { text: 'Paris is sunny today.', content: 'Paris is sunny today.', calls: [] },
  'a JSON answer that is not a call stays content': { text: '{"answer": 42}', content: '{"answer": 42}', calls: [] },
  'parameters before the name: read whole': {
    text: '{"parameters": {"k": true}, "name": "g"}',
    content: null,
    calls: [{ name: 'g', arguments: '{"k":true}' }],
  },
};

describe('reading tool calls from text', () => {
  for (const [syntax, cases] of [
    ['hermes', HERMES_CASES],
    ['llama3-json', LLAMA_CASES],
  ] as const) {
    for (const [name, c] of Object.entries(cases)) {
      it(`${syntax}: ${name}`, () => {
        const r = parse(syntax, c.text);
        expect(r.content).toBe(c.content);
        expect(calls(r)).toEqual(c.calls);
        for (const call of r.toolCalls) {
          expect(call.id).toMatch(/^call_/);
          expect(call.type).toBe('function');
          expect(() => JSON.parse(call.function.arguments) as unknown).not.toThrow();
        }
        // Split into single characters, the stream gives the same calls and (whitespace aside) the same content.
        const s = streamed(syntax, c.text);
        expect(s.calls).toEqual(c.calls);
        expect(s.content.trim() === '' ? null : s.content).toBe(c.calls.length > 0 && (c.content ?? '').trim() === '' ? null : c.content);
      });
    }
  }

  it('holds back text that may start a call, and reports the name before the arguments are done', () => {
    const p = new ToolCallParser('hermes', undefined, ids);
    expect(p.push('Sure <tool')).toEqual([{ kind: 'content', text: 'Sure ' }]);
    expect(p.push('_call>\n{"name": "get_weather", "arguments": {"ci')).toEqual([
      { kind: 'call', index: 0, id: expect.stringMatching(/^call_/) as unknown as string, name: 'get_weather' },
      { kind: 'args', index: 0, text: '{"ci' },
    ]);
    expect(p.push('ty": "Oslo"}}\n</tool_call>')).toEqual([{ kind: 'args', index: 0, text: 'ty": "Oslo"}' }]);
    expect(p.end()).toEqual([]);
    expect(p.callCount).toBe(1);
  });

  it('parallel_tool_calls false keeps the first call only', () => {
    const text = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>';
    expect(calls(parse('hermes', text, 1))).toEqual([{ name: 'a', arguments: '{}' }]);
    expect(streamed('hermes', text, 1).calls).toEqual([{ name: 'a', arguments: '{}' }]);
    expect(calls(parse('llama3-json', '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}', 1))).toEqual([{ name: 'a', arguments: '{}' }]);
  });

  it('a reply cut short inside the arguments keeps the call with what was written', () => {
    const r = parse('hermes', '<tool_call>\n{"name": "a", "arguments": {"x": "unfinis');
    expect(calls(r)).toEqual([{ name: 'a', arguments: '{"x": "unfinis' }]);
  });
});

const template = (file: string) => new ChatTemplate(fs.readFileSync(file, 'utf8'), {});
const tokenizerTemplate = (family: string) =>
  new ChatTemplate((JSON.parse(fs.readFileSync(path.join(SHARED, 'tokenizers', family, 'tokenizer_config.json'), 'utf8')) as { chat_template: string }).chat_template, {});
const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'chat-templates');

describe('which templates support tools', () => {
  it('detects the syntax from the template: Qwen2.5 and Qwen3 write Hermes calls, Llama 3.1 JSON; Llama 3.0 and the fallback none', () => {
    expect(toolSyntaxOf(tokenizerTemplate('qwen3'))).toBe('hermes');
    expect(toolSyntaxOf(template(path.join(FIXTURES, 'qwen2.5.jinja')))).toBe('hermes');
    expect(toolSyntaxOf(template(path.join(FIXTURES, 'llama-3.1.jinja')))).toBe('llama3-json');
    expect(toolSyntaxOf(tokenizerTemplate('llama3'))).toBeNull();
    expect(toolSyntaxOf(new ChatTemplate(null, {}))).toBeNull();
    // The word in a string is not a reference to the variable.
    expect(new ChatTemplate("{{ 'tools' }}{{ messages[0].content }}", {}).referencesTools).toBe(false);
    expect(new ChatTemplate('{% for t in tools %}{{ t | tojson }}{% endfor %}', {}).referencesTools).toBe(true);
  });
});

describe('the grammar that forces a call', () => {
  const tools: ChatTool[] = [
    {
      type: 'function',
      function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { enum: ['c', 'f'] } }, required: ['city'] } },
    },
    { type: 'function', function: { name: 'ping' } },
  ];
  const accepts = (syntax: ToolSyntax, only: number[], text: string) => {
    const a = new Automaton(toolCallFormat(syntax, only.map((i) => ({ t: tools[i], i }))).grammar);
    const states = advanceAll(a.start, Buffer.from(text));
    return states.length > 0 && states.some(canEnd);
  };

  it("admits one call in the family's syntax whose arguments follow the schema", () => {
    expect(accepts('hermes', [0, 1], '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo","unit":"c"}}\n</tool_call>')).toBe(true);
    expect(accepts('hermes', [0, 1], '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')).toBe(true);
    expect(accepts('hermes', [0, 1], '<tool_call>\n{"name": "get_weather", "arguments": {"unit":"c"}}\n</tool_call>')).toBe(false);
    expect(accepts('hermes', [1], '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo"}}\n</tool_call>')).toBe(false);
    expect(accepts('llama3-json', [0], '{"name": "get_weather", "parameters": {"city":"Oslo"}}')).toBe(true);
    expect(accepts('llama3-json', [0], '{"name": "get_weather", "parameters": {"city":"Oslo","unit":"k"}}')).toBe(false);
    expect(accepts('llama3-json', [0], '<|python_tag|>{"name": "get_weather", "parameters": {"city":"Oslo"}}')).toBe(false);
  });

  it('chooses among 128 tools in one automaton state (no stack per tool), the last as reachable as the first', () => {
    const many: ChatTool[] = Array.from({ length: 128 }, (_, k) => ({
      type: 'function',
      function: { name: `tool_${k}`, parameters: { type: 'object', properties: { k: { const: k } }, required: ['k'] } },
    }));
    const a = new Automaton(toolCallFormat('hermes', many.map((t, i) => ({ t, i }))).grammar);
    const inName = advanceAll(a.start, Buffer.from('<tool_call>\n{"name": "tool_1'));
    expect(inName).toHaveLength(1);
    for (const k of [0, 64, 127]) {
      const states = advanceAll(a.start, Buffer.from(`<tool_call>\n{"name": "tool_${k}", "arguments": {"k":${k}}}\n</tool_call>`));
      expect(states.some(canEnd), `tool_${k}`).toBe(true);
    }
    expect(advanceAll(a.start, Buffer.from('<tool_call>\n{"name": "tool_127", "arguments": {"k":3}')).length).toBe(0);
  });

  it('names the schema path of an unsupported keyword in a forced tool', () => {
    const bad: ChatTool = { type: 'function', function: { name: 'x', parameters: { type: 'object', properties: { n: { type: 'integer', minimum: 3 } } } } };
    expect(() => toolCallFormat('hermes', [{ t: bad, i: 2 }])).toThrow(/tools\[2\]\.function\.parameters\.properties\.n\.minimum/);
  });
});
