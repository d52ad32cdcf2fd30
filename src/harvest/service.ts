/**
 * Harvesting in the running gateway: owns the Harvester (writer worker), keeps the SQLite shard
 * index in step with the files, enforces retention, forgets deleted tenants and pushes finished
 * shards. The engine hands sampled sequences to `offer` (this service is the inference service's
 * `harvestSink`); everything else is for the admin API and shutdown.
 *
 * Index ⇄ files: a row is inserted when the writer reports a shard (after its atomic rename), and
 * files are always deleted before their rows, so the index never lists a missing or torn file except
 * for the instant between the two, and a crash leaves at worst a file the next start's `rescan`
 * indexes again (or a row whose file is gone, which downloads answer 404 and retention cleans up).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Gauge } from 'prom-client';
import { fsyncDir } from '../core/fs-atomic.js';
import type { HarvestShardRecord, HarvestShardRepository } from '../store/harvest-shards.js';
import type { HarvestConfig } from './config.js';
import { Harvester } from './harvester.js';
import { JOURNAL_SUFFIX } from './journal.js';
import type { ObjectStore } from '../objects/object-store.js';
import { httpPut, ShardPusher, type PushStats } from './pusher.js';
import { HarvestReplay, type ReplayStats, type SpareCapacity } from './replay.js';
import { forgetTenant, planRetention, type RetentionPolicy } from './retention.js';
import type { ShardInfo } from './shard-format.js';
import { tenantDirName } from './shard-writer.js';
import { ShardUploads } from './shard-uploads.js';
import { COUNTERS, type HarvestStats } from './stats.js';
import type { HarvestedSequence, HarvestSink } from './types.js';

export interface HarvestLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface HarvestServiceOptions {
  config: HarvestConfig;
  /** DATA_DIR: shards live in DATA_DIR/harvest. */
  dataDir: string;
  shards: HarvestShardRepository;
  /** Whether a tenant is live; its sequences still in flight when it is deleted are dropped. */
  tenantExists(tenantId: string): boolean | Promise<boolean>;
  log: HarvestLog;
  /** The clock shard ages are measured on for retention; default Date.now. */
  now?: () => number;
  /** CARRYON_OBJECT_STORE_URL: closed shards are uploaded there and served from there; null: DATA_DIR only. */
  objects?: ObjectStore | null;
  /** Where replays on other bases get their slots (the gateway's scheduler); absent: no replays. */
  capacity?: SpareCapacity;
}

export interface HarvestServiceStats {
  enabled: boolean;
  /** The writer's counters (all zero while harvesting is off or not started). */
  writer: HarvestStats;
  index: { shards: number; bytes: number; rows: number; sequences: number };
  /** Sequences dropped because their tenant was deleted while the request ran. */
  droppedDeletedTenant: number;
  /** Shards deleted by retention since start. */
  retentionDeleted: number;
  /** The retention settings (CARRYON_HARVEST_MAX_BYTES, CARRYON_HARVEST_MAX_AGE_MS); null when neither is set. */
  retention: RetentionPolicy | null;
  /** null when no push URL is configured. */
  push: PushStats | null;
  /** Sequences replayed on the other bases policies name; null when replays are not set up. */
  replay: ReplayStats | null;
}

export interface ForgetSummary {
  shards: number;
  discardedSequences: number;
}

const ZERO_STATS = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as HarvestStats;

export class HarvestService implements HarvestSink {
  readonly dir: string;
  private harvester: Harvester | null = null;
  private readonly pusher: ShardPusher | null;
  /** Uploads to the object store, when there is one. */
  readonly uploads: ShardUploads | null;
  /** Replays on other bases (a policy's `bases`), when the service was given capacity for them. */
  readonly replay: HarvestReplay | null;
  private starting: Promise<HarvestSink | null> | null = null;
  private retentionTimer: NodeJS.Timeout | null = null;
  /** One retention pass at a time; a request during one runs once more after it. */
  private retention: Promise<void> | null = null;
  private retentionAgain = false;
  private retentionDeleted = 0;
  private droppedDeletedTenant = 0;
  private closed = false;
  private closing: Promise<void> | null = null;
  private indexTotals = { shards: 0, bytes: 0, rows: 0, sequences: 0 };
  /** Offers waiting for their tenant check (a database query) before they reach the writer. */
  private readonly checking = new Set<Promise<void>>();
  /** The latest offer still in its tenant check: the next one reaches the writer after it. */
  private lastOffer: Promise<void> = Promise.resolve();

