import { parentPort, workerData } from 'node:worker_threads';
import { ModelTokenizer } from './tokenizer.js';
import type { EncodeJob, EncodeResult } from './prompt-encoder.js';

/** Tokenizes long prompts off the main thread, with its own copy of the model's tokenizer. */
if (!parentPort) throw new Error('the tokenizer must run in a worker thread');
const port = parentPort;
const { modelDir, vocabSize } = workerData as { modelDir: string; vocabSize: number };
const tokenizer = ModelTokenizer.load(modelDir, vocabSize);

port.on('message', (job: EncodeJob) => {
  let result: EncodeResult;
  try {
    result = { id: job.id, ids: tokenizer.encode(job.text, job.addSpecial) };
  } catch (err) {
    result = { id: job.id, error: err instanceof Error ? err.message : String(err) };
  }
  port.postMessage(result);
});
