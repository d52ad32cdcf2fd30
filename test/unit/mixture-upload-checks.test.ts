import { describe, expect, it } from 'vitest';
import { servedBaseFor, type BaseModelInfo } from '../../src/admin/base-model.js';
import { checkSecondaryBases } from '../../src/admin/manifest-checks.js';
import type { UploadManifest } from '../../src/admin/schemas.js';
import { ApiError } from '../../src/core/errors.js';

/** The mixture checks of an upload, against served bases described directly (no packages needed). */
const info = (fp: string, patch: Partial<BaseModelInfo> = {}): BaseModelInfo => ({
  fingerprint: fp.repeat(64), hiddenSize: 64, vocabSize: 512, contextLength: 512, extraLayerOutputs: [2], tokenizerDigest: () => 'tok', ...patch,
});
const primary = info('a');
const served = [primary, info('b'), info('c', { tokenizerDigest: () => 'other' }), info('d', { contextLength: 256 }), info('e', { hiddenSize: 32 })];
const source = (fp?: string) => servedBaseFor(served.map((i, n) => ({ name: `base${n}`, status: 'ready' as const, failure: null, info: i })), fp);
const manifest = (secondary: object): UploadManifest =>
  ({ base_fingerprint: primary.fingerprint, hidden_size: 64, input_layers: ['final'], secondary_bases: [{ hidden_size: 64, input_layers: ['final'], ...secondary }] }) as UploadManifest;

function refusal(secondary: object): { param: string | null; message: string } {
  try {
    checkSecondaryBases(manifest(secondary), primary, source);
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    return { param: (err as ApiError).param, message: (err as Error).message };
  }
  throw new Error('accepted');
}

function expectRefused(secondary: object, param: string, message: RegExp): void {
  const r = refusal(secondary);
  expect(r.param).toBe(param);
  expect(r.message).toMatch(message);
}

describe('mixture upload checks', () => {
  it('accept a served base with the same tokenizer, width, a long enough context and the layers it outputs', () => {
    expect(() => checkSecondaryBases(manifest({ fingerprint: 'b'.repeat(64), input_layers: ['final', 2] }), primary, source)).not.toThrow();
  });

  it('refuse, naming the field: not served, the primary, another tokenizer, a shorter context, another width, a missing layer', () => {
    expectRefused({ fingerprint: 'f'.repeat(64) }, 'manifest.secondary_bases.0.fingerprint', /not served/);
    expectRefused({ fingerprint: 'a'.repeat(64) }, 'manifest.secondary_bases.0.fingerprint', /primary base itself/);
    expectRefused({ fingerprint: 'c'.repeat(64) }, 'manifest.secondary_bases.0.fingerprint', /tokenizer/);
    expectRefused({ fingerprint: 'd'.repeat(64) }, 'manifest.secondary_bases.0.fingerprint', /context of 256 tokens, shorter than the primary's 512/);
    expect(refusal({ fingerprint: 'e'.repeat(64) })).toMatchObject({ param: 'manifest.secondary_bases.0.hidden_size' });
    expect(refusal({ fingerprint: 'b'.repeat(64), input_layers: ['final', 3] })).toMatchObject({ param: 'manifest.secondary_bases.0.input_layers' });
  });
});
