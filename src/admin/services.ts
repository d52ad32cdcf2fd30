import type { HarvestService } from '../harvest/service.js';
import type { CarryOnGraphBucket } from '../objects/carry-on-graph-bucket.js';
import type { Store } from '../store/store.js';
import type { BaseModelSource } from './base-model.js';
import { CarryOnAdmin } from './carry-on-admin.js';
import { CarryOnBuilder } from './carry-on-build.js';
import { CarryOnFiles } from './carry-on-files.js';
import { HarvestAdmin } from './harvest-admin.js';
import { KeyAdmin } from './key-admin.js';
import { PrefixCacheAdmin, type PrefixCacheControl } from './prefix-cache-admin.js';
import { TenantAdmin } from './tenant-admin.js';
import { trainingJobQueue } from './training-job-queue.js';
import { TrainingJobs, type TrainingJobsOptions } from './training-jobs.js';
import { importLegacyJobs } from './training-legacy-jobs.js';
import { TrainingWorker, type TrainingWorkerOptions } from './training-worker.js';

export interface AdminServices {
  tenants: TenantAdmin;
  keys: KeyAdmin;
  carryOns: CarryOnAdmin;
  harvest: HarvestAdmin;
  training: TrainingJobs;
  prefixCache: PrefixCacheAdmin;
  /** Kills running carry-on builds (shutdown never waits for one). */
  close(): Promise<void>;
}

export interface AdminOptions {
  dataDir: string;
  /** The configured bases' names: a harvest policy's `bases` must name them. */
  baseNames: string[];
  baseModel: BaseModelSource;
  /** CARRYON_MAX_CARRYON_BYTES */
  maxCarryOnBytes: number;
  /** CARRYON_CARRYON_CHECK_TIMEOUT_MS */
  checkTimeoutMs: number;
  /** Harvested shards; deleting a tenant forgets its harvest data through it. */
  harvest: HarvestService;
  training: Omit<TrainingJobsOptions, 'dataDir'> & {
    /** This gateway's own worker (CARRYON_TRAINING_WORKER=inline); null: `carryon train-worker` processes run the jobs. */
    worker: Omit<TrainingWorkerOptions, 'dataDir' | 'base'> | null;
  };
  /** The engine's prefix cache; a deleted tenant's blocks are dropped through it too. */
  prefixCache: PrefixCacheControl;
  /** Why the data disk counts as full, or null. */
  diskFull?: () => string | null;
  /** Where carry-on graphs are shared with the other replicas; null: DATA_DIR only. */
  graphBucket?: CarryOnGraphBucket | null;
}

/** The admin API's logic, wired to the store; the plugins under plugins/admin only route to it. */
export async function createAdminServices(store: Store, opts: AdminOptions): Promise<AdminServices> {
  const files = new CarryOnFiles(opts.dataDir, store.carryOns, opts.graphBucket ?? null);
  // What a crash mid-upload can leave: staging folders, and a blob whose row never committed.
  await files.sweepAtStart();
  const builder = new CarryOnBuilder({ timeoutMs: opts.checkTimeoutMs });
  const carryOns = new CarryOnAdmin(store, files, { baseModel: opts.baseModel, maxWeightsBytes: opts.maxCarryOnBytes, builder, diskFull: opts.diskFull });
  await importLegacyJobs(opts.dataDir, trainingJobQueue(store));
  const { worker: workerOpts, ...trainingOpts } = opts.training;
  const worker = workerOpts ? new TrainingWorker(trainingJobQueue(store), carryOns, { ...workerOpts, dataDir: opts.dataDir, base: trainingOpts.base }) : null;
  const training = new TrainingJobs(store, opts.harvest, { dataDir: opts.dataDir, ...trainingOpts }, worker);
  return {
    tenants: new TenantAdmin(store, files, opts.harvest, opts.prefixCache),
    keys: new KeyAdmin(store, opts.baseNames),
    carryOns,
    harvest: new HarvestAdmin(store, opts.harvest),
    training,
    prefixCache: new PrefixCacheAdmin(opts.prefixCache),
    async close() {
      builder.close();
      await training.close();
    },
  };
}
