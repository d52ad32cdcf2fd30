import { timingSafeEqual } from 'node:crypto';
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
}

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
    return e && timingSafeEqual(hash, e.storedHash) ? e : null;
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
  store(ticket: number, hash: Buffer, valid: Omit<CachedKey<P>, 'checkedAt' | 'storedHash'> | null): void {
    const hex = hash.toString('hex');
    if (!valid) this.entries.delete(hex);
    else if (ticket === this.generation) this.entries.set(hex, { ...valid, storedHash: hash, checkedAt: Date.now() });
  }

  /** Starts the periodic reconcile: `validate` re-reads one key (null: no longer valid; throws: database unreachable). */
  start(validate: (hash: Buffer) => Promise<Omit<CachedKey<P>, 'checkedAt' | 'storedHash'> | null>): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.reconcile(validate), this.opts.reconcileMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async reconcile(validate: (hash: Buffer) => Promise<Omit<CachedKey<P>, 'checkedAt' | 'storedHash'> | null>): Promise<void> {
    if (this.reconciling) return;
    this.reconciling = true;
    try {
      for (const e of [...this.entries.values()]) {
        const ticket = this.ticket();
        // A failure (the database is down) ends this round: entries age, and the grace window applies.
        this.store(ticket, e.storedHash, await validate(e.storedHash));
      }
    } catch {
      // Reported where it matters: readiness and the requests that need the database.
    } finally {
      this.reconciling = false;
    }
  }

  private evict(match: (e: CachedKey<P>) => boolean): void {
    this.generation++;
    for (const [hex, e] of this.entries) if (match(e)) this.entries.delete(hex);
  }
}
