import { Worker } from 'node:worker_threads';
import type { GraphCheckInput, GraphCheckResult } from './graph-check-messages.js';

export type { GraphCheckInput, GraphCheckResult } from './graph-check-messages.js';

/**
 * Checks an uploaded carry-on graph in a short-lived worker thread (parse, contract, ONNX Runtime
 * load and one test run), so the event loop keeps serving meanwhile. A check that does not finish
 * within `timeoutMs` fails and its worker is terminated. Rejects only for failures of the check
 * itself, never because of the graph.
 */
export function checkCarryOnGraph(input: GraphCheckInput, timeoutMs: number): Promise<GraphCheckResult> {
  // One check at a time: each holds a whole graph in memory twice (bytes and session) on top of the engine.
  const run = queue.then(() => runCheck(input, timeoutMs));
  queue = run.then(
    () => undefined,
    () => undefined,
  );
  return run;
}

let queue: Promise<void> = Promise.resolve();

function runCheck(input: GraphCheckInput, timeoutMs: number): Promise<GraphCheckResult> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./graph-check-entry.mjs', import.meta.url), { workerData: input });
    let settled = false;
    const finish = (result: GraphCheckResult | Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // Not awaited: a worker stuck inside a native call exits only once that call returns.
      void worker.terminate();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const timer = setTimeout(
      () => finish({ ok: false, problem: `loading and test-running the graph took longer than ${timeoutMs} ms` }),
      timeoutMs,
    );
    worker.once('message', (result: GraphCheckResult) => finish(result));
    // The worker catches every failure the graph can cause, so these are the server's own (a 500).
    worker.once('error', (err) => finish(new Error(`carry-on graph check worker failed: ${err.message}`)));
    worker.once('exit', (code) => finish(new Error(`carry-on graph check worker exited early (code ${code})`)));
  });
}
