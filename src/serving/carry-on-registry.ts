import type { CarryOnSpec } from '../engine/carry-on-session.js';
import { ApiError } from '../core/errors.js';
import { carryOnKey, type CarryOnChange, type CarryOnVersionRecord } from '../carryon/catalog.js';
import { secondaryBasesOf } from '../carryon/manifest.js';
import type { Metrics } from '../core/metrics.js';

export interface CarryOnLoader {
  loadCarryOn(spec: CarryOnSpec): Promise<void>;
  unloadCarryOn(key: string): void;
}

export interface RegistryOptions {
  loader: CarryOnLoader;
  /** Resident carry-on bytes allowed (graph file sizes); least recently used idle ones are evicted. */
  budgetBytes: number;
  /** `tenant/id` of carry-ons never evicted for space. */
  pinned: Set<string>;
  log: (obj: object, msg: string) => void;
  metrics?: Metrics | null;
  /**
   * Makes a version's graph file present before the engine loads it: with a shared object store,
   * another replica may have stored it (CarryOnGraphBucket.fetch). Absent: graphs are local.
   */
  fetchGraph?: (record: CarryOnVersionRecord) => Promise<void>;
  /** The package folder of the served base with this fingerprint (null: not served): where a mixture's secondary bodies load from. */
  baseDir?: (fingerprint: string) => string | null;
}

interface Entry {
  key: string;
  record: CarryOnVersionRecord;
  /** Settles when the session is resident; shared by concurrent first requests. */
  ready: Promise<void>;
  loaded: boolean;
  refs: number;
  lastUsed: number;
  /** Deleted or superseded: unusable for new requests, freed as soon as idle. */
  retired: boolean;
}

/** A request's hold on a resident carry-on version; release it when the request ends. */
export interface CarryOnLease {
  key: string;
  record: CarryOnVersionRecord;
  release(): void;
}

/**
 * Which carry-on sessions are resident in the engine. Loads lazily on first use (concurrent first
 * requests share one load), keeps resident bytes under a budget by evicting the least recently used
 * idle, unpinned version, and retires versions that were deleted or superseded: requests already
 * holding one finish on it, and it is freed when the last lets go.
 */
export class CarryOnRegistry {
  private readonly entries = new Map<string, Entry>();
  private residentBytes = 0;
  private clock = 0;

  constructor(private readonly opts: RegistryOptions) {}

  async acquire(record: CarryOnVersionRecord): Promise<CarryOnLease> {
    const key = carryOnKey(record);
    let entry = this.entries.get(key);
    if (!entry || entry.retired) entry = this.startLoad(record);
    entry.refs++;
    entry.lastUsed = ++this.clock;
    try {
      await entry.ready;
    } catch (err) {
      entry.refs--;
      throw err;
    }
    let released = false;
    const e = entry;
    return {
      key,
      record,
      release: () => {
        if (released) return;
        released = true;
        e.refs--;
        e.lastUsed = ++this.clock;
        if (e.retired && e.refs === 0) this.free(e);
      },
    };
  }

  /**
   * Store events: a deleted carry-on (or version) is unusable at once; a new version supersedes the
   * older ones. Retired versions still serve the requests that hold them and are freed when idle.
   */
  onCatalogChange(change: CarryOnChange): void {
    for (const e of this.entries.values()) {
      if (e.record.tenantId !== change.tenantId || e.record.carryOnId !== change.carryOnId) continue;
      const oneVersion = change.kind === 'deleted' && change.version !== undefined;
      if (oneVersion ? e.record.version === change.version : change.kind !== 'alias-changed') this.retire(e);
    }
  }

  /**
   * After the change feed missed events: retires every resident version that `isLive` (the catalog)
   * says no longer resolves, as the missed 'deleted' events would have. A failure (the database is
   * still unreachable) leaves the rest for the next resync; requests resolve versions per request
   * anyway, so a stale entry costs memory, never a wrong answer.
   */
  async reconcile(isLive: (record: CarryOnVersionRecord) => Promise<boolean>): Promise<void> {
    for (const e of [...this.entries.values()]) {
      if (!e.retired && !(await isLive(e.record))) this.retire(e);
    }
  }

  /** Retires exactly one version (e.g. its row was deleted). */
  retireVersion(record: Pick<CarryOnVersionRecord, 'tenantId' | 'carryOnId' | 'version'>): void {
    const e = this.entries.get(carryOnKey(record));
    if (e) this.retire(e);
  }

