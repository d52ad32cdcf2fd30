import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatTemplate, type SpecialTokens } from '../../src/model/chat-template.js';
import { specialTokensOf } from '../../src/model/tokenizer.js';
import { ChatMessageSchema } from '../../src/openai/schemas.js';
import { chatMessagesOf } from '../../src/openai/serve-chat.js';
import { startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';
import { FAMILIES, type Family } from '../helpers/model-families.js';
import { REPO_ROOT } from '../helpers/paths.js';
import { closeServed, FAMILY_CASES, FIXTURES, LOOKUP, serveFamily, TOOLS_UNSUPPORTED, validators, WEATHER, type Served } from '../helpers/tool-models.js';

/**
 * Tool calling through the official openai SDK on the real gateway, with tiny random-weight models of
 * the Qwen3 and Llama 3 architectures and their real tokenizers: Qwen3 with its own template (which
 * renders tools, Hermes-style `<tool_call>` syntax), Llama 3 with Meta's Llama 3.1 template
 * (test/fixtures/chat-templates; JSON `{"name", "parameters"}` syntax). Random weights never choose to
 * call a tool, so every call here is `tool_choice` enforced by constrained decoding, and every call
 * must parse and validate against its tool's schema. The prompts with tools are checked against
 * transformers' rendering (test/reference/render_chat.py, Python jinja2) for Qwen3, Qwen2.5 and Llama 3.1.
 * `auto` is read from the model's text, tested on text in test/unit/tool-call-parsing.test.ts.
 */
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-tools-'));
const TOOLS: OpenAI.Chat.ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', description: 'The weather in a city.', parameters: WEATHER, strict: true } },
  { type: 'function', function: { name: 'lookup', description: 'Find items by id.', parameters: LOOKUP } },
];
const USER: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'What is the weather in Oslo for 3 days?' },
];

function expectValidCalls(message: OpenAI.Chat.ChatCompletionMessage, names: string[]): void {
  expect(message.tool_calls?.length).toBe(1);
  for (const call of message.tool_calls ?? []) {
    expect(call.type).toBe('function');
    expect(call.id).toMatch(/^call_[0-9a-f]{24}$/);
    if (call.type !== 'function') continue;
    expect(names).toContain(call.function.name);
    const args: unknown = JSON.parse(call.function.arguments);
    const validate = validators[call.function.name];
    expect(validate(args), `${call.function.arguments}: ${JSON.stringify(validate.errors)}`).toBe(true);
  }
}

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

