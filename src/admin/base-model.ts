import { readManifest, readModelConfig } from '../model/package-files.js';

/** What an uploaded carry-on is checked against: the one base model this gateway serves. */
export interface BaseModelInfo {
  /** The base package's `fingerprint` (carryon-package.json). */
  fingerprint: string;
  hiddenSize: number;
  vocabSize: number;
  /** Blocks whose residual stream the base body outputs, besides the final one. */
  extraLayerOutputs: number[];
}

/** The served base; throws the ApiError a client should see while it is not known yet (503). */
export type BaseModelSource = () => BaseModelInfo;

export function readBaseModelInfo(packageDir: string): BaseModelInfo {
  const manifest = readManifest(packageDir);
  const config = readModelConfig(packageDir);
  return {
    fingerprint: manifest.fingerprint,
    hiddenSize: config.hidden_size,
    vocabSize: config.vocab_size,
    extraLayerOutputs: manifest.extra_layer_outputs,
  };
}
