import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readManifest } from '../../src/model/package-files.js';
import { readTrainerReport } from '../../src/training/trainer-report.js';
import { freshDataDir, startTestGateway, ADMIN_KEY, type TestGateway } from '../helpers/gateway.js';
import { gsm8kTrainProblems } from '../helpers/gsm8k.js';
import { harvestKey, harvestStats } from '../helpers/harvest.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';
import { runChild, TRAINER, trainerPython } from '../helpers/trainer.js';
import { writePerturbedCheckpoint } from '../helpers/stories-bin.js';

/**
 * A mixture carry-on from live traffic, end to end: two served bases share a tokenizer; a key's
 * harvest policy names both, so each sampled sequence lands in both bases' shards (the second by
 * replay). The Python trainer pulls both bases' shards through the admin API, joins them by request
 * id (sequences of another key, harvested on one base only, are left out with a warning), trains a
 * mixture carry-on, verifies its export and uploads it; the SDK is then served by it, and α = 0 is
 * the primary base exactly. Needs python3 with torch (CI requires it).
 */
const python = trainerPython('mixture-live-training');

const A = 'stories';
const B = 'stories-other';
const ID = 'mix-live';

let gw: TestGateway;
let work: string;
const pkgDir = (name: string) => path.join(gw.dataDir, 'models', name);

describe.skipIf(!python)('mixture carry-on from live traffic: harvest two bases → train → upload → serve', () => {
  beforeAll(async () => {
    work = freshDataDir('mixture-live-run-');
    const other = path.join(work, 'stories-other.bin');
    writePerturbedCheckpoint(other, { seed: 31, scale: 0.3 });
    fs.copyFileSync(STORIES_TOK, path.join(work, 'tok512.bin'));
    gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir('mixture-live-'), CARRYON_MODELS: `${A}=${STORIES_BIN},${B}=${other}` });
  }, 120_000);
  afterAll(async () => {
    await gw?.close();
    for (const d of [gw?.dataDir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('trains on both bases\' harvested states and serves the result', { timeout: 300_000 }, async () => {
    const both = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: await harvestKey(gw, 't1', { sample_rate: 1, bases: [A, B] }), maxRetries: 0 });
    const onlyA = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: await harvestKey(gw, 't1', { sample_rate: 1 }), maxRetries: 0 });
    const problems = gsm8kTrainProblems(26);
    for (const [i, p] of problems.slice(0, 24).entries()) {
      // Most on the primary, some on the secondary: the replay runs the other way for those.
      await both.completions.create({ model: i % 4 === 3 ? B : A, prompt: `${p.question}\n${p.answer}`, max_tokens: 4, temperature: 0 });
    }
    for (const p of problems.slice(24)) await onlyA.completions.create({ model: A, prompt: p.question, max_tokens: 4, temperature: 0 });
    await expect.poll(async () => (await harvestStats(gw)).replay?.replayed, { timeout: 60_000 }).toBe(24);
    await expect.poll(async () => (await harvestStats(gw)).writer.accepted, { timeout: 10_000 }).toBe(24 * 2 + 2);
    await gw.harvest.flush();

    const keyFile = path.join(work, 'admin-key');
    fs.writeFileSync(keyFile, ADMIN_KEY, { mode: 0o600 });
    const out = path.join(work, 'run');
    const r = await runChild(path.join(TRAINER, 'carryon-train'), [
      'train', '--base', pkgDir(A), '--secondary-base', pkgDir(B), '--out', out, '--id', ID,
      '--pull-from', gw.url, '--push-to', gw.url, '--tenant', 't1', '--key-file', keyFile,
      '--steps', '40', '--batch-size', '8', '--lr', '3e-3', '--warmup', '5', '--width', '32', '--seq-len', '256',
      '--loss-rows', 'all', '--no-progress',
    ], { CARRYON_PYTHON: python! });
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    // The two sequences harvested on A alone have no counterpart on B: left out, and said so.
    expect(r.stderr).toMatch(/2 of 26 primary sequences have no counterpart/);
    const report = readTrainerReport(path.join(out, 'report.json'));
    expect(report?.export?.verify.ok).toBe(true);
    expect(report?.eval?.carry_on?.loss).toBeLessThan(report!.eval!.base!.loss);
    const uploaded = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { manifest: { secondary_bases: Array<{ fingerprint: string }> } };
    expect(uploaded).toMatchObject({ object: 'carry_on.version', tenant: 't1', carry_on: ID, version: 1 });
    expect(uploaded.manifest.secondary_bases.map((s) => s.fingerprint)).toEqual([readManifest(pkgDir(B)).fingerprint]);

    const prompt = problems[0].question;
    const complete = async (model: string, extra: object = {}) =>
      (await both.completions.create({ model, prompt, max_tokens: 24, temperature: 0, ...extra })).choices[0].text;
    const base = await complete(A);
    expect(await complete(ID)).not.toBe(base);
    expect(await complete(ID, { carry_on_alpha: 0 })).toBe(base);
  });
});
