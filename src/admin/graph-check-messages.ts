import type { CarryOnManifest } from '../carryon/manifest.js';

/** workerData of the graph check worker. */
export interface GraphCheckInput {
  graphPath: string;
  /** The validated manifest the graph must match. */
  manifest: CarryOnManifest;
  /** The base's vocabulary: the test run feeds the largest token id, so an undersized embedding fails here. */
  vocabSize: number;
}

/** `problem` is a sentence for the uploader, naming what is wrong with the graph. */
export type GraphCheckResult = { ok: true } | { ok: false; problem: string };
