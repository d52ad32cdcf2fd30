import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSamplingDefaults } from '../../src/model/generation-defaults.js';

describe('model sampling defaults', () => {
  const dirWith = (config: object | string | null) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gen-defaults-'));
    if (config !== null) fs.writeFileSync(path.join(dir, 'generation_config.json'), typeof config === 'string' ? config : JSON.stringify(config));
    return dir;
  };

  it('are generation_config.json values only when do_sample is true, as transformers uses them', () => {
    expect(readSamplingDefaults(dirWith({ do_sample: true, temperature: 0.6, top_p: 0.9, top_k: 20 }))).toEqual({ temperature: 0.6, topP: 0.9, topK: 20 });
    expect(readSamplingDefaults(dirWith({ temperature: 0.6, top_p: 0.9 }))).toEqual({});
    expect(readSamplingDefaults(dirWith({ do_sample: false, temperature: 0.6 }))).toEqual({});
  });

  it('are none for a missing, unreadable or out-of-range file', () => {
    expect(readSamplingDefaults(dirWith(null))).toEqual({});
    expect(readSamplingDefaults(dirWith('{not json'))).toEqual({});
    expect(readSamplingDefaults(dirWith({ do_sample: true, temperature: -1 }))).toEqual({});
  });
});
