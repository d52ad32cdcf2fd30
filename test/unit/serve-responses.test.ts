import { describe, expect, it } from 'vitest';
import type { ChatMessage } from '../../src/model/chat-template.js';
import { ResponsesRequest } from '../../src/openai/responses-schemas.js';
import { serveResponses } from '../../src/openai/serve-responses.js';
import type { Gateway } from '../../src/serving/gateway.js';
import type { ChoiceDelta } from '../../src/serving/generation.js';
import type { GenerateRequest } from '../../src/serving/inference.js';

/**
 * The Responses translation over a scripted generation that ends by itself (finish "stop"), which
 * stories260K never does: test/integration/responses-api.test.ts covers the rest on the real model.
 */
function fakeGateway(deltas: ChoiceDelta[], seen: { messages?: ChatMessage[]; req?: GenerateRequest; cancelled?: boolean }, toolTemplate = false): Gateway {
  // toolTemplate: a template that renders tools in the Hermes `<tool_call>` syntax (as Qwen's).
  const tools = toolTemplate ? { referencesTools: true, source: '{% for tool in tools %}<tool_call>{% endfor %}' } : {};
  const model = {
    chatTemplate: { ...tools, render: (m: ChatMessage[]) => ((seen.messages = m), m.map((x) => x.content).join('\n')) },
    encoder: { encode: (text: string) => Promise.resolve(text.split(' ').map((_, i) => i)) },
    inference: {
      generate: (req: GenerateRequest) => {
        seen.req = req;
        const usage = { prompt_tokens: req.promptIds.length, completion_tokens: deltas.length, total_tokens: req.promptIds.length + deltas.length, prompt_tokens_details: { cached_tokens: 0 } };
        return Promise.resolve({
          usage,
          cancel: () => (seen.cancelled = true),
          async *deltas() {
            for (const d of deltas) yield await Promise.resolve(d);
          },
        });
      },
    },
  };
  return { model: () => model, modelFor: () => Promise.resolve({ services: model, route: { base: 'm', record: null } }) } as unknown as Gateway;
}

const caller = { tenantId: null, keyId: 'k', harvest: null } as never;
const stops: ChoiceDelta[] = [
  { index: 0, text: 'The', tokens: [] },
  { index: 0, text: ' end.', tokens: [] },
  { index: 0, text: '', tokens: [], finishReason: 'stop' },
];
const parse = (body: object) => ResponsesRequest.parse({ model: 'm', ...body });

describe('serveResponses', () => {
  it('answers a generation that stops with status completed, store false, instructions first', async () => {
    const seen: Parameters<typeof fakeGateway>[1] = {};
    const out = await serveResponses(fakeGateway(stops, seen), parse({ input: 'Hi there', instructions: 'Be brief.', store: true }), caller, new AbortController().signal);
    expect(seen.messages).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi there' },
    ]);
    expect(seen.req).toMatchObject({ promptParam: 'input', maxTokens: null, maxTokensParam: 'max_output_tokens', n: 1 });
    if (out.kind !== 'json') throw new Error('expected json');
    expect(out.body).toMatchObject({
      object: 'response',
      status: 'completed',
      incomplete_details: null,
      store: false,
      instructions: 'Be brief.',
      output: [{ type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'The end.', annotations: [] }] }],
      usage: { input_tokens: 3, output_tokens: 3, total_tokens: 6, input_tokens_details: { cached_tokens: 0 }, output_tokens_details: { reasoning_tokens: 0 } },
    });
  });

  it('streams it ending with response.completed, numbered events, and cancels the run on close', async () => {
    const seen: Parameters<typeof fakeGateway>[1] = {};
    const out = await serveResponses(fakeGateway(stops, seen), parse({ input: [{ role: 'user', content: 'Hi' }], stream: true }), caller, new AbortController().signal);
    if (out.kind !== 'stream') throw new Error('expected a stream');
    expect(out.events).toBe(true);
    const events: Array<{ type: string; sequence_number: number; delta?: string; response?: { status: string } }> = [];
    for await (const e of out.chunks) events.push(e as (typeof events)[number]);
    expect(events.map((e) => e.type)).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.delta',
      'response.output_text.delta',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    expect(events.at(-1)!.response!.status).toBe('completed');
    out.cancel();
    expect(seen.cancelled).toBe(true);
  });
});

const script = (...texts: string[]): ChoiceDelta[] => [...texts.map((text) => ({ index: 0, text, tokens: [] })), { index: 0, text: '', tokens: [], finishReason: 'stop' }];
const TOOLS = [
  { type: 'function', name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } }, strict: null },
  { type: 'function', name: 'lookup', description: 'Find.', parameters: null, strict: false },
];
type Item = { type: string; id: string; status: string; call_id?: string; name?: string; arguments?: string; content?: Array<{ text: string }> };
type Event = { type: string; sequence_number: number; output_index?: number; item_id?: string; item?: Item; delta?: string; response?: { output: Item[]; status: string } };

