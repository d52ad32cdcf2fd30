/**
 * Input records for the offline harvest: a text file of blank-line-separated paragraphs, or JSON
 * Lines (a `.json` array is read the same way) in the shapes found in public data sets:
 *
 * - `{"text"}`                                  plain text
 * - `{"question","answer"}` (GSM8K), `{"prompt","completion"}`   a prompt and its answer
 * - `{"instruction","input"?,"output"?}` or `{"instruction","instances":[{"input","output"}]}` (Self-Instruct)
 * - `{"messages":[{"role","content"}]}` (OpenAI), `{"conversations":[{"from","value"}]}` (FastChat/ShareGPT)
 * - `{"turns":[...]}` (MT-Bench questions: user turns only)
 *
 * Each becomes plain text or a chat; prompt/answer shapes keep both forms, so `--format chat` can
 * render them as a user turn and an assistant turn.
 */
import fs from 'node:fs';
import type { ChatMessage } from '../model/chat-template.js';

export type InputFormat = 'text' | 'jsonl' | 'chat';

/** One input unit: `text` for plain rendering; `messages` when it is (or can be seen as) a chat. */
export interface InputRecord {
  index: number;
  text: string;
  messages: ChatMessage[] | null;
  /** The source is a chat (messages, conversations, turns): always rendered through the chat template. */
  isChat: boolean;
}

export function defaultFormat(file: string): InputFormat {
  return /\.(jsonl|json)$/i.test(file) ? 'jsonl' : 'text';
}

/** Reads every record; `skipped` counts JSON values that match none of the shapes above. */
export function readRecords(file: string, format: InputFormat): { records: InputRecord[]; skipped: number } {
  const raw = fs.readFileSync(file, 'utf8');
  if (format === 'text') {
    const paragraphs = raw.split(/\r?\n[ \t]*\r?\n/).map((p) => p.trim()).filter((p) => p.length > 0);
    return { records: paragraphs.map((text, index) => ({ index, text, messages: null, isChat: false })), skipped: 0 };
  }
  const values = parseJsonValues(raw, file);
  const records: InputRecord[] = [];
  let skipped = 0;
  values.forEach((v, index) => {
    const r = toRecord(v, index);
    if (r) records.push(r);
    else skipped++;
  });
  return { records, skipped };
}

function parseJsonValues(raw: string, file: string): unknown[] {
  const trimmed = raw.trimStart();
  if (trimmed.startsWith('[')) {
    const arr: unknown = JSON.parse(trimmed);
    if (!Array.isArray(arr)) throw new Error(`${file}: expected a JSON array`);
    return arr;
  }
  const out: unknown[] = [];
  raw.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    try {
      out.push(JSON.parse(line));
    } catch (err) {
      throw new Error(`${file}:${i + 1}: not JSON (${(err as Error).message})`, { cause: err });
    }
  });
  return out;
}

const ROLE_OF: Record<string, string> = { human: 'user', user: 'user', gpt: 'assistant', assistant: 'assistant', chatgpt: 'assistant', bing: 'assistant', bard: 'assistant', system: 'system' };

function toRecord(v: unknown, index: number): InputRecord | null {
  if (!isObject(v)) return null;
  const str = (k: string): string | null => (typeof v[k] === 'string' ? v[k] : null);
  const pair = (prompt: string, answer: string): InputRecord => ({
    index,
    text: `${prompt}\n${answer}`,
    messages: [
      { role: 'user', content: prompt },
      { role: 'assistant', content: answer },
    ],
    isChat: false,
  });

  if (Array.isArray(v.messages)) {
    const messages = v.messages.filter(isObject).flatMap((m): ChatMessage[] =>
      typeof m.role === 'string' && typeof m.content === 'string' ? [{ role: m.role, content: m.content }] : [],
    );
    return messages.length > 0 ? chat(index, messages) : null;
  }
  if (Array.isArray(v.conversations)) {
    const messages = v.conversations.filter(isObject).flatMap((m): ChatMessage[] =>
      typeof m.from === 'string' && typeof m.value === 'string' ? [{ role: ROLE_OF[m.from] ?? m.from, content: m.value }] : [],
    );
    return messages.length > 0 ? chat(index, messages) : null;
  }
  const text = str('text');
  if (text !== null) return { index, text, messages: null, isChat: false };
  const question = str('question');
  const answer = str('answer');
  if (question !== null && answer !== null) return pair(question, answer);
  const prompt = str('prompt');
  const completion = str('completion');
  if (prompt !== null && completion !== null) return pair(prompt, completion);
  const instruction = str('instruction');
  if (instruction !== null) {
    const inst = Array.isArray(v.instances) && isObject(v.instances[0]) ? v.instances[0] : v;
    const input = typeof inst.input === 'string' ? inst.input : '';
    const output = typeof inst.output === 'string' ? inst.output : '';
    const asked = input ? `${instruction}\n${input}` : instruction;
    return output ? pair(asked, output) : { index, text: asked, messages: [{ role: 'user', content: asked }], isChat: false };
  }
  if (Array.isArray(v.turns) && v.turns.every((t) => typeof t === 'string') && v.turns.length > 0) {
    return chat(index, v.turns.map((content) => ({ role: 'user', content })));
  }
  return null;
}

function chat(index: number, messages: ChatMessage[]): InputRecord {
  return { index, text: messages.map((m) => m.content).join('\n'), messages, isChat: true };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
