/**
 * Full garbage collection in a process's worker threads, for memory benchmarks: the engine worker
 * runs ONNX Runtime, whose outputs (copied into new ArrayBuffers each run) are garbage once a step is
 * done, and V8 collects them when it decides, not when the benchmark reads RSS; `gc()` on the main
 * thread does not reach a worker's heap. Start the process measured with `WORKER_GC_ARGS` (a
 * preload: preloads run in every worker thread too, where it listens on a BroadcastChannel);
 * `collectWorkerGarbage()` on its main thread asks each listening worker for a full GC and waits for
 * the answers. Nothing here touches the engine's own code.
 */
import { BroadcastChannel } from 'node:worker_threads';

const CHANNEL = 'carry-on-gateway:bench:worker-gc';

interface Ask {
  ask: number;
}
interface Done {
  done: number;
  thread: number;
}

/**
 * What each worker runs, as plain JavaScript: worker threads start without the parent's TypeScript
 * loader (see src/engine/worker-entry.mjs), so the preload is a `data:` module.
 */
const LISTENER = `
import v8 from 'node:v8';
import vm from 'node:vm';
import { BroadcastChannel, isMainThread, threadId } from 'node:worker_threads';
if (!isMainThread) {
  const channel = new BroadcastChannel(${JSON.stringify(CHANNEL)});
  channel.unref();
  let gc = null;
  channel.onmessage = (ev) => {
    if (!ev.data || typeof ev.data.ask !== 'number') return;
    if (!gc) {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc');
    }
    gc();
    gc();
    channel.postMessage({ done: ev.data.ask, thread: threadId });
  };
}
`;

/** Node options that make every worker thread of a child process listen: `[...execArgv, ...WORKER_GC_ARGS, script]`. */
export const WORKER_GC_ARGS = ['--import', `data:text/javascript,${encodeURIComponent(LISTENER)}`];

let nextAsk = 1;

/**
 * Asks every worker thread that preloaded this module for a full GC; resolves with how many
 * answered within `waitMs` (0 when the process was not started with the preload).
 */
export async function collectWorkerGarbage(waitMs = 300): Promise<number> {
  const channel = new BroadcastChannel(CHANNEL);
  const ask = nextAsk++;
  const answered = new Set<number>();
  try {
    await new Promise<void>((resolve) => {
      let quiet: NodeJS.Timeout | null = null;
      const deadline = setTimeout(resolve, waitMs);
      channel.onmessage = (ev: unknown) => {
        const data = (ev as { data: Ask | Done }).data;
        if (!('done' in data) || data.done !== ask) return;
        answered.add(data.thread);
        // Another worker may still answer: settle once none has for a short while.
        if (quiet) clearTimeout(quiet);
        quiet = setTimeout(() => {
          clearTimeout(deadline);
          resolve();
        }, 30);
      };
      channel.postMessage({ ask } satisfies Ask);
    });
  } finally {
    channel.close();
  }
  return answered.size;
}
