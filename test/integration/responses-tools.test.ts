import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, stepCountIs, tool } from 'ai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import type { FunctionTool, ResponseFunctionToolCall, ResponseInputItem, ResponseStreamEvent } from 'openai/resources/responses/responses';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USER_KEY } from '../helpers/gateway.js';
import { closeServed, FAMILY_CASES, LOOKUP, serveFamily, validators, WEATHER, type Served } from '../helpers/tool-models.js';

/**
 * Function tools on POST /v1/responses through the official openai SDK (`client.responses.create`,
 * streaming and not), on the Qwen3- and Llama-3.1-shaped random-weight models tool-calling.test.ts
 * serves (test/helpers/tool-models.ts). Random weights never choose to call, so the calls here are
 * `required` or named choices enforced by constrained decoding; the Responses shapes around the
 * shared plan, grammar and parser are checked here, and the prompt a tool round trip renders is
 * checked to be chat's, token for token. stories260K's refusal of tools is in responses-api.test.ts.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-responses-tools-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Flat, as the Responses API takes function tools; `strict` as chat's test gives it. */
const TOOLS: FunctionTool[] = [
  { type: 'function', name: 'get_weather', description: 'The weather in a city.', parameters: WEATHER, strict: true },
  { type: 'function', name: 'lookup', description: 'Find items by id.', parameters: LOOKUP, strict: false },
];
/** The same tools in chat's shape, for comparing prompts. */
const CHAT_TOOLS: OpenAI.Chat.ChatCompletionTool[] = TOOLS.map(({ name, description, parameters, strict }) => ({
  type: 'function',
  function: { name, description: description ?? undefined, parameters: parameters ?? undefined, strict },
}));
const INSTRUCTIONS = 'You are a helpful assistant.';
const QUESTION = 'What is the weather in Oslo for 3 days?';
const CHAT_USER: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: 'system', content: INSTRUCTIONS },
  { role: 'user', content: QUESTION },
];

const calls = (r: OpenAI.Responses.Response) => r.output.filter((o): o is ResponseFunctionToolCall => o.type === 'function_call');

function expectValidCall(r: OpenAI.Responses.Response, names: string[]): ResponseFunctionToolCall {
  expect(r.status).toBe('completed');
  // A forced call is all the reply is: no message item.
  expect(r.output.map((o) => o.type)).toEqual(['function_call']);
  const [call] = calls(r);
  expect(call.id).toMatch(/^fc_[0-9a-f]{32}$/);
  expect(call.call_id).toMatch(/^call_[0-9a-f]{24}$/);
  expect(call.status).toBe('completed');
  expect(names).toContain(call.name);
  const validate = validators[call.name];
  expect(validate(JSON.parse(call.arguments)), `${call.arguments}: ${JSON.stringify(validate.errors)}`).toBe(true);
  return call;
}