for (const { label, family, template } of FAMILY_CASES) {
  describe(`tool calling on a ${label}`, () => {
    let s: Served;
    beforeAll(async () => {
      s = await serveFamily(tmp, family, template);
    }, 240_000);
    afterAll(() => closeServed(s));

    it('tool_choice "required": every choice calls one of the tools, with arguments that validate, finish_reason tool_calls', async () => {
      for (const seed of [1, 2]) {
        const r = await s.client.chat.completions.create({ model: s.model, messages: USER, tools: TOOLS, tool_choice: 'required', temperature: 1, seed, n: 4, max_tokens: 200 });
        expect(r.choices).toHaveLength(4);
        for (const c of r.choices) {
          expect(c.finish_reason).toBe('tool_calls');
          expect(c.message.content).toBeNull();
          expectValidCalls(c.message, ['get_weather', 'lookup']);
        }
      }
    });

    it('a named tool_choice calls that function', async () => {
      for (const name of ['get_weather', 'lookup']) {
        const r = await s.client.chat.completions.create({
          model: s.model,
          messages: USER,
          tools: TOOLS,
          tool_choice: { type: 'function', function: { name } },
          temperature: 1,
          seed: 7,
          n: 3,
          max_tokens: 200,
        });
        for (const c of r.choices) {
          expect(c.finish_reason).toBe('tool_calls');
          expectValidCalls(c.message, [name]);
        }
      }
    });

    it("streams tool_calls deltas as OpenAI does, and they reassemble to the non-streaming response's calls", async () => {
      const request = { model: s.model, messages: USER, tools: TOOLS, tool_choice: 'required' as const, temperature: 1, seed: 3, max_tokens: 200 };
      const whole = await s.client.chat.completions.create(request);
      const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
      for await (const chunk of await s.client.chat.completions.create({ ...request, stream: true })) chunks.push(chunk);
      expect(chunks[0].choices[0].delta.role).toBe('assistant');
      const deltas = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []);
      // The name first, then the arguments in pieces as they are generated.
      expect(deltas.length).toBeGreaterThan(2);
      expect(deltas.slice(1).every((d) => d.id === undefined && d.function?.name === undefined)).toBe(true);
      expect(deltas[0]).toMatchObject({ index: 0, type: 'function', id: expect.stringMatching(/^call_/) as unknown });
      expect(deltas[0].function?.name).toBe(whole.choices[0].message.tool_calls?.[0].type === 'function' ? whole.choices[0].message.tool_calls[0].function.name : null);
      const args = deltas.map((d) => d.function?.arguments ?? '').join('');
      const first = whole.choices[0].message.tool_calls?.[0];
      expect(first?.type === 'function' ? first.function.arguments : null).toBe(args);
      expect(chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean)).toEqual(['tool_calls']);
      // The SDK's own stream helper puts the same message together.
      const helper = s.client.chat.completions.stream(request);
      const final = await helper.finalChatCompletion();
      expect(final.choices[0].finish_reason).toBe('tool_calls');
      expectValidCalls(final.choices[0].message, ['get_weather', 'lookup']);
      const again = final.choices[0].message.tool_calls?.[0];
      expect(again?.type === 'function' ? again.function.arguments : null).toBe(args);
    });

    it('a round trip: the call and its result go back through the template, and the model answers', async () => {
      const call = await s.client.chat.completions.create({
        model: s.model,
        messages: USER,
        tools: TOOLS,
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
        temperature: 0,
        max_tokens: 200,
      });
      const message = call.choices[0].message;
      const tc = message.tool_calls![0];
      const followUp: OpenAI.Chat.ChatCompletionMessageParam[] = [
        ...USER,
        { role: 'assistant', content: message.content, tool_calls: message.tool_calls },
        { role: 'tool', tool_call_id: tc.id, content: '{"temperature": 12, "sky": "clear"}' },
      ];
      const r = await s.client.chat.completions.create({ model: s.model, messages: followUp, tools: TOOLS, max_tokens: 8, temperature: 0 });
      expect(['stop', 'length', 'tool_calls']).toContain(r.choices[0].finish_reason);
      // The prompt is the template's rendering of these messages, token for token.
      const ours = new ChatTemplate(templateOf(family, template), specialsOf(family)).render(
        chatMessagesOf(
          followUp.map((m) => ChatMessageSchema.parse(m)),
          true,
        ),
        { tools: TOOLS as never },
      );
      const asText = await s.client.completions.create({ model: s.model, prompt: ours, max_tokens: 1 });
      expect(r.usage?.prompt_tokens).toBe(asText.usage?.prompt_tokens);
      // The result is in the prompt (Llama 3.1's template prints a string result with tojson, quoted; Qwen's as it is).
      expect(ours).toMatch(/\\?"temperature\\?": 12/);
    });

    it('tool_choice "none": tools are rendered, the reply is not read for calls', async () => {
      const r = await s.client.chat.completions.create({ model: s.model, messages: USER, tools: TOOLS, tool_choice: 'none', temperature: 1, seed: 5, n: 3, max_tokens: 24 });
      for (const c of r.choices) {
        expect(c.message.tool_calls ?? []).toEqual([]);
        expect(c.finish_reason).not.toBe('tool_calls');
        expect(typeof c.message.content).toBe('string');
      }
      const without = await s.client.chat.completions.create({ model: s.model, messages: USER, max_tokens: 1 });
      expect(r.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens);
    });

    it('tool_choice "auto" (the default with tools): free text, read for calls; a random model answers in text', async () => {
      const r = await s.client.chat.completions.create({ model: s.model, messages: USER, tools: TOOLS, temperature: 1, seed: 9, n: 3, max_tokens: 24 });
      for (const c of r.choices) {
        if (c.message.tool_calls?.length) expect(c.finish_reason).toBe('tool_calls');
        else expect(typeof c.message.content).toBe('string');
      }
    });

    it('refuses a tool_choice naming an unknown function, and tool_choice without tools, naming the field', async () => {
      const bad = (extra: object) =>
        s.client.chat.completions.create({ model: s.model, messages: USER, max_tokens: 4, ...extra }).then(
          () => null,
          (e: unknown) => e as InstanceType<typeof OpenAI.BadRequestError>,
        );
      const unknown = await bad({ tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } });
      expect(unknown?.status).toBe(400);
      expect(unknown?.param).toBe('tool_choice.function.name');
      const none = await bad({ tool_choice: 'required' });
      expect(none?.status).toBe(400);
      expect(none?.param).toBe('tool_choice');
      const args = await bad({
        tools: TOOLS,
        messages: [...USER, { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'lookup', arguments: '{not json' } }] }],
      });
      expect(args?.status).toBe(400);
      expect(args?.param).toBe('messages[2].tool_calls[0].function.arguments');
      const schema = await bad({ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { s: { type: 'string', pattern: 'x' } } } } }], tool_choice: 'required' });
      expect(schema?.status).toBe(400);
      expect(schema?.param).toBe('tools[0].function.parameters.properties.s.pattern');
    });
  });
}

