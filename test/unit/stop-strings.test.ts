import path from 'node:path';
import os from 'node:os';
import { beforeAll, describe, expect, it } from 'vitest';
import { importModel } from '../../src/model/import.js';
import { TextAssembler } from '../../src/serving/text-assembler.js';
import { ModelTokenizer } from '../../src/model/tokenizer.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

let tok: ModelTokenizer;

beforeAll(async () => {
  const dir = path.join(os.tmpdir(), 'carryon-test-data', 'models', 'stories260K-tok');
  await importModel(STORIES_BIN, dir, { tokenizerPath: STORIES_TOK, name: 'stories260K' });
  tok = ModelTokenizer.load(dir, 512);
});

function run(text: string, stops: string[], prompt = 'Once upon a time') {
  const context = tok.encode(prompt, true);
  // The continuation's ids as the model would produce them: tokenised after the prompt.
  const ids = tok.encode(prompt + text, true).slice(context.length);
  expect(tok.encode(prompt + text, true).slice(0, context.length)).toEqual(context);
  const a = new TextAssembler(tok, context, stops);
  let out = '';
  let stopped = false;
  for (const id of ids) {
    const r = a.push(id);
    out += r.delta;
    if (r.stop) {
      stopped = true;
      break;
    }
  }
  if (!stopped) out += a.flush();
  return { out, stopped };
}

describe('text assembly', () => {
  it('keeps the leading space of a continuation', () => {
    expect(run(' there was a girl', []).out).toBe(' there was a girl');
  });

  it('cuts at a stop string spanning several tokens and never emits it', () => {
    const r = run(' there was a little girl named Lily.', ['girl named']);
    expect(r).toEqual({ out: ' there was a little ', stopped: true });
  });

  it('releases held-back text that turned out not to be a stop string', () => {
    expect(run(' the cat sat on the mat', ['the dog']).out).toBe(' the cat sat on the mat');
  });

  it('holds back an incomplete UTF-8 sequence until it is complete', () => {
    const context = tok.encode('x', true);
    const ids = tok.encode('x café 😀', true).slice(context.length);
    const a = new TextAssembler(tok, context, []);
    const deltas = ids.map((id) => a.push(id).delta);
    expect(deltas.join('') + a.flush()).toBe(' café 😀');
    expect(deltas.every((d) => !d.includes('\uFFFD'))).toBe(true);
  });
});