  stats(): { resident: number; residentBytes: number; budgetBytes: number; loaded: string[] } {
    const loaded = [...this.entries.values()].filter((e) => e.loaded).map((e) => e.key);
    return { resident: loaded.length, residentBytes: this.residentBytes, budgetBytes: this.opts.budgetBytes, loaded };
  }

  private startLoad(record: CarryOnVersionRecord): Entry {
    const key = carryOnKey(record);
    this.makeRoom(record.bytes, key);
    const entry: Entry = { key, record, ready: Promise.resolve(), loaded: false, refs: 0, lastUsed: ++this.clock, retired: false };
    this.entries.set(key, entry);
    this.residentBytes += record.bytes;
    this.opts.metrics?.carryOnResidentBytes.set(this.residentBytes);
    const started = Date.now();
    const fetched = this.opts.fetchGraph?.(record) ?? Promise.resolve();
    entry.ready = fetched.then(() => this.opts.loader.loadCarryOn(specOf(record, this.opts.baseDir))).then(
      () => {
        entry.loaded = true;
        this.opts.metrics?.carryOnLoads.inc();
        this.opts.metrics?.carryOnLoadSeconds.observe((Date.now() - started) / 1000);
        this.opts.log({ carryOn: key, bytes: record.bytes, ms: Date.now() - started }, 'carry-on loaded');
        if (entry.retired && entry.refs === 0) this.free(entry);
      },
      (err: Error) => {
        this.forget(entry);
        // Fetching answers for itself (503 while the bucket is down, a clear 500 for a bad object).
        if (err instanceof ApiError) throw err;
        throw new ApiError('internal_error', `carry-on ${record.carryOnId} v${record.version} failed to load: ${err.message}`);
      },
    );
    entry.ready.catch(() => {}); // awaited by acquire; the failure is reported there
    return entry;
  }

  /** Evicts idle, unpinned versions, least recently used first, until `bytes` more fit. */
  private makeRoom(bytes: number, forKey: string): void {
    if (bytes > this.opts.budgetBytes) {
      throw new ApiError('server_overloaded', `carry-on ${forKey} (${bytes} bytes) is larger than the carry-on memory budget`);
    }
    while (this.residentBytes + bytes > this.opts.budgetBytes) {
      const victim = [...this.entries.values()]
        .filter((e) => e.refs === 0 && e.loaded && !this.opts.pinned.has(`${e.record.tenantId}/${e.record.carryOnId}`))
        .sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (!victim) {
        throw new ApiError('server_overloaded', 'every resident carry-on is in use; retry shortly', { headers: { 'retry-after': '1' } });
      }
      this.opts.log({ carryOn: victim.key, bytes: victim.record.bytes }, 'carry-on evicted');
      this.opts.metrics?.carryOnEvictions.inc();
      this.free(victim);
    }
  }

  private retire(e: Entry): void {
    e.retired = true;
    if (e.refs === 0 && e.loaded) this.free(e);
  }

  private free(e: Entry): void {
    if (this.entries.get(e.key) !== e) return;
    this.forget(e);
    this.opts.loader.unloadCarryOn(e.key);
  }

  private forget(e: Entry): void {
    if (this.entries.get(e.key) !== e) return;
    this.entries.delete(e.key);
    this.residentBytes -= e.record.bytes;
    this.opts.metrics?.carryOnResidentBytes.set(this.residentBytes);
  }
}

export function specOf(record: CarryOnVersionRecord, baseDir: (fingerprint: string) => string | null = () => null): CarryOnSpec {
  const m = record.manifest;
  const secondaries = secondaryBasesOf(m).map((b, j) => {
    const modelDir = baseDir(b.fingerprint);
    if (modelDir === null) {
      // Checked at upload; a gateway restarted without that base cannot serve the mixture.
      throw new ApiError('carry_on_base_mismatch', `Carry-on '${record.carryOnId}' v${record.version} is a mixture that reads base ${b.fingerprint.slice(0, 12)}… (secondary ${j}), which this gateway does not serve.`, {
        param: 'model',
      });
    }
    return { fingerprint: b.fingerprint, modelDir, hiddenSize: b.hidden_size, inputLayers: b.input_layers };
  });
  return {
    secondaries,
    key: carryOnKey(record),
    graphPath: record.graphPath,
    inputLayers: m.input_layers,
    readsTokenIds: m.reads_token_ids,
    blocks: m.architecture.layers,
    kvHeads: m.architecture.kv_heads,
    headDim: m.architecture.head_dim,
    hiddenSize: m.hidden_size,
  };
}
