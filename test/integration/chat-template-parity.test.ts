import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';
import { ChatTemplate, PLAIN_CHAT_TEMPLATE, type ChatMessage, type SpecialTokens } from '../../src/model/chat-template.js';
import { specialTokensOf } from '../../src/model/tokenizer.js';
import { renderMessages } from '../../src/openai/serve-chat.js';
import { ApiError } from '../../src/core/errors.js';
import { REPO_ROOT, SHARED } from '../helpers/paths.js';

/**
 * Chat templates render here exactly as Hugging Face's Python stack renders them: each conversation is
 * rendered by our ChatTemplate and by jinja2 set up as transformers sets it up
 * (test/reference/render_chat.py), on the real Llama 3 and Qwen3 templates and tokenizer configs from
 * ../shared/tokenizers, on the fallback used by base models (stories260K), and on small templates that
 * use raise_exception, tojson, strftime_now and loop controls; the strings must be equal. Needs python3 with jinja2
 * (Debian's python3-jinja2); skipped, loudly, without it, unless CARRYON_TRAINER_REQUIRED=1 (CI), where
 * it fails.
 */
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const probe = spawnSync(PYTHON, ['-c', 'import jinja2'], { encoding: 'utf8' });
const hasJinja = probe.status === 0;
if (!hasJinja) {
  const why = `${PYTHON} cannot import jinja2 (${(probe.stderr || String(probe.error ?? '')).trim()}); install python3-jinja2`;
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`chat-template-parity: ${why}`);
  console.warn(`chat-template-parity SKIPPED: ${why}`);
}
const REFERENCE = path.join(REPO_ROOT, 'test', 'reference', 'render_chat.py');

interface Job {
  template: string;
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  variables: SpecialTokens;
}
type Rendered = { text: string } | { error: string };