  constructor(private readonly opts: HarvestServiceOptions) {
    this.dir = path.join(opts.dataDir, 'harvest');
    const url = opts.config.CARRYON_HARVEST_PUSH_URL;
    this.pusher = url
      ? new ShardPusher({
          deliver: httpPut(url),
          lookup: (id) => opts.shards.get(id),
          markPushed: async (id) => {
            await opts.shards.markPushed(id);
            // Uploaded already: the push was all its local file was still kept for.
            const shard = await opts.shards.get(id);
            if (shard?.objectKey) await this.uploads?.releaseLocal(shard);
          },
          log: opts.log,
        })
      : null;
    this.uploads = opts.objects
      ? new ShardUploads(opts.objects, opts.shards, opts.log, {
          // A push to CARRYON_HARVEST_PUSH_URL reads the local file.
          keep: async (id) => this.pusher !== null && (await opts.shards.get(id))?.pushedAt === null,
          remove: (shard) => removeFiles([shard]),
          released: (shard) => !fs.existsSync(journalOf(shard)),
        })
      : null;
    this.replay = opts.capacity ? new HarvestReplay({ sink: this, capacity: opts.capacity }) : null;
  }

  get enabled(): boolean {
    return this.opts.config.CARRYON_HARVEST;
  }

  /**
   * Forgets tenants deleted while the gateway was down, then starts the writer, rebuilds shards
   * from a crash's journals and indexes shards written but never indexed. Returns the sink for the
   * inference service (null: harvesting is off). Retention and pushing run either way, for shards
   * written before.
   */
  start(): Promise<HarvestSink | null> {
    this.starting ??= this.startOnce();
    return this.starting;
  }

  /**
   * The serving path: never blocks, never throws; false when the sequence was dropped at once. A
   * tenant's sequence is checked against the store first (a query), so it reaches the writer, or is
   * dropped and counted, a little later; `journaled`, `flush` and `forgetTenant` wait for those checks.
   */
  offer(seq: HarvestedSequence): boolean {
    if (!this.harvester) return false;
    if (seq.tenantId === null) return this.harvester.offer(seq);
    const tenantId = seq.tenantId;
    // Deleting a tenant revokes its keys, but requests already running still finish and offer.
    const exists = Promise.resolve().then(() => this.opts.tenantExists(tenantId));
    // Checks run at once, side by side; sequences still reach the writer in the order offered.
    const before = this.lastOffer;
    const check = (async () => {
      let ok = false;
      try {
        ok = await exists;
        if (!ok) this.droppedDeletedTenant++;
      } catch (err) {
        this.opts.log.error({ err: (err as Error).message, tenant: tenantId }, 'harvested sequence dropped: the tenant check failed');
      }
      await before;
      if (ok) this.harvester?.offer(seq);
    })();
    this.lastOffer = check;
    this.checking.add(check);
    void check.finally(() => this.checking.delete(check));
    return true;
  }

  /** Resolves once every sequence offered so far is in its shard's journal (tests); at once while harvesting is off. */
  async journaled(): Promise<void> {
    await this.starting?.catch(() => null);
    await this.offersChecked();
    await this.harvester?.journaled();
  }

  /** Until the offers made so far have passed (or failed) their tenant check. */
  private async offersChecked(): Promise<void> {
    while (this.checking.size > 0) await Promise.all(this.checking);
  }

  /** Writes every open shard and waits until each is indexed (SIGTERM, tests). Once closing, waits for `close`, which flushes. */
  async flush(): Promise<void> {
    if (this.closing) return this.closing;
    await this.starting?.catch(() => null);
    await this.offersChecked();
    await this.harvester?.flush();
    await this.enforceRetention();
    this.indexTotals = await this.opts.shards.totals();
  }

