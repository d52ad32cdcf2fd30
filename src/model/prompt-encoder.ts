import { Worker } from 'node:worker_threads';
import { ApiError } from '../core/errors.js';
import type { ModelTokenizer } from './tokenizer.js';

export interface EncodeJob {
  id: number;
  text: string;
  addSpecial: boolean;
}

export type EncodeResult = { id: number; ids: number[] } | { id: number; error: string };

export interface PromptEncoderOptions {
  modelDir: string;
  contextLength: number;
  /** Texts up to this many bytes are tokenized inline (cheaper than the hop); longer ones in the worker. */
  inlineBytes?: number;
  /** Long texts waiting for the worker; beyond this, new ones are refused with a 429. */
  maxQueued?: number;
}

/**
 * Text → token ids without blocking the event loop: a text that cannot fit the context (known from
 * its byte length, see ModelTokenizer.maxPieceBytes) is refused before any tokenizing; a short one
 * is tokenized inline; a long one in a worker thread with its own tokenizer.
 */
export class PromptEncoder {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (ids: number[]) => void; reject: (e: Error) => void }>();
  /** Beyond this many bytes a text is longer than the context for certain. */
  readonly maxBytes: number;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly opts: PromptEncoderOptions,
  ) {
    // Twice the strict bound: normalisation may shrink a text a little before it is split.
    this.maxBytes = 2 * opts.contextLength * tokenizer.maxPieceBytes + 1024;
  }

  /** `param` names the request field in errors ('messages', 'prompt', 'input'). */
  async encode(text: string, addSpecial: boolean, param: string): Promise<number[]> {
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > this.maxBytes) {
      throw new ApiError(
        'context_length_exceeded',
        `This model's maximum context length is ${this.opts.contextLength} tokens, which no text of more than ${this.maxBytes} bytes fits; your ${param} has ${bytes} bytes.`,
        { param },
      );
    }
    if (bytes <= (this.opts.inlineBytes ?? 8192)) return this.tokenizer.encode(text, addSpecial);
    if (this.pending.size >= (this.opts.maxQueued ?? 64)) {
      throw new ApiError('server_overloaded', 'Too many long prompts are being tokenized; retry after a short wait.', { headers: { 'retry-after': '1' } });
    }
    const worker = this.ensureWorker();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, text, addSpecial } satisfies EncodeJob);
    });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    this.failAll(new Error('the tokenizer was closed'));
    await worker?.terminate();
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL('./tokenizer-worker-entry.mjs', import.meta.url), {
      workerData: { modelDir: this.opts.modelDir, vocabSize: this.tokenizer.vocabSize },
    });
    worker.on('message', (r: EncodeResult) => {
      const p = this.pending.get(r.id);
      this.pending.delete(r.id);
      if (!p) return;
      if ('ids' in r) p.resolve(r.ids);
      else p.reject(new Error(`tokenizing failed: ${r.error}`));
    });
    // A worker that died fails what it held; the next long text starts a new one.
    const onDeath = (err: Error) => {
      if (this.worker === worker) this.worker = null;
      this.failAll(err);
    };
    worker.on('error', onDeath);
    worker.on('exit', (code) => onDeath(new Error(`the tokenizer worker exited (code ${code})`)));
    worker.unref();
    this.worker = worker;
    return worker;
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
