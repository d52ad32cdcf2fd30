/**
 * The harvest writer thread: σ encoding, journaling and shard writing, off the serving event loop.
 * Everything except index acknowledgements runs through one serial chain, so a flush or forget
 * requested after some sequences sees those sequences, in the order the producer posted them.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type { CallResults, FromHarvestWorker, HarvestWorkerInit, ToHarvestWorker, WorkerCall } from './worker-messages.js';
import type { ShardInfo } from './shard-format.js';
import { ShardWriter } from './shard-writer.js';
import { Sigma } from './sigma.js';
import { HarvestCounters } from './stats.js';

if (!parentPort) throw new Error('harvest-worker must run in a worker thread');
const port = parentPort;
const init = workerData as HarvestWorkerInit;
const counters = new HarvestCounters(init.counters);
const post = (msg: FromHarvestWorker): void => port.postMessage(msg);

/** Index callbacks the main thread has not acknowledged yet, by shard id. */
const acks = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();

function indexOnMainThread(info: ShardInfo): Promise<void> {
  return new Promise((resolve, reject) => {
    acks.set(info.id, { resolve, reject });
    post({ type: 'shard', info });
  });
}

let writer: ShardWriter;
try {
  writer = new ShardWriter({
    dir: init.dir,
    sigma: Sigma.load(init.sigma),
    maxShardBytes: init.maxShardBytes,
    maxShardAgeMs: init.maxShardAgeMs,
    journalSyncMs: init.journalSyncMs,
    counters,
    onShardFinished: indexOnMainThread,
    onError: (err, context) => post({ type: 'error', context, message: err.message }),
  });
} catch (err) {
  post({ type: 'initError', message: (err as Error).message });
  process.exit(1);
}

let chain: Promise<void> = Promise.resolve();
function serially(task: () => void | Promise<void>): void {
  chain = chain.then(task).catch((err: unknown) => post({ type: 'error', context: 'worker', message: String(err) }));
}

function onMessage(msg: ToHarvestWorker): void {
  switch (msg.type) {
    case 'indexed': {
      const ack = acks.get(msg.shardId);
      acks.delete(msg.shardId);
      if (msg.error === null) ack?.resolve();
      else ack?.reject(new Error(msg.error));
      return;
    }
    case 'seq':
      serially(() => {
        try {
          writer.append(msg.seq);
        } catch (err) {
          counters.add('errors');
          post({ type: 'error', context: `append ${msg.seq.requestId}`, message: (err as Error).message });
        } finally {
          counters.release(msg.bytes);
        }
      });
      return;
    case 'port':
      addProducerPort(msg.port);
      return;
    case 'call':
      serially(async () => {
        try {
          post({ type: 'result', id: msg.id, value: await run(msg.call) });
        } catch (err) {
          post({ type: 'callError', id: msg.id, message: (err as Error).message });
        }
      });
      return;
  }
}

async function run(call: WorkerCall): Promise<CallResults[keyof CallResults]> {
  switch (call.op) {
    case 'flush':
      await writer.flush();
      return null;
    case 'recover':
      return writer.recover();
    case 'rescan':
      return writer.rescan(call.knownIds);
    case 'forget':
      return writer.forgetTenant(call.tenantId);
    case 'close':
      await writer.close();
      return null;
    case 'sync':
      return null;
  }
}

/** An engine-side producer posts sequences straight here; only `seq` messages are accepted from it. */
function addProducerPort(p: MessagePort): void {
  p.on('message', (msg: ToHarvestWorker) => {
    if (msg.type === 'seq') onMessage(msg);
  });
  // Producer ports must not keep the worker alive once the Harvester closes it.
  p.unref();
}

port.on('message', onMessage);
post({ type: 'ready' });