  /** Flushes and stops the writer, the retention timer and pushes in flight (unpushed shards are retried next start). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      if (this.retentionTimer) clearInterval(this.retentionTimer);
      await this.starting?.catch(() => null);
      await this.offersChecked();
      try {
        await this.harvester?.close();
      } finally {
        this.pusher?.close();
        this.uploads?.close();
        await this.retention;
      }
    })();
    return this.closing;
  }

  /** The statistics, the index's totals read from the store now. */
  async freshStats(): Promise<HarvestServiceStats> {
    this.indexTotals = await this.opts.shards.totals();
    return this.stats();
  }

  /** The statistics without a query: the index's totals as of the last `flush` or `freshStats`. */
  stats(): HarvestServiceStats {
    return {
      enabled: this.enabled,
      writer: this.harvester?.stats() ?? { ...ZERO_STATS },
      index: { ...this.indexTotals },
      droppedDeletedTenant: this.droppedDeletedTenant,
      retentionDeleted: this.retentionDeleted,
      retention: this.policy(),
      push: this.pusher?.stats() ?? null,
      replay: this.replay?.stats() ?? null,
    };
  }

  /** Copies the writer's counters into the Prometheus gauges at scrape time (the counters live in the worker's shared memory). */
  exportMetrics(m: { harvestBytesWritten: Gauge; harvestSequencesAccepted: Gauge; harvestSequencesDropped: Gauge; harvestReplays: Gauge<'outcome'> }): void {
    const w = this.harvester?.stats() ?? ZERO_STATS;
    m.harvestBytesWritten.set(w.bytesWritten);
    m.harvestSequencesAccepted.set(w.accepted);
    m.harvestSequencesDropped.set(w.dropped + this.droppedDeletedTenant);
    const replay = this.replay?.stats();
    if (replay) for (const outcome of ['replayed', 'dropped', 'skipped', 'failed'] as const) m.harvestReplays.set({ outcome }, replay[outcome]);
  }

  /** Resolves when every queued push has succeeded (tests). */
  pushesSettled(): Promise<void> {
    return this.pusher?.settled() ?? Promise.resolve();
  }

  list(tenantId?: string | null): Promise<HarvestShardRecord[]> {
    return this.opts.shards.list(tenantId === undefined ? {} : { tenantId });
  }

  get(id: string): Promise<HarvestShardRecord | null> {
    return this.opts.shards.get(id);
  }

  /** Deletes one shard: its file (and journal, if the writer has not removed it yet), then its row. */
  async deleteShard(id: string): Promise<boolean> {
    const shard = await this.opts.shards.get(id);
    if (!shard) return false;
    removeFiles([shard]);
    await this.uploads?.remove([shard]);
    return this.opts.shards.delete(id);
  }

  /**
   * Deletes everything harvested for a tenant: the writer discards its open shard and finishes its
   * in-flight index callbacks, its folder goes (shards indexed or not, journals, temp files), then
   * its index rows.
   */
  async forgetTenant(tenantId: string | null): Promise<ForgetSummary> {
    await this.starting?.catch(() => null);
    // Sequences offered before the delete finish their tenant check first, so none reaches the writer after it forgot.
    await this.offersChecked();
    const result = await forgetTenant({
      dir: this.dir,
      tenantId,
      shards: () => this.opts.shards.entries({ tenantId }),
      deleteIndexed: async (s) => {
        await this.uploads?.remove([s]);
        await this.opts.shards.delete(s.id);
      },
      writer: this.harvester ?? undefined,
    });
    return { shards: result.shardIds.length, discardedSequences: result.discardedSequences };
  }

  /**
   * Applies CARRYON_HARVEST_MAX_BYTES / _MAX_AGE_MS to the indexed shards, oldest first. Runs after
   * each finished shard and on a timer; calls while one runs coalesce into one more pass.
   */
  enforceRetention(): Promise<void> {
    if (!this.policy() || this.closed) return Promise.resolve();
    if (this.retention) {
      this.retentionAgain = true;
      return this.retention;
    }
    this.retention = (async () => {
      try {
        do {
          this.retentionAgain = false;
          try {
            await this.retentionPass();
          } catch (err) {
            // A disk or database error: the next pass (timer, next shard) tries again.
            this.opts.log.error({ err: (err as Error).message }, 'harvest retention failed');
          }
          // Let a burst of finished shards coalesce before the next pass.
          await new Promise((r) => setImmediate(r));
        } while (this.retentionAgain);
      } finally {
        this.retention = null;
      }
    })();
    return this.retention;
  }