/** The non-streaming output and the streamed events of the same scripted reply. */
async function both(deltas: ChoiceDelta[], body: object): Promise<{ output: Item[]; status: string; events: Event[] }> {
  const once = await serveResponses(fakeGateway(deltas, {}, true), parse({ input: 'Hi', tools: TOOLS, ...body }), caller, new AbortController().signal);
  if (once.kind !== 'json') throw new Error('expected json');
  const streamed = await serveResponses(fakeGateway(deltas, {}, true), parse({ input: 'Hi', tools: TOOLS, ...body, stream: true }), caller, new AbortController().signal);
  if (streamed.kind !== 'stream') throw new Error('expected a stream');
  const events: Event[] = [];
  for await (const e of streamed.chunks) events.push(e as Event);
  const { output, status } = once.body as { output: Item[]; status: string };
  return { output, status, events };
}
const withoutIds = (items: Item[]) => items.map(({ id, call_id, ...rest }) => ({ ...rest, id: id.slice(0, 3), call_id: call_id?.slice(0, 5) }));

describe('serveResponses with function tools (Hermes syntax, scripted replies)', () => {
  it('text before the calls is a message item, each call a function_call item; the stream builds the same items', async () => {
    const deltas = script('Let me check.\n', '<tool_', 'call>\n{"name": "get_weather", "arguments": {"city": ', '"Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call>');
    const { output, status, events } = await both(deltas, {});
    expect(status).toBe('completed');
    expect(withoutIds(output)).toEqual([
      { id: 'msg', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'Let me check.\n', annotations: [], logprobs: [] }], call_id: undefined },
      { id: 'fc_', type: 'function_call', status: 'completed', call_id: 'call_', name: 'get_weather', arguments: '{"city": "Oslo"}' },
      { id: 'fc_', type: 'function_call', status: 'completed', call_id: 'call_', name: 'lookup', arguments: '{}' },
    ]);
    expect(events.map((e) => e.type)).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.delta',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.output_item.added',
      'response.function_call_arguments.delta',
      'response.function_call_arguments.delta',
      'response.function_call_arguments.done',
      'response.output_item.done',
      'response.output_item.added',
      'response.function_call_arguments.delta',
      'response.function_call_arguments.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const done = events.filter((e) => e.type === 'response.output_item.done');
    expect(done.map((e) => e.output_index)).toEqual([0, 1, 2]);
    expect(withoutIds(done.map((e) => e.item!))).toEqual(withoutIds(output));
    expect(events.at(-1)!.response!.output).toEqual(done.map((e) => e.item));
    // Every delta names its item and index.
    for (const e of events.filter((x) => x.type.endsWith('.delta'))) expect(e.item_id).toBe(done[e.output_index!].item!.id);
  });

  it('white space before a call makes no message item; a reply without calls is one message, as without tools', async () => {
    const call = await both(script('\n', '<tool_call>\n{"name": "lookup", "arguments": {"a": 1}}\n</tool_call>'), { tool_choice: 'required' });
    expect(call.output.map((o) => o.type)).toEqual(['function_call']);
    expect(call.events.filter((e) => e.type === 'response.output_item.added')).toHaveLength(1);
    const text = await both(script('\n', 'Sunny.'), {});
    expect(text.output).toMatchObject([{ type: 'message', content: [{ text: '\nSunny.' }] }]);
    expect(text.events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta)).toEqual(['\nSunny.']);
    const empty = await both(script(), {});
    expect(empty.output).toMatchObject([{ type: 'message', status: 'completed', content: [{ text: '' }] }]);
  });

  it('parallel_tool_calls false keeps the first call; a reply cut by length leaves its last item incomplete', async () => {
    const two = script('<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call><tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>');
    const one = await both(two, { parallel_tool_calls: false });
    expect(one.output.map((o) => o.name)).toEqual(['lookup']);
    const cut: ChoiceDelta[] = [{ index: 0, text: '<tool_call>\n{"name": "lookup", "arguments": {"ids": [1', tokens: [], finishReason: 'length' }];
    const r = await both(cut, {});
    expect(r.status).toBe('incomplete');
    expect(r.output).toMatchObject([{ type: 'function_call', status: 'incomplete', arguments: '{"ids": [1' }]);
    expect(r.events.at(-1)!.type).toBe('response.incomplete');
  });

  it('function_call items join the assistant turn before them; function_call_output items are tool turns', async () => {
    const seen: Parameters<typeof fakeGateway>[1] = {};
    const input = [
      { role: 'user', content: 'Hi' },
      { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Checking.' }] },
      { type: 'function_call', id: 'fc_1', call_id: 'call_a', name: 'lookup', arguments: '{"ids": [1]}', status: 'completed' },
      { type: 'function_call', call_id: 'call_b', name: 'get_weather', arguments: '{}' },
      { type: 'function_call_output', call_id: 'call_a', output: '[1]' },
      { type: 'function_call_output', call_id: 'call_b', output: [{ type: 'input_text', text: 'sun' }] },
    ];
    await serveResponses(fakeGateway(stops, seen, true), parse({ input, tools: TOOLS }), caller, new AbortController().signal);
    expect(seen.messages).toEqual([
      { role: 'user', content: 'Hi' },
      {
        role: 'assistant',
        content: 'Checking.',
        tool_calls: [
          { id: 'call_a', type: 'function', function: { name: 'lookup', arguments: { ids: [1] } } },
          { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: {} } },
        ],
      },
      { role: 'tool', content: '[1]', tool_call_id: 'call_a' },
      { role: 'tool', content: 'sun', tool_call_id: 'call_b' },
    ]);
  });
});
