import { parentPort } from 'node:worker_threads';
import { CarryOnSession, type CarryOnSpec } from './carry-on-session.js';
import { ModelRunner } from './model-runner.js';
import type { EngineInit, FromWorker, ToWorker } from './worker-messages.js';
import { StepLoop } from './step-loop.js';
import { StructuredOutputs, VocabTrie } from './structured/token-mask.js';

/**
 * Engine worker: owns the ONNX Runtime sessions, whose `run` would otherwise block the gateway's
 * event loop, and every sequence's KV cache.
 */
if (!parentPort) throw new Error('engine worker must run in a worker thread');
const port = parentPort;
const post = (msg: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);

let runner: ModelRunner | null = null;
let loop: StepLoop | null = null;
let engineInit: EngineInit | null = null;
/**
 * Secondary bases' bodies for mixture carry-ons, by package folder: loaded with the first carry-on
 * that reads one, shared by all, released with the last. They run in this worker's steps, beside
 * the primary's body, so a mixture costs no round trip per token.
 */
const secondaryBodies = new Map<string, { runner: Promise<ModelRunner>; users: number }>();
/** Resident carry-on sessions by key; the main thread's registry decides what is loaded and when. */
const carryOns = new Map<string, CarryOnSession>();
/** Unloads asked for while a live sequence still used the session: done when that sequence ends. */
const pendingUnloads = new Set<string>();

port.on('message', (msg: ToWorker) => {
  void handle(msg).catch((err: unknown) => post({ type: 'fatal', message: errorMessage(err) }));
});

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'init': {
      engineInit = msg.init;
      runner = await ModelRunner.create(msg.init);
      loop = new StepLoop(
        runner,
        { prefillChunk: msg.init.prefillChunk, kvBudgetBytes: msg.init.kvBudgetBytes ?? 2 * 1024 ** 3, prefixCache: msg.init.prefixCache, prefillSliceMs: msg.init.prefillSliceMs },
        (events, step) => post({ type: 'tokens', events, step }),
        (seqId, message) => post({ type: 'seqError', seqId, message }),
        () => void releaseIdleCarryOns(),
        (capture) =>
          post({ type: 'captured', capture }, [
            ...capture.hidden.map((h) => h.buffer as ArrayBuffer),
            capture.tokenIds.buffer as ArrayBuffer,
            capture.targetIds.buffer as ArrayBuffer,
            capture.isCompletion.buffer as ArrayBuffer,
          ]),
      );
      const c = runner.config;
      post({
        type: 'ready',
        info: {
          vocabSize: c.vocab_size,
          hiddenSize: c.hidden_size,
          contextLength: c.max_position_embeddings,
          numLayers: c.num_hidden_layers,
        },
      });
      return;
    }
    case 'add':
      try {
        let carryOn = null;
        if (msg.carryOn) {
          const session = carryOns.get(msg.carryOn.key);
          if (!session) throw new Error(`carry-on ${msg.carryOn.key} is not loaded`);
          carryOn = { session, alpha: msg.carryOn.alpha };
        }
        requireLoop().add(msg.seqId, msg.promptIds, msg.params, {
          carryOn, harvestLayers: msg.harvestLayers, format: msg.format, cacheNamespace: msg.cacheNamespace,
        });
      } catch (err) {
        post({ type: 'seqError', seqId: msg.seqId, message: errorMessage(err) });
      }
      return;
    case 'vocab':
      requireLoop().structured = new StructuredOutputs(new VocabTrie(msg.vocab));
      return;
    case 'loadCarryOn':
      try {
        if (!carryOns.has(msg.spec.key)) carryOns.set(msg.spec.key, await loadCarryOn(msg.spec));
        pendingUnloads.delete(msg.spec.key);
        post({ type: 'carryOnLoaded', requestId: msg.requestId });
      } catch (err) {
        post({ type: 'carryOnLoaded', requestId: msg.requestId, error: errorMessage(err) });
      }
      return;
    case 'unloadCarryOn':
      pendingUnloads.add(msg.key);
      // With no step running, nothing can be mid-run on the session; otherwise the loop's next boundary releases it.
      if (!loop?.busy) await releaseIdleCarryOns();
      return;
    case 'cancel':
      loop?.cancel(msg.seqId);
      return;
    case 'addEmbedding':
      try {
        requireLoop().addEmbedding(msg.seqId, msg.promptIds);
      } catch (err) {
        post({ type: 'seqError', seqId: msg.seqId, message: errorMessage(err) });
      }
      return;
    case 'clearPrefixCache':
      loop?.clearPrefixCache(msg.namespace);
      return;
    case 'close':
      // Let a step in flight finish first: releasing a session under a running step aborts the process.
      loop?.cancelAll();
      await loop?.idle();
      await runner?.release();
      for (const body of secondaryBodies.values()) await (await body.runner.catch(() => null))?.release();
      post({ type: 'closed' });
      return;
  }
}

async function loadCarryOn(spec: CarryOnSpec): Promise<CarryOnSession> {
  const taken: string[] = [];
  try {
    const bodies: ModelRunner[] = [];
    for (const sec of spec.secondaries) {
      taken.push(sec.modelDir);
      bodies.push(await acquireBody(sec.modelDir));
    }
    return await CarryOnSession.load(spec, bodies);
  } catch (err) {
    for (const dir of taken) await releaseBody(dir);
    throw err;
  }
}

function acquireBody(modelDir: string): Promise<ModelRunner> {
  let body = secondaryBodies.get(modelDir);
  if (!body) {
    const init = engineInit!;
    // The secondary's own context; its sessions take the primary's provider and thread count.
    body = { runner: ModelRunner.create({ modelDir, provider: init.provider, threads: init.threads }), users: 0 };
    secondaryBodies.set(modelDir, body);
    body.runner.catch(() => secondaryBodies.delete(modelDir));
  }
  body.users++;
  return body.runner;
}

async function releaseBody(modelDir: string): Promise<void> {
  const body = secondaryBodies.get(modelDir);
  if (!body || --body.users > 0) return;
  secondaryBodies.delete(modelDir);
  await (await body.runner.catch(() => null))?.release();
}

async function releaseIdleCarryOns(): Promise<void> {
  for (const key of [...pendingUnloads]) {
    if (loop?.uses(key)) continue;
    pendingUnloads.delete(key);
    const session = carryOns.get(key);
    carryOns.delete(key);
    if (session) loop?.forgetCarryOn(session);
    await session?.release();
    for (const sec of session?.spec.secondaries ?? []) await releaseBody(sec.modelDir);
  }
}

function requireLoop(): StepLoop {
  if (!loop) throw new Error('engine not initialised');
  return loop;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
