import { describe, expect, it } from 'vitest';
import { buildBodyModel } from '../../src/model/onnx-graph.js';
import type { LlamaLayer, LlamaWeights } from '../../src/model/types.js';
import { randomFamilyWeights, type Family } from '../helpers/model-families.js';

/**
 * The graph adds whatever biases and norms a layer carries, so weights that disagree with their
 * config (a reader bug) must be refused at build time, naming the tensor, rather than served as a
 * different model.
 */
const VOCAB = 256;
function edited(family: Family, edit: (layer: LlamaLayer) => void): LlamaWeights {
  const w = randomFamilyWeights(family, 1, 4, VOCAB);
  edit(w.layers[1]);
  return w;
}

describe('family weights against their config', () => {
  it('builds each family as generated', () => {
    for (const f of ['llama3', 'qwen2', 'qwen3'] as const) expect(buildBodyModel(randomFamilyWeights(f, 1, 4, VOCAB)).length).toBeGreaterThan(0);
  });

  it('names a missing q/k/v bias when attention_bias is true', () => {
    expect(() => buildBodyModel(edited('qwen2', (l) => delete l.vBias))).toThrow(/layers\[1\]\.vBias: missing \(the config has attention_bias true\)/);
  });

  it('names a bias or norm the config does not announce', () => {
    expect(() => buildBodyModel(edited('llama3', (l) => (l.qNorm = new Float32Array(16))))).toThrow(
      /layers\[1\]\.qNorm: present, but the config has qk_norm false/,
    );
    expect(() => buildBodyModel(edited('qwen3', (l) => (l.kBias = new Float32Array(64))))).toThrow(
      /layers\[1\]\.kBias: present, but the config has attention_bias false/,
    );
  });

  it('checks q/k norm length against head_dim and Wo against heads·head_dim (Qwen3: 128, not hidden 64)', () => {
    expect(() => buildBodyModel(edited('qwen3', (l) => (l.kNorm = new Float32Array(16))))).toThrow(/layers\[1\]\.kNorm: expected 32 values, got 16/);
    const squareWo = edited('qwen3', (l) => (l.wo = { kind: 'f32', rows: 64, cols: 64, data: new Float32Array(64 * 64) }));
    expect(() => buildBodyModel(squareWo)).toThrow(/layers\[1\]\.wo: expected \[64, 128\], got \[64, 64\]/);
  });
});
