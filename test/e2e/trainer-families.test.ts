/**
 * The trainer on a base of another family and size of vocabulary: a Qwen2-shaped base (q/k/v biases,
 * tied head over the real 151,936-token Qwen vocabulary) imported from its Hugging Face folder,
 * harvested offline from TinyStories text with `carryon harvest`, trained with the Python trainer
 * (its chunked head loss over the whole vocabulary), exported, and the export's parity checked
 * against the trained PyTorch module by `carryon carry-on verify`, as the trainer always does.
 * Needs python3 with torch; skipped, loudly, without (a failure in CI, which sets CARRYON_TRAINER_REQUIRED).
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { importModel } from '../../src/model/import.js';
import { readTrainerReport } from '../../src/training/trainer-report.js';
import { writeHfFolder } from '../helpers/hf-folder.js';
import { FAMILIES, randomFamilyWeights } from '../helpers/model-families.js';
import { REPO_ROOT, SHARED } from '../helpers/paths.js';

const TRAINER = path.join(REPO_ROOT, 'trainer');
const which = spawnSync(path.join(TRAINER, 'python'), ['--which'], { encoding: 'utf8' });
const python = which.status === 0 ? which.stdout.trim() : null;
if (!python) {
  const why = which.stderr.trim() || 'no python3 with torch';
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`trainer-families: ${why}`);
  console.warn(`trainer-families SKIPPED: ${why}`);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-trainer-families-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const run = promisify(execFile);

describe.skipIf(!python)('the trainer on a Qwen2-shaped base', () => {
  it('harvests, trains over the 151,936-token head, and exports a carry-on that passes parity', async () => {
    const folder = path.join(tmp, 'tiny-qwen2');
    writeHfFolder(folder, randomFamilyWeights('qwen2', 5), { dtype: 'F32', shards: 1, tokenizerFrom: FAMILIES.qwen2.tokenizerDir });
    const pkg = path.join(tmp, 'pkg');
    await importModel(folder, pkg);
    const text = path.join(tmp, 'stories.txt');
    fs.writeFileSync(text, fs.readFileSync(path.join(SHARED, 'data/tinystories/tinystories_val.txt'), 'utf8').slice(0, 20_000));
    const shards = path.join(tmp, 'shards');
    const harvested = await run(process.execPath, ['bin/carryon.js', 'harvest', '--model', pkg, '--input', text, '--out', shards, '--max-tokens', '128'], { cwd: REPO_ROOT });
    expect(harvested.stdout).toMatch(/harvested \d+ records/);

    const out = path.join(tmp, 'run');
    const args = ['train', '--base', pkg, '--shards', shards, '--out', out, '--id', 'qtrain', '--width', '32', '--layers', '1', '--heads', '2',
      '--steps', '20', '--batch-size', '4', '--seq-len', '64', '--no-progress', '--threads', '1'];
    await run(path.join(TRAINER, 'carryon-train'), args, { cwd: REPO_ROOT, maxBuffer: 16 << 20 });
    const report = readTrainerReport(path.join(out, 'report.json'));
    expect(report?.export?.verify.ok).toBe(true);
    // The held-out loss of the trained carry-on is below the base's: it learned something through the big head.
    expect(report!.eval!.carry_on!.loss).toBeLessThan(report!.eval!.base!.loss);
    expect(fs.existsSync(path.join(report!.export!.package, 'manifest.json'))).toBe(true);
  }, 600_000);
});