  private async startOnce(): Promise<HarvestSink | null> {
    await this.forgetDeletedTenants();
    await this.dropDanglingRows();
    this.startRetentionTimer();
    for (const s of this.pusher ? await this.opts.shards.unpushed() : []) this.pusher?.enqueue(s.id);
    await this.uploads?.enqueueLocal();
    if (!this.enabled) return null;
    const c = this.opts.config;
    const harvester = new Harvester({
      dir: this.dir,
      sigma: c.CARRYON_HARVEST_SIGMA,
      projectionPath: c.CARRYON_HARVEST_PROJECTION || undefined,
      maxQueueBytes: c.CARRYON_HARVEST_QUEUE_BYTES,
      maxShardBytes: c.CARRYON_HARVEST_SHARD_BYTES,
      maxShardAgeMs: c.CARRYON_HARVEST_SHARD_AGE_MS,
      onShardFinished: (info) => this.indexShard(info),
      onError: (err) => this.opts.log.error({ err: err.message }, 'harvest writer error'),
    });
    try {
      await harvester.ready();
      const recovery = await harvester.recover();
      const rescan = await harvester.rescan(await this.opts.shards.ids());
      const { recovered, ...counts } = recovery;
      if (recovered.length + rescan.reported.length + rescan.invalid.length + counts.lostSequences + counts.tempFilesDeleted > 0) {
        this.opts.log.warn(
          { ...counts, recoveredShards: recovered.length, indexedOnRescan: rescan.reported.length, invalid: rescan.invalid },
          'harvest recovered data left by an unclean stop',
        );
      }
    } catch (err) {
      await harvester.close().catch(() => {});
      throw err;
    }
    this.harvester = harvester;
    void this.enforceRetention();
    return this;
  }

  /** The writer's onShardFinished: index it (the writer deletes its journal after this returns). */
  private async indexShard(info: ShardInfo): Promise<void> {
    await this.opts.shards.insert(info);
    this.pusher?.enqueue(info.id);
    this.uploads?.enqueue(info);
    // After the writer has had the chance to delete the journal; retention skips shards that still have one.
    setImmediate(() => void this.enforceRetention());
  }

  /** Resolves when the retention pass running now (a timer's, say) has finished; at once when none runs (tests). */
  async retentionSettled(): Promise<void> {
    await this.retention;
  }

  private policy(): RetentionPolicy | null {
    const c = this.opts.config;
    if (c.CARRYON_HARVEST_MAX_BYTES === 0 && c.CARRYON_HARVEST_MAX_AGE_MS === 0) return null;
    return {
      maxTotalBytes: c.CARRYON_HARVEST_MAX_BYTES || undefined,
      maxAgeMs: c.CARRYON_HARVEST_MAX_AGE_MS || undefined,
    };
  }

  private async retentionPass(): Promise<void> {
    const policy = this.policy();
    if (!policy) return;
    // A shard whose journal is still there is not yet released by the writer (it deletes the journal
    // right after indexing): deleting its file now would let a crash rebuild it from the journal.
    // The next pass takes it.
    const now = this.opts.now?.() ?? Date.now();
    const doomed = planRetention(await this.opts.shards.entries(), policy, now).filter((s) => !fs.existsSync(journalOf(s)));
    if (doomed.length === 0) return;
    removeFiles(doomed);
    await this.uploads?.remove(doomed);
    for (const s of doomed) await this.opts.shards.delete(s.id);
    this.retentionDeleted += doomed.length;
    this.opts.log.info(
      { shards: doomed.length, bytes: doomed.reduce((a, s) => a + s.bytes, 0) },
      'harvest retention deleted shards',
    );
  }

  private startRetentionTimer(): void {
    const policy = this.policy();
    if (!policy || this.closed) return;
    // Age limits are honoured to within a quarter of the limit (at most a minute late).
    const every = policy.maxAgeMs ? Math.min(60_000, Math.max(250, policy.maxAgeMs / 4)) : 60_000;
    this.retentionTimer = setInterval(() => void this.enforceRetention(), every);
    this.retentionTimer.unref();
  }