describe('a model whose template has no tool support', () => {
  let gw: TestGateway;
  let client: OpenAI;
  beforeAll(async () => {
    gw = await startTestGateway();
    client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it("stories260K refuses tools with a 400 in OpenAI's shape, param tools", async () => {
    const err = await client.chat.completions
      .create({ model: 'stories260K', messages: [{ role: 'user', content: 'Hi' }], tools: TOOLS, max_tokens: 4 })
      .then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).error).toEqual(TOOLS_UNSUPPORTED);
    // Nor does it render earlier calls: refused rather than dropped from the prompt.
    const history = await client.chat.completions
      .create({
        model: 'stories260K',
        messages: [
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
          { role: 'tool', tool_call_id: 'call_1', content: 'ok' },
        ],
        max_tokens: 4,
      })
      .then(() => null, (e: unknown) => e as InstanceType<typeof OpenAI.BadRequestError>);
    expect(history?.status).toBe(400);
    expect(history?.param).toBe('messages[1].tool_calls');
  });
});

// ---- The prompt with tools, against transformers' rendering ----

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const hasJinja = spawnSync(PYTHON, ['-c', 'import jinja2'], { encoding: 'utf8' }).status === 0;
if (!hasJinja) {
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error('tool-calling: python3 cannot import jinja2; install python3-jinja2');
  console.warn('tool-calling template parity SKIPPED: python3 cannot import jinja2 (install python3-jinja2)');
}