/** Renders every job with Python's jinja2 in one process. */
function pythonRender(jobs: Job[]): Rendered[] {
  const r = spawnSync(PYTHON, [REFERENCE], { input: JSON.stringify(jobs), encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`render_chat.py failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Rendered[];
}

function ourRender(job: Job): Rendered {
  try {
    return { text: new ChatTemplate(job.template, job.variables).render(job.messages, { addGenerationPrompt: job.add_generation_prompt }) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

function realTemplate(family: 'llama3' | 'qwen3'): { template: string; variables: SpecialTokens } {
  const config = JSON.parse(fs.readFileSync(path.join(SHARED, 'tokenizers', family, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  return { template: config.chat_template as string, variables: specialTokensOf(config) };
}

const sys = (content: string): ChatMessage => ({ role: 'system', content });
const user = (content: string): ChatMessage => ({ role: 'user', content });
const asst = (content: string): ChatMessage => ({ role: 'assistant', content });

const UNICODE = 'He said "hi" — it\'s fine 😀👍🏽 中文 Ελληνικά עברית\n\nsecond paragraph\twith a tab, a \\ backslash, {{ braces }} and {% percent %}';
const CONVERSATIONS: Record<string, ChatMessage[]> = {
  'one user turn': [user('Hello!')],
  'system and user': [sys('You are a helpful assistant.'), user('What is 2 + 2?')],
  'multi-turn': [sys('Be brief.'), user('Hi'), asst('Hello! How can I help?'), user('Tell me a joke.'), asst('Why did the chicken cross the road?'), user('Why?')],
  'ends with the assistant': [user('Say OK.'), asst('OK.')],
  'unicode, emoji, quotes, newlines': [sys(UNICODE), user(UNICODE), asst(UNICODE), user('again: ' + UNICODE)],
  'whitespace around contents': [user('  padded both sides \n\n'), asst('\n\nleading newlines'), user('\t')],
  'empty contents': [sys(''), user(''), asst(''), user('')],
  'assistant reasoning in think tags': [user('What is 1+1?'), asst('<think>\nSimple sum.\n</think>\n\n2'), user('And 2+2?'), asst('<think>\nAgain.\n</think>\n\n4')],
  'a system turn later on': [user('Hi'), sys('Switch to French.'), user('Bonjour ?')],
  'a named user': [{ role: 'user', content: 'Hi, I am Ann.', name: 'ann' }],
};

const ALTERNATING =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
const FEATURES = `{%- for message in messages %}
  {{- '[' + message.role + ']' }}
  {%- if message.role == 'system' %}{% continue %}{% endif %}
  {{- message | tojson }}
  {{- message | tojson(indent=2) }}
  {%- if loop.index0 > 3 %}{% break %}{% endif %}
{%- endfor %}
Today is {{ strftime_now("%d %b %Y") }}, a {{ strftime_now("%A") }}.
{% if tools is none and documents is none %}no tools{% endif %}, {% if unk_token is defined %}{{ unk_token }}{% else %}no unk{% endif %}`;

describe.skipIf(!hasJinja)('chat template parity with transformers (Python jinja2)', () => {
  const jobs: { name: string; job: Job }[] = [];
  const templates: Record<string, { template: string; variables: SpecialTokens }> = {
    llama3: realTemplate('llama3'),
    qwen3: realTemplate('qwen3'),
    'fallback (stories260K)': { template: PLAIN_CHAT_TEMPLATE, variables: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } },
    'tojson, strftime_now, break and continue': { template: FEATURES, variables: { bos_token: '<s>' } },
  };
  for (const [t, { template, variables }] of Object.entries(templates)) {
    for (const [c, messages] of Object.entries(CONVERSATIONS)) {
      for (const add of [true, false]) {
        jobs.push({ name: `${t}: ${c}, add_generation_prompt ${add}`, job: { template, messages, add_generation_prompt: add, variables } });
      }
    }
  }
  const alternating = { template: ALTERNATING, variables: { bos_token: '<s>', eos_token: '</s>' } };
  jobs.push({ name: 'raise_exception: alternating roles', job: { ...alternating, messages: [user('a'), asst('b'), user('c')], add_generation_prompt: true } });
  jobs.push({ name: 'raise_exception: two user turns in a row', job: { ...alternating, messages: [user('a'), user('b')], add_generation_prompt: true } });

  let reference: Rendered[] = [];
  beforeAll(() => {
    reference = pythonRender(jobs.map((j) => j.job));
  });

  it('renders every conversation exactly as jinja2 does, on the Llama 3, Qwen3 and fallback templates', () => {
    const mismatches = jobs
      .map(({ name, job }, i) => ({ name, ours: ourRender(job), theirs: reference[i] }))
      .filter(({ ours, theirs }) => JSON.stringify(ours) !== JSON.stringify(theirs));
    expect(mismatches).toEqual([]);
    // The comparison is not vacuous: every job but the refused conversation rendered text, and that one raised.
    expect(reference.filter((r) => 'text' in r).length).toBe(jobs.length - 1);
    expect(reference.at(-1)).toEqual({ error: 'Conversation roles must alternate user/assistant/user/assistant/...' });
  });
});

// Written-out expectations (jinja2's output), which also run where no Python is.
describe('the templates, without Python', () => {
  it('renders the Llama 3 and Qwen3 turns the models were trained on', () => {
    const llama3Files = realTemplate('llama3');
    const llama3 = new ChatTemplate(llama3Files.template, llama3Files.variables);
    expect(llama3.render([sys('S'), user(' U ')])).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const qwen3Files = realTemplate('qwen3');
    const qwen3 = new ChatTemplate(qwen3Files.template, qwen3Files.variables);
    expect(qwen3.render([sys('S'), user('U')])).toBe('<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n');
    expect(qwen3.render([user('U'), asst('A')], { addGenerationPrompt: false })).toBe('<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n');
  });

  it('keeps what an iteration printed before break and continue, as jinja2 does', () => {
    const loops =
      '{% for x in [1,2,3,4] %}{{ x }}{% if x > 1 %}{% break %}{% endif %}{% endfor %}|{% for x in [1,2,3] %}{{ x }}{% if x == 2 %}{% continue %}{% endif %}-{% endfor %}|' +
      '{% for a in [1,2] %}{% for b in [1,2,3] %}{{ a }}{{ b }}{% if b == 2 %}{% break %}{% endif %},{% endfor %};{% endfor %}|{% for x in [] %}{% break %}{% else %}empty{% endfor %}';
    expect(new ChatTemplate(loops, {}).render([])).toBe('12|1-23-|11,12;21,22;|empty');
  });
});

describe('a template that refuses the conversation', () => {
  it("answers 400 in OpenAI's shape naming messages, with the template's own message", () => {
    const template = new ChatTemplate(ALTERNATING, { bos_token: '<s>', eos_token: '</s>' });
    expect(renderMessages(template, [user('a'), asst('b')], 'messages')).toBe('<s>[INST] a [/INST]b</s>');
    let caught: unknown;
    try {
      renderMessages(template, [user('a'), user('b')], 'messages');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ApiError);
    const e = caught as ApiError;
    expect(e.status).toBe(400);
    expect(e.toBody()).toEqual({
      error: {
        message: 'The chat template rejected these messages: Conversation roles must alternate user/assistant/user/assistant/...',
        type: 'invalid_request_error',
        param: 'messages',
        code: 'invalid_value',
      },
    });
  });
});
