import { timingSafeEqual } from 'node:crypto';
import { isDatabaseUnavailable } from '../core/errors.js';
import type { ChangeFeed } from '../store/change-feed.js';

export interface KeyCacheOptions {
  /** CARRYON_DATABASE_RECONCILE_SECONDS: how often cached keys are checked against the database (the safety net under the change feed). */
  reconcileMs: number;
  /** CARRYON_DATABASE_GRACE_SECONDS: how long after its last check a key keeps working while the database is unreachable. */
  graceMs: number;
  /** Whether changes made on other replicas reach this one at once (the LISTEN connection is up). */
  hearsChanges: () => boolean;
  changes: ChangeFeed;
}

export interface CachedKey<P> {
  storedHash: Buffer;
  principal: P;
  keyId: string;
  tenantId: string | null;
  /** When the database last said the key is valid (ms). */
  checkedAt: number;
  /** When a request last presented it (ms): keys idle long enough are dropped rather than re-checked forever. */
  usedAt: number;
}

type Validated<P> = Omit<CachedKey<P>, 'checkedAt' | 'usedAt' | 'storedHash'>;

/** After the database failed a check, requests skip it this long (a partitioned server costs a connect timeout per try). */
const DOWN_BACKOFF_MS = 1_000;
/** Keys unused this long (or the grace window, if longer) leave the cache; the next use checks them again. */
const MIN_IDLE_MS = 10 * 60_000;

/**
 * Validated keys by hash, so the request path does not read the database for every request: an
 * entry is used without the database while the change feed is live and it was checked within two
 * reconcile periods (the reconcile re-checks every entry each period, so a key in use stays fresh).
 * A change event for the key or its tenant drops it at once; a lost feed makes every entry
 * re-checked on its next use. Only valid keys are cached, so unknown keys cannot fill it.
 */
export class KeyCache<P> {
  private readonly entries = new Map<string, CachedKey<P>>();
  /** Bumped by every eviction: a validation that overlapped one must not cache what it read. */
  private generation = 0;
  /** Entries checked before this (ms) may have missed a change (the feed dropped): re-check them. */
  private trustedAfter = 0;
  private timer: NodeJS.Timeout | null = null;
  private reconciling = false;
  /** When a check last failed for want of the database (ms); 0: not since it last answered. */
  private failedAt = 0;

  constructor(private readonly opts: KeyCacheOptions) {
    opts.changes.subscribe({
      change: (c) => {
        if (c.kind === 'key') this.evict((e) => e.keyId === c.id);
        else if (c.kind === 'tenant') this.evict((e) => e.tenantId === c.tenant);
      },
      resync: () => {
        this.generation++;
        this.trustedAfter = Date.now();
      },
    });
  }

  /** The entry for `hash` (compared in constant time, as the database lookup's result is). */
  find(hash: Buffer): CachedKey<P> | null {
    const e = this.entries.get(hash.toString('hex'));
    if (!e || !timingSafeEqual(hash, e.storedHash)) return null;
    e.usedAt = Date.now();
    return e;
  }

  /** The database failed a check just now: skip it for a moment instead of waiting on it per request. */
  databaseFailed(): void {
    this.failedAt = Date.now();
  }

  /** Whether a check failed for want of the database within the last second. */
  databaseRecentlyDown(): boolean {
    return Date.now() - this.failedAt < DOWN_BACKOFF_MS;
  }

  /** Usable without asking the database. */
  fresh(e: CachedKey<P>): boolean {
    return this.opts.hearsChanges() && e.checkedAt >= this.trustedAfter && Date.now() - e.checkedAt < 2 * this.opts.reconcileMs;
  }

  /** Usable while the database is unreachable. */
  withinGrace(e: CachedKey<P>): boolean {
    return Date.now() - e.checkedAt < this.opts.graceMs;
  }

  /** Call before asking the database; pass it to `store` with the answer. */
  ticket(): number {
    return this.generation;
  }

  /** Records what the database said about `hash` (null: not a valid key), unless a change arrived meanwhile. */
  store(ticket: number, hash: Buffer, valid: Validated<P> | null): void {
    this.failedAt = 0;
    const hex = hash.toString('hex');
    if (!valid) this.entries.delete(hex);
    else if (ticket === this.generation) {
      const now = Date.now();
      this.entries.set(hex, { ...valid, storedHash: hash, checkedAt: now, usedAt: this.entries.get(hex)?.usedAt ?? now });
    }
  }

  /** Starts the periodic reconcile: `validate` re-reads one key (null: no longer valid; throws: database unreachable). */
  start(validate: (hash: Buffer) => Promise<Validated<P> | null>): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.reconcile(validate), this.opts.reconcileMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async reconcile(validate: (hash: Buffer) => Promise<Validated<P> | null>): Promise<void> {
    if (this.reconciling) return;
    this.reconciling = true;
    try {
      const idleMs = Math.max(this.opts.graceMs, MIN_IDLE_MS);
      for (const [hex, e] of [...this.entries]) {
        if (Date.now() - e.usedAt > idleMs) {
          this.entries.delete(hex);
          continue;
        }
        const ticket = this.ticket();
        // A failure (the database is down) ends this round: entries age, and the grace window applies.
        this.store(ticket, e.storedHash, await validate(e.storedHash));
      }
    } catch (err) {
      // Reported where it matters: readiness and the requests that need the database.
      if (isDatabaseUnavailable(err)) this.databaseFailed();
    } finally {
      this.reconciling = false;
    }
  }

  private evict(match: (e: CachedKey<P>) => boolean): void {
    this.generation++;
    for (const [hex, e] of this.entries) if (match(e)) this.entries.delete(hex);
  }
}