function templateOf(family: Family, override?: string): string {
  if (override !== undefined) return override;
  return (JSON.parse(fs.readFileSync(path.join(FAMILIES[family].tokenizerDir, 'tokenizer_config.json'), 'utf8')) as { chat_template: string }).chat_template;
}
function specialsOf(family: Family): SpecialTokens {
  return specialTokensOf(JSON.parse(fs.readFileSync(path.join(FAMILIES[family].tokenizerDir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>);
}

const call = (id: string, name: string, args: object) => ({ id, type: 'function' as const, function: { name, arguments: JSON.stringify(args) } });
const CONVERSATIONS: Record<string, OpenAI.Chat.ChatCompletionMessageParam[]> = {
  'tools, system and user': USER,
  'tools, no system message': [{ role: 'user', content: 'Find item 7 — 中文 "quoted" 😀' }],
  'a call and its result': [
    ...USER,
    { role: 'assistant', content: null, tool_calls: [call('call_1', 'get_weather', { city: 'Oslo', unit: 'celsius', days: 3 })] },
    { role: 'tool', tool_call_id: 'call_1', content: '{"temperature": 12, "sky": "clear"}' },
  ],
  'text beside a call, a plain-text result, then the answer and a new question': [
    ...USER,
    { role: 'assistant', content: 'Checking.', tool_calls: [call('call_1', 'lookup', { ids: [1, 2], where: { shelf: 'a', row: null }, exact: true })] },
    { role: 'tool', tool_call_id: 'call_1', content: 'two items: ünïcode & <tags>' },
    { role: 'assistant', content: 'Found two.' },
    { role: 'user', content: 'And tomorrow?' },
  ],
  'two calls at once and their two results': [
    ...USER,
    { role: 'assistant', content: '', tool_calls: [call('call_a', 'get_weather', { city: 'Paris', unit: 'celsius', days: 1 }), call('call_b', 'lookup', { ids: [], where: { shelf: 'b' } })] },
    { role: 'tool', tool_call_id: 'call_a', content: '20' },
    { role: 'tool', tool_call_id: 'call_b', content: '[]' },
  ],
};

const PARITY_TEMPLATES: Array<{ label: string; family: Family; file?: string }> = [
  { label: 'Qwen3 (../shared/tokenizers/qwen3)', family: 'qwen3' },
  { label: 'Qwen2.5', family: 'qwen2', file: 'qwen2.5.jinja' },
  { label: 'Llama 3.1', family: 'llama3', file: 'llama-3.1.jinja' },
];

describe.skipIf(!hasJinja)('prompts with tools render as transformers renders them', () => {
  for (const { label, family, file } of PARITY_TEMPLATES) {
    it(`${label}: every conversation, with and without tools, equals Python jinja2's rendering`, () => {
      const template = templateOf(family, file ? fs.readFileSync(path.join(FIXTURES, file), 'utf8') : undefined);
      const variables = specialsOf(family);
      const jobs = Object.values(CONVERSATIONS).flatMap((conversation) => {
        const messages = chatMessagesOf(
          conversation.map((m) => ChatMessageSchema.parse(m)),
          true,
        );
        return [TOOLS, null].map((tools) => ({ template, messages, tools, add_generation_prompt: true, variables }));
      });
      const r = spawnSync(PYTHON, [path.join(REPO_ROOT, 'test', 'reference', 'render_chat.py')], { input: JSON.stringify(jobs), encoding: 'utf8', maxBuffer: 64 << 20 });
      expect(r.status, r.stderr).toBe(0);
      const expected = JSON.parse(r.stdout) as Array<{ text: string } | { error: string }>;
      let rendered = 0;
      jobs.forEach((job, i) => {
        let ours: { text: string } | { error: string };
        try {
          ours = { text: new ChatTemplate(job.template, job.variables).render(job.messages, { addGenerationPrompt: true, tools: job.tools as never }) };
        } catch (err) {
          ours = { error: (err as Error).message };
        }
        if ('error' in expected[i]) expect('error' in ours, `job ${i}: python raised ${JSON.stringify(expected[i])}`).toBe(true);
        else {
          expect(ours, `job ${i}`).toEqual(expected[i]);
          rendered++;
        }
      });
      // Llama 3.1's template refuses two calls in one turn (it raises, here and in Python); the rest render.
      expect(rendered).toBeGreaterThanOrEqual(jobs.length - 2);
      const withTools = expected[0];
      expect('text' in withTools && withTools.text).toContain('get_weather');
    });
  }
});