  /**
   * Rows whose file is gone: a crash between deleting a file and its row (files always go first).
   * Not with an object store: a row without a file here may be another replica's shard (in the
   * bucket, or still on that replica's disk waiting for the bucket); retention removes rows there.
   */
  private async dropDanglingRows(): Promise<void> {
    if (this.uploads) return;
    const dangling = (await this.opts.shards.entries()).filter((s) => !fs.existsSync(s.path));
    for (const s of dangling) await this.opts.shards.delete(s.id);
    if (dangling.length > 0) this.opts.log.warn({ shards: dangling.map((s) => s.id) }, 'harvest index rows without a file removed at start');
  }

  /**
   * Tenants deleted while their harvest data could not be removed (a crash mid-delete, a failure):
   * their index rows and folders go at start, before the writer could recover their journals.
   */
  private async forgetDeletedTenants(): Promise<void> {
    const gone = new Set<string>();
    for (const s of await this.opts.shards.entries()) if (s.tenantId !== null && !(await this.opts.tenantExists(s.tenantId))) gone.add(s.tenantId);
    if (fs.existsSync(this.dir)) {
      for (const name of fs.readdirSync(this.dir)) {
        const tenantId = tenantOfDirName(name);
        if (tenantId !== null && !(await this.opts.tenantExists(tenantId))) gone.add(tenantId);
      }
    }
    for (const tenantId of gone) {
      fs.rmSync(path.join(this.dir, tenantDirName(tenantId)), { recursive: true, force: true });
      await this.opts.shards.deleteForTenant(tenantId);
      this.opts.log.warn({ tenant: tenantId }, 'harvest data of a deleted tenant removed at start');
    }
    if (gone.size > 0) fsyncDir(this.dir);
  }
}

function journalOf(s: { id: string; path: string }): string {
  return path.join(path.dirname(s.path), `${s.id}${JOURNAL_SUFFIX}`);
}

/** Deletes shard files and any journal left beside them, then makes the deletions durable. */
function removeFiles(shards: Array<{ id: string; path: string }>): void {
  const dirs = new Set<string>();
  for (const s of shards) {
    fs.rmSync(s.path, { force: true });
    fs.rmSync(journalOf(s), { force: true });
    dirs.add(path.dirname(s.path));
  }
  for (const d of dirs) {
    try {
      fsyncDir(d);
    } catch {
      // The folder itself is gone: nothing left there to make durable.
    }
  }
}

/**
 * The tenant a folder under the harvest root belongs to (the inverse of `tenantDirName`), or null
 * for the folder of no tenant, hashed names and anything else that is not a tenant folder.
 */
export function tenantOfDirName(name: string): string | null {
  // `_anonymous`, `_empty`, `_h<sha256>` and dot files never match: escapes are `_` + two hex digits.
  if (!/^(?:[A-Za-z0-9-]|_[0-9a-f]{2})+$/.test(name)) return null;
  const bytes: number[] = [];
  for (let i = 0; i < name.length; ) {
    if (name[i] === '_') {
      bytes.push(parseInt(name.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      bytes.push(name.charCodeAt(i));
      i++;
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/**
 * The gateway's service from its configuration (`harvestNow`: retention's clock, for tests). `log` is
 * read lazily: the server builds its logger after the admin services that need this service, and
 * nothing is logged before `start`.
 */
export function createHarvestService(
  config: HarvestConfig & { dataDir: string; harvestNow?: () => number },
  store: { harvestShards: HarvestShardRepository; tenants: { get(id: string): Promise<object | null> } },
  log: () => HarvestLog,
  objects: ObjectStore | null = null,
  capacity?: SpareCapacity,
): HarvestService {
  return new HarvestService({
    capacity,
    config,
    dataDir: config.dataDir,
    shards: store.harvestShards,
    tenantExists: async (id) => (await store.tenants.get(id)) !== null,
    now: config.harvestNow,
    objects,
    log: {
      info: (obj, msg) => log().info(obj, msg),
      warn: (obj, msg) => log().warn(obj, msg),
      error: (obj, msg) => log().error(obj, msg),
    },
  });
}
