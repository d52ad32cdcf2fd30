import { parentPort } from 'node:worker_threads';
import { ModelRunner } from './model-runner.js';
import type { FromWorker, ToWorker } from './protocol.js';
import { StepLoop } from './step-loop.js';
import { meanPoolNormalized } from './pooling.js';

/**
 * Engine worker: owns the ONNX Runtime sessions, whose `run` would otherwise block the gateway's
 * event loop, and every sequence's KV cache.
 */
if (!parentPort) throw new Error('engine worker must run in a worker thread');
const port = parentPort;
const post = (msg: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);

let runner: ModelRunner | null = null;
let loop: StepLoop | null = null;

port.on('message', (msg: ToWorker) => {
  void handle(msg).catch((err: unknown) => post({ type: 'fatal', message: errorMessage(err) }));
});

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'init': {
      runner = await ModelRunner.create(msg.init);
      loop = new StepLoop(
        runner,
        msg.init.prefillChunk,
        (events) => post({ type: 'tokens', events }),
        (seqId, message) => post({ type: 'seqError', seqId, message }),
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
        requireLoop().add(msg.seqId, msg.promptIds, msg.params);
      } catch (err) {
        post({ type: 'seqError', seqId: msg.seqId, message: errorMessage(err) });
      }
      return;
    case 'cancel':
      loop?.cancel(msg.seqId);
      return;
    case 'embed':
      return embed(msg.jobId, msg.inputs);
    case 'close':
      await runner?.release();
      post({ type: 'closed' });
      return;
  }
}

async function embed(jobId: number, inputs: number[][]): Promise<void> {
  try {
    const r = requireRunner();
    const vectors: Float32Array[] = [];
    for (const ids of inputs) {
      const hidden = await r.forwardBody(ids, r.newCache());
      vectors.push(meanPoolNormalized(hidden, ids.length, r.config.hidden_size));
    }
    post({ type: 'embedded', jobId, vectors }, vectors.map((v) => v.buffer as ArrayBuffer));
  } catch (err) {
    post({ type: 'embedded', jobId, vectors: [], error: errorMessage(err) });
  }
}

function requireRunner(): ModelRunner {
  if (!runner) throw new Error('engine not initialised');
  return runner;
}

function requireLoop(): StepLoop {
  if (!loop) throw new Error('engine not initialised');
  return loop;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