for (const { label, family, template } of FAMILY_CASES) {
  describe(`function tools on /v1/responses, ${label}`, () => {
    let s: Served;
    beforeAll(async () => {
      s = await serveFamily(tmp, family, template);
    }, 240_000);
    afterAll(() => closeServed(s));

    const create = (extra: Partial<OpenAI.Responses.ResponseCreateParamsNonStreaming>) =>
      s.client.responses.create({ model: s.model, instructions: INSTRUCTIONS, input: QUESTION, tools: TOOLS, max_output_tokens: 200, ...extra });

    it('tool_choice "required": one function_call item whose arguments validate; tools and choice echoed', async () => {
      for (let k = 0; k < 4; k++) {
        const r = await create({ tool_choice: 'required', temperature: 1 });
        expectValidCall(r, ['get_weather', 'lookup']);
        expect(r.tool_choice).toBe('required');
        expect(r.parallel_tool_calls).toBe(true);
        expect(r.tools).toEqual(TOOLS);
        expect(r.output_text).toBe('');
        expect(r.usage?.output_tokens).toBeGreaterThan(5);
      }
    });

    it('a named tool_choice {type: "function", name} calls that function', async () => {
      for (const name of ['get_weather', 'lookup']) {
        for (let k = 0; k < 2; k++) expectValidCall(await create({ tool_choice: { type: 'function', name }, temperature: 1 }), [name]);
      }
    });

    it('streams the documented events (item added, argument deltas, arguments done, item done), which reassemble to the non-streaming response', async () => {
      const request = { tool_choice: 'required' as const, temperature: 0 };
      const whole = await create(request);
      const call = expectValidCall(whole, ['get_weather', 'lookup']);
      const events: ResponseStreamEvent[] = [];
      const stream = await s.client.responses.create({ model: s.model, instructions: INSTRUCTIONS, input: QUESTION, tools: TOOLS, max_output_tokens: 200, ...request, stream: true });
      for await (const e of stream) events.push(e);
      expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
      const types = events.map((e) => e.type);
      const deltas = events.filter((e) => e.type === 'response.function_call_arguments.delta');
      expect(deltas.length).toBeGreaterThan(2);
      expect(types).toEqual([
        'response.created',
        'response.in_progress',
        'response.output_item.added',
        ...deltas.map(() => 'response.function_call_arguments.delta'),
        'response.function_call_arguments.done',
        'response.output_item.done',
        'response.completed',
      ]);
      const added = events[2];
      if (added.type !== 'response.output_item.added' || added.item.type !== 'function_call') throw new Error(`added ${JSON.stringify(added)}`);
      expect(added.output_index).toBe(0);
      expect(added.item).toMatchObject({ type: 'function_call', status: 'in_progress', name: call.name, arguments: '' });
      const itemId = added.item.id;
      expect(deltas.every((d) => d.item_id === itemId && d.output_index === 0)).toBe(true);
      const args = deltas.map((d) => d.delta).join('');
      expect(args).toBe(call.arguments);
      const argsDone = events.at(-3);
      expect(argsDone).toMatchObject({ type: 'response.function_call_arguments.done', item_id: itemId, output_index: 0, name: call.name, arguments: args });
      const done = events.at(-2);
      if (done?.type !== 'response.output_item.done') throw new Error('no output_item.done');
      expect(done.item).toEqual({ ...call, id: itemId, call_id: added.item.call_id });
      const completed = events.at(-1);
      if (completed?.type !== 'response.completed') throw new Error('no response.completed');
      expect(completed.response.output).toEqual([done.item]);
      expect(completed.response.usage).toEqual(whole.usage);
      // The SDK's own stream helper puts the same response together.
      const final = await s.client.responses.stream({ model: s.model, instructions: INSTRUCTIONS, input: QUESTION, tools: TOOLS, max_output_tokens: 200, ...request }).finalResponse();
      expect(calls(final).map(({ name, arguments: a }) => ({ name, a }))).toEqual([{ name: call.name, a: call.arguments }]);
    });

    it('a round trip: function_call and function_call_output items go back through the template as chat renders them', async () => {
      const first = await create({ tool_choice: { type: 'function', name: 'get_weather' }, temperature: 0 });
      const call = expectValidCall(first, ['get_weather']);
      const result = '{"temperature": 12, "sky": "clear"}';
      // The call item sent back as it came (id and status included), then its result.
      const input: ResponseInputItem[] = [{ role: 'user', content: QUESTION }, ...calls(first), { type: 'function_call_output', call_id: call.call_id, output: result }];
      const r = await create({ input, max_output_tokens: 8, temperature: 0 });
      expect(['completed', 'incomplete']).toContain(r.status);
      const chat = await s.client.chat.completions.create({
        model: s.model,
        messages: [
          ...CHAT_USER,
          { role: 'assistant', content: null, tool_calls: [{ id: call.call_id, type: 'function', function: { name: call.name, arguments: call.arguments } }] },
          { role: 'tool', tool_call_id: call.call_id, content: result },
        ],
        tools: CHAT_TOOLS,
        max_tokens: 8,
        temperature: 0,
      });
      expect(r.usage?.input_tokens).toBe(chat.usage?.prompt_tokens);
      // Greedy on the same prompt: the same reply (text, or a call the parser read from it).
      const text = chat.choices[0].message.content ?? '';
      if (chat.choices[0].message.tool_calls?.length) expect(calls(r).length).toBeGreaterThan(0);
      else expect(r.output_text).toBe(text);

      // Text before the call joins the call's assistant turn, as chat's content beside tool_calls.
      const withText: ResponseInputItem[] = [
        { role: 'user', content: QUESTION },
        { role: 'assistant', content: 'Checking.' },
        { type: 'function_call', call_id: 'call_1', name: 'lookup', arguments: '{"ids": [1, 2], "where": {"shelf": "a"}}' },
        { type: 'function_call_output', call_id: 'call_1', output: [{ type: 'input_text', text: 'two items' }] },
      ];
      const r2 = await create({ input: withText, max_output_tokens: 1 });
      const chat2 = await s.client.chat.completions.create({
        model: s.model,
        messages: [
          ...CHAT_USER,
          { role: 'assistant', content: 'Checking.', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'lookup', arguments: '{"ids": [1, 2], "where": {"shelf": "a"}}' } }] },
          { role: 'tool', tool_call_id: 'call_1', content: 'two items' },
        ],
        tools: CHAT_TOOLS,
        max_tokens: 1,
      });
      expect(r2.usage?.input_tokens).toBe(chat2.usage?.prompt_tokens);
    });

    it("the Vercel AI SDK's default provider (openai(model) is /v1/responses): a required call, its result sent back, the next step served", async () => {
      const openai = createOpenAI({ apiKey: USER_KEY, baseURL: `${s.gw.url}/v1` });
      const res = await generateText({
        model: openai(s.model),
        system: INSTRUCTIONS,
        prompt: QUESTION,
        tools: { get_weather: tool({ description: 'The weather in a city.', inputSchema: jsonSchema(WEATHER as Parameters<typeof jsonSchema>[0]), execute: () => Promise.resolve({ temperature: 12 }) }) },
        toolChoice: 'required',
        stopWhen: stepCountIs(2),
        maxOutputTokens: 100,
        temperature: 0,
        maxRetries: 0,
      });
      // Step 2's request carries step 1's function_call and function_call_output items.
      expect(res.steps).toHaveLength(2);
      for (const step of res.steps) {
        expect(step.finishReason).toBe('tool-calls');
        expect(step.toolCalls).toHaveLength(1);
        expect(step.toolCalls[0].toolName).toBe('get_weather');
        expect(validators.get_weather(step.toolCalls[0].input)).toBe(true);
        expect(step.toolResults[0].output).toEqual({ temperature: 12 });
      }
      expect(res.steps[1].usage.inputTokens).toBeGreaterThan(res.steps[0].usage.inputTokens!);
    });

    it('"auto" (the default) and "none": text in a message item; the tools are in the prompt either way', async () => {
      const auto = await create({ temperature: 1, max_output_tokens: 24 });
      for (const item of auto.output) expect(['message', 'function_call']).toContain(item.type);
      expect(auto.output.length).toBeGreaterThan(0);
      expect(auto.tool_choice).toBe('auto');
      const none = await create({ tool_choice: 'none', temperature: 1, max_output_tokens: 24 });
      expect(none.output.map((o) => o.type)).toEqual(['message']);
      const without = await s.client.responses.create({ model: s.model, instructions: INSTRUCTIONS, input: QUESTION, max_output_tokens: 1 });
      expect(none.usage!.input_tokens).toBeGreaterThan(without.usage!.input_tokens);
    });

    it('refuses what it cannot serve, naming the field', async () => {
      const refused = (extra: object) =>
        s.client.responses.create({ model: s.model, input: QUESTION, max_output_tokens: 4, ...extra } as OpenAI.Responses.ResponseCreateParamsNonStreaming).then(
          () => null,
          (e: unknown) => e as InstanceType<typeof OpenAI.BadRequestError>,
        );
      const cases: Array<[object, string]> = [
        [{ tools: TOOLS, tool_choice: { type: 'function', name: 'nope' } }, 'tool_choice.name'],
        [{ tool_choice: 'required' }, 'tool_choice'],
        [{ tools: TOOLS, tool_choice: { type: 'allowed_tools', mode: 'auto', tools: [] } }, 'tool_choice'],
        [{ tools: [{ type: 'web_search' }] }, 'tools[0].type'],
        [{ tools: [TOOLS[0], { ...TOOLS[0] }] }, 'tools[1].name'],
        [{ tools: [{ type: 'function', name: 'f', strict: false, parameters: { type: 'object', properties: { s: { type: 'string', pattern: 'x' } } } }], tool_choice: 'required' }, 'tools[0].parameters.properties.s.pattern'],
        [{ tools: TOOLS, tool_choice: 'required', text: { format: { type: 'json_object' } } }, 'text.format'],
        [{ tools: TOOLS, input: [{ role: 'user', content: 'Hi' }, { type: 'function_call', call_id: 'c', name: 'lookup', arguments: '{not json' }] }, 'input[1].arguments'],
      ];
      for (const [extra, param] of cases) {
        const e = await refused(extra);
        expect(e?.status, JSON.stringify(extra)).toBe(400);
        expect(e?.param, JSON.stringify(extra)).toBe(param);
      }
    });
  });
}
