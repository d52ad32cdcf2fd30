import type { CarryOnConfig } from '../carryon/graph.js';

/** What the build child is asked: build `graphPath` from the weights at `weightsPath`. */
export interface BuildJob {
  weightsPath: string;
  graphPath: string;
  config: CarryOnConfig;
}

/** Its answer. A refusal names the field (`weights.<tensor>` or `weights`) and the rule, never data. */
export type BuildResult =
  | { ok: true; sha256: string; bytes: number; parameterCount: number }
  | { ok: false; problem: string; param: string };
