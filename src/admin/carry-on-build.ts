import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { BuildJob, BuildResult } from './carry-on-build-messages.js';

export type { BuildJob, BuildResult } from './carry-on-build-messages.js';

export interface CarryOnBuilderOptions {
  /** CARRYON_CARRYON_CHECK_TIMEOUT_MS: past it, the child is killed and the upload refused. */
  timeoutMs: number;
  /** V8 heap of the child, in MiB; the weights themselves are bounded by CARRYON_MAX_CARRYON_BYTES. */
  maxHeapMb?: number;
}

const CHILD = fileURLToPath(new URL('./carry-on-build-child.ts', import.meta.url));
/** The TypeScript loader, resolved from here so the child finds it whatever the working directory. */
const TSX = import.meta.resolve('tsx');

/**
 * Checks uploaded weights and builds their ONNX graph in a separate process, one at a time. The
 * process has a heap limit, is killed (SIGKILL) at the timeout, dies with the gateway (its IPC
 * channel closes), and is killed at once by `close()`: nothing an upload does can stall, exhaust
 * or outlive itself in the gateway, and shutdown never waits for it.
 */
export class CarryOnBuilder {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly children = new Set<ChildProcess>();
  private closed = false;

  constructor(private readonly opts: CarryOnBuilderOptions) {}

  /** Rejects only for failures of the builder itself; a bad upload resolves with `ok: false`. */
  build(job: BuildJob): Promise<BuildResult> {
    const run = this.queue.then(() => this.runChild(job));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Kills any running build (shutdown). */
  close(): void {
    this.closed = true;
    for (const child of this.children) child.kill('SIGKILL');
  }

  private runChild(job: BuildJob): Promise<BuildResult> {
    if (this.closed) return Promise.reject(new Error('the gateway is shutting down'));
    return new Promise((resolve, reject) => {
      const child = fork(CHILD, [], {
        execArgv: [`--max-old-space-size=${this.opts.maxHeapMb ?? 512}`, '--import', TSX],
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        // The child needs no secrets: only what locates its modules.
        env: { PATH: process.env.PATH ?? '', NODE_ENV: process.env.NODE_ENV ?? '' },
        serialization: 'json',
      });
      this.children.add(child);
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => {
        if (stderr.length < 4096) stderr += d.toString();
      });
      let settled = false;
      const finish = (result: BuildResult | Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.children.delete(child);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        if (result instanceof Error) reject(result);
        else resolve(result);
      };
      const timer = setTimeout(
        () => finish({ ok: false, problem: `building the carry-on took longer than ${this.opts.timeoutMs} ms`, param: 'weights' }),
        this.opts.timeoutMs,
      );
      child.once('message', (result: BuildResult) => finish(result));
      child.once('error', (err) => finish(new Error(`the carry-on build process failed: ${err.message}`)));
      child.once('exit', (code, signal) => {
        // Out of heap or killed: the upload asked for more than a carry-on may use.
        if (signal === 'SIGKILL' || code === 134) finish({ ok: false, problem: 'building the carry-on used more memory than allowed', param: 'weights' });
        else finish(new Error(`the carry-on build process exited early (code ${code}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`));
      });
      child.send(job);
    });
  }
}
