import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../../src/formats/safetensors.js';
import { importModel } from '../../src/model/import.js';
import { readManifest } from '../../src/model/package-files.js';
import { REPO_ROOT, SHARED, STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { writePerturbedCheckpoint, writeRespeltTokenizer } from '../helpers/stories-bin.js';

/**
 * The offline harvest for a mixture: `carryon harvest --model A --model B` runs each base over the
 * same records into OUT/<base folder>, so the shard sets agree row by row (the trainer's mixture
 * input); bases whose tokenizers differ are refused before anything is written.
 */
let tmp: string;
const run = (args: string[]) => promisify(execFile)(process.execPath, ['bin/carryon.js', 'harvest', ...args], { cwd: REPO_ROOT });

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-mixture-harvest-'));
  writePerturbedCheckpoint(path.join(tmp, 'other.bin'), { seed: 4, scale: 0.3 });
  writeRespeltTokenizer(path.join(tmp, 'respelt.bin'), STORIES_TOK, 400, 'qqxq');
  await importModel(STORIES_BIN, path.join(tmp, 'a'), { tokenizerPath: STORIES_TOK, name: 'a' });
  await importModel(path.join(tmp, 'other.bin'), path.join(tmp, 'b'), { tokenizerPath: STORIES_TOK, name: 'b' });
  await importModel(path.join(tmp, 'other.bin'), path.join(tmp, 'c'), { tokenizerPath: path.join(tmp, 'respelt.bin'), name: 'c' });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function shardsOf(dir: string) {
  const files = fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.safetensors'));
  expect(files).toHaveLength(1);
  return readSafetensors(path.join(dir, files[0]));
}

describe('offline harvest of several bases', () => {
  it('writes one aligned shard set per base, each naming its own base', { timeout: 60_000 }, async () => {
    const out = path.join(tmp, 'out');
    const input = path.join(SHARED, 'data/gsm8k/test.jsonl');
    const { stdout } = await run(['--model', path.join(tmp, 'a'), '--model', path.join(tmp, 'b'), '--input', input, '--out', out, '--limit', '5', '--format', 'jsonl']);
    expect(stdout).toMatch(/harvested 5 records/);
    const a = shardsOf(path.join(out, 'a'));
    const b = shardsOf(path.join(out, 'b'));
    expect(a.metadata.base_fingerprint).toBe(readManifest(path.join(tmp, 'a')).fingerprint);
    expect(b.metadata.base_fingerprint).toBe(readManifest(path.join(tmp, 'b')).fingerprint);
    for (const name of ['token_ids', 'target_ids', 'seq_offsets', 'is_completion']) {
      expect(Array.from(b.tensors.get(name)!.data as ArrayLike<number | bigint>), name).toEqual(Array.from(a.tensors.get(name)!.data as ArrayLike<number | bigint>));
    }
    expect(JSON.parse(b.metadata.request_ids)).toEqual(JSON.parse(a.metadata.request_ids));
    // Two bases, two different states for the same tokens.
    expect(Buffer.from((b.tensors.get('hidden.final')!.data as Uint16Array).buffer).equals(Buffer.from((a.tensors.get('hidden.final')!.data as Uint16Array).buffer))).toBe(false);
  });

  it('refuses bases whose tokenizers differ, before writing anything', async () => {
    const out = path.join(tmp, 'refused');
    const input = path.join(SHARED, 'data/gsm8k/test.jsonl');
    await expect(run(['--model', path.join(tmp, 'a'), '--model', path.join(tmp, 'c'), '--input', input, '--out', out, '--limit', '2'])).rejects.toThrow(/does not have .*'s tokenizer/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
