/**
 * Messages between the serving thread (`Harvester`, or an engine-side `HarvestProducer`) and the
 * harvest writer worker. Sequences travel with their ArrayBuffers transferred, never copied; queue
 * accounting lives in the shared counters (see stats.ts), not in these messages.
 */
import type { MessagePort } from 'node:worker_threads';
import type { ShardInfo } from './shard-format.js';
import type { ForgetReport, RecoveryReport, RescanReport } from './shard-writer.js';
import type { SigmaSpec } from './sigma.js';
import type { HarvestedSequence } from './types.js';

export interface HarvestWorkerInit {
  dir: string;
  sigma: SigmaSpec;
  maxShardBytes: number;
  maxShardAgeMs: number;
  journalSyncMs?: number;
  /** The HarvestCounters buffer shared with every producer. */
  counters: SharedArrayBuffer;
}

/** A sequence posted by a producer; `bytes` is what it reserved in the queue and the worker releases. */
export interface SequenceMessage {
  type: 'seq';
  seq: HarvestedSequence;
  bytes: number;
}

export type WorkerCall =
  | { op: 'flush' }
  | { op: 'recover' }
  | { op: 'rescan'; knownIds: string[] }
  | { op: 'forget'; tenantId: string | null }
  | { op: 'close' }
  /** Nothing: answered once every message posted before it has been handled. */
  | { op: 'sync' };

/** What each call resolves to. */
export interface CallResults {
  flush: null;
  recover: RecoveryReport;
  rescan: RescanReport;
  forget: ForgetReport;
  close: null;
  sync: null;
}

export type ToHarvestWorker =
  | SequenceMessage
  | { type: 'port'; port: MessagePort }
  | { type: 'call'; id: number; call: WorkerCall }
  /** The main thread's answer to a `shard` message: the index callback resolved (error null) or threw. */
  | { type: 'indexed'; shardId: string; error: string | null };

export type FromHarvestWorker =
  | { type: 'ready' }
  | { type: 'initError'; message: string }
  | { type: 'shard'; info: ShardInfo }
  | { type: 'result'; id: number; value: CallResults[keyof CallResults] }
  | { type: 'callError'; id: number; message: string }
  | { type: 'error'; context: string; message: string };
