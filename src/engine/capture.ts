import type { BodyResult } from './model-runner.js';

/** The raw capture the worker returns for one sequence; the main thread turns it into a HarvestedSequence. */
export interface CaptureResult {
  seqId: number;
  layers: Array<'final' | number>;
  /** One [rows × hidden] array per layer. */
  hidden: Float32Array[];
  tokenIds: Int32Array;
  targetIds: Int32Array;
  isCompletion: Uint8Array;
}

/**
 * Keeps the base's hidden states of one sequence as the step loop computes them: a side output of
 * the forward passes it runs anyway, never an extra pass. Rows are the positions fed to the body;
 * each row's target is the token that came next (the prompt's, then the sampled ones).
 */
export class SequenceCapture {
  private readonly chunks: Float32Array[][];
  private readonly tokens: number[] = [];
  private lastSampled = -1;

  constructor(
    readonly layers: Array<'final' | number>,
    private readonly promptLength: number,
    private readonly hiddenSize: number,
  ) {
    this.chunks = layers.map(() => []);
  }

  /** After a body pass over `fed`. Copied: in a batched pass the rows are views of the whole batch's output. */
  recordForward(fed: number[], body: BodyResult): void {
    this.tokens.push(...fed);
    this.layers.forEach((layer, i) => {
      const rows = layer === 'final' ? body.hidden : body.layers.get(layer);
      if (!rows) throw new Error(`harvest asks for base layer ${layer}, which this base package does not output`);
      this.chunks[i].push(rows.slice(0, fed.length * this.hiddenSize));
    });
  }

  recordSample(token: number): void {
    this.lastSampled = token;
  }

  /** The rows whose target is known: every fed position but a trailing one with no next token yet. */
  finish(seqId: number): CaptureResult | null {
    const rows = this.lastSampled >= 0 ? this.tokens.length : this.tokens.length - 1;
    if (rows <= 0) return null;
    const d = this.hiddenSize;
    const hidden = this.chunks.map((parts) => {
      const out = new Float32Array(rows * d);
      let at = 0;
      for (const p of parts) {
        const take = Math.min(p.length, out.length - at);
        out.set(p.subarray(0, take), at);
        at += take;
      }
      return out;
    });
    const tokenIds = Int32Array.from(this.tokens.slice(0, rows));
    const targetIds = new Int32Array(rows);
    const isCompletion = new Uint8Array(rows);
    for (let i = 0; i < rows; i++) {
      targetIds[i] = i + 1 < this.tokens.length ? this.tokens[i + 1] : this.lastSampled;
      isCompletion[i] = i + 1 >= this.promptLength ? 1 : 0;
    }
    return { seqId, layers: this.layers, hidden, tokenIds, targetIds, isCompletion };
  }
}
