/**
 * Per-key limits on requests and tokens per minute, as token buckets that refill continuously (a
 * minute's allowance, spread over the minute). A request needs one request token and a non-empty
 * token bucket to be admitted; its tokens (prompt + completion) are charged when it ends, since
 * nobody knows them before. Headers follow OpenAI's `x-ratelimit-*` names.
 */
export interface RateLimits {
  /** Requests per minute per key; 0 = unlimited. */
  requestsPerMinute: number;
  /** Prompt + completion tokens per minute per key; 0 = unlimited. */
  tokensPerMinute: number;
}

/**
 * Buckets shared with other replicas (src/store/rate-buckets.ts on PostgreSQL): a sync adds what
 * this replica spent and returns the level every replica's spending left.
 */
export interface SharedRateBuckets {
  exchange(use: { keyId: string; kind: 'requests' | 'tokens'; perMinute: number; spent: number; at: number }): Promise<number>;
}

export interface RateDecision {
  allowed: boolean;
  /** Seconds until the limiting bucket has room again (for Retry-After). */
  retryAfterSeconds: number;
  /** Which limit refused it. */
  limitedBy: 'requests' | 'tokens' | null;
  headers: Record<string, string>;
}

class Bucket {
  private level: number;
  private at: number;
  /** Taken since the last sync with the shared bucket. */
  spent = 0;

  constructor(private readonly perMinute: number, now: number) {
    this.level = perMinute;
    this.at = now;
  }

  /** Current allowance after refilling up to now. */
  available(now: number): number {
    this.level = Math.min(this.perMinute, this.level + ((now - this.at) / 60_000) * this.perMinute);
    this.at = now;
    return this.level;
  }

  take(n: number, now: number): void {
    this.available(now);
    this.level -= n; // may go negative: a long completion borrows from the next minute
    this.spent += n;
  }

  /** Adopts the shared level as of `at`, less what was taken here while the sync was out. */
  adopt(level: number, at: number): void {
    this.level = level - this.spent;
    this.at = at;
  }

  /** Seconds until `need` is available. */
  secondsUntil(need: number, now: number): number {
    const missing = need - this.available(now);
    return missing <= 0 ? 0 : Math.ceil((missing / this.perMinute) * 60);
  }

  get limit(): number {
    return this.perMinute;
  }
}

/** A key's buckets; null where that limit is off. */
interface KeyBuckets {
  requests: Bucket | null;
  tokens: Bucket | null;
}

/** The buckets of `b` that limit something, each with the kind the shared store files it under. */
function limitedBuckets(b: KeyBuckets): Array<['requests' | 'tokens', Bucket]> {
  const out: Array<['requests' | 'tokens', Bucket]> = [];
  if (b.requests) out.push(['requests', b.requests]);
  if (b.tokens) out.push(['tokens', b.tokens]);
  return out;
}

/** Keys used within this long keep syncing, so they learn what other replicas spent. */
const SYNC_RECENT_MS = 60_000;
/** A key's first request on a replica waits this long at most for the key's shared level. */
const FIRST_SYNC_WAIT_MS = 250;

export class RateLimiter {
  private readonly buckets = new Map<string, KeyBuckets & { lastUsed: number }>();
  private timer: NodeJS.Timeout | null = null;
  private syncing: Promise<void> | null = null;
  private syncFailing = false;
  /** Keys whose first shared level is being fetched: their first requests wait for it. */
  private readonly warming = new Map<string, Promise<void>>();

  constructor(
    private readonly limits: RateLimits,
    private readonly now: () => number = Date.now,
    private readonly shared: SharedRateBuckets | null = null,
    private readonly onSyncProblem: (message: string | null) => void = () => {},
  ) {}

  /**
   * Syncs with the shared buckets every `intervalMs`. Admission never waits for the store: each
   * replica decides from its own buckets, which each sync sets to the level every replica's
   * spending left. So the limit holds across replicas up to what they admit within one interval,
   * and while the store is slow or down (a sync still out is not repeated; a failed one keeps its
   * spending for the next) each replica falls back to enforcing the whole limit on its own.
   */
  startSync(intervalMs: number): void {
    if (!this.shared || !this.enabled || intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.sync(), intervalMs);
    this.timer.unref();
  }

  /**
   * Before admitting a key this replica has no bucket for (its first request here, or the first
   * after a minute idle): fetch the key's shared level, so a key spent on other replicas is not
   * admitted here in full. Waits FIRST_SYNC_WAIT_MS at most; a slow or failed store leaves the
   * full local bucket, which the next sync corrects.
   */
  async warm(keyId: string): Promise<void> {
    const shared = this.shared;
    if (!shared || !this.timer) return;
    let pending = this.warming.get(keyId);
    if (!pending) {
      if (this.buckets.has(keyId)) return;
      const now = this.now();
      const b = this.bucketsFor(keyId, now);
      const fetches: Array<Promise<void>> = [];
      for (const [kind, bucket] of limitedBuckets(b)) {
        fetches.push(shared.exchange({ keyId, kind, perMinute: bucket.limit, spent: 0, at: now }).then((level) => bucket.adopt(level, now)));
      }
      pending = Promise.all(fetches)
        .then(
          () => undefined,
          () => undefined, // the sync reports store trouble; here the full local bucket stands in
        )
        .finally(() => this.warming.delete(keyId));
      this.warming.set(keyId, pending);
    }
    let timeout: NodeJS.Timeout | undefined;
    await Promise.race([pending, new Promise<void>((r) => (timeout = setTimeout(r, FIRST_SYNC_WAIT_MS)))]);
    clearTimeout(timeout);
  }

  /** Stops syncing after a last exchange (what this replica spent still counts for the others), given at most `waitMs`. */
  async stopSync(waitMs = 2_000): Promise<void> {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = null;
    let timeout: NodeJS.Timeout | undefined;
    const last = (this.syncing ?? Promise.resolve()).then(() => this.sync());
    await Promise.race([last, new Promise<void>((r) => (timeout = setTimeout(r, waitMs)))]);
    clearTimeout(timeout);
  }

  /** One exchange with the shared store for every recently used bucket (waits for one in flight). */
  sync(): Promise<void> {
    if (!this.shared) return Promise.resolve();
    this.syncing ??= this.exchangeAll(this.shared).finally(() => (this.syncing = null));
    return this.syncing;
  }

  private async exchangeAll(shared: SharedRateBuckets): Promise<void> {
    const now = this.now();
    const jobs: Array<Promise<void>> = [];
    let failure: string | null = null;
    for (const [keyId, b] of this.buckets) {
      if (now - b.lastUsed > SYNC_RECENT_MS) continue;
      for (const [kind, bucket] of limitedBuckets(b)) {
        const spent = bucket.spent;
        bucket.spent = 0;
        jobs.push(
          shared.exchange({ keyId, kind, perMinute: bucket.limit, spent, at: now }).then(
            (level) => bucket.adopt(level, now),
            (err: Error) => {
              bucket.spent += spent; // counted at the next sync that gets through
              failure = err.message;
            },
          ),
        );
      }
    }
    await Promise.all(jobs);
    // Said once when syncing starts failing and once when it recovers, not every interval.
    if ((failure !== null) !== this.syncFailing) this.onSyncProblem(failure);
    this.syncFailing = failure !== null;
  }

  get enabled(): boolean {
    return this.limits.requestsPerMinute > 0 || this.limits.tokensPerMinute > 0;
  }

  /** Admits (and charges one request) or refuses, with the headers to send either way. */
  admit(key: string): RateDecision {
    const now = this.now();
    const b = this.bucketsFor(key, now);
    const reqOk = !b.requests || b.requests.available(now) >= 1;
    const tokOk = !b.tokens || b.tokens.available(now) > 0;
    const allowed = reqOk && tokOk;
    if (allowed) b.requests?.take(1, now);
    const limitedBy = !reqOk ? 'requests' : !tokOk ? 'tokens' : null;
    const retryAfterSeconds = !reqOk ? b.requests!.secondsUntil(1, now) : !tokOk ? Math.max(1, b.tokens!.secondsUntil(1, now)) : 0;
    return { allowed, retryAfterSeconds: Math.max(allowed ? 0 : 1, retryAfterSeconds), limitedBy, headers: this.headers(b, now) };
  }

  /** Charges tokens once a request's usage is known. */
  charge(key: string, tokens: number): void {
    const now = this.now();
    this.bucketsFor(key, now).tokens?.take(tokens, now);
  }

  private bucketsFor(key: string, now: number) {
    let b = this.buckets.get(key);
    if (!b) {
      b = {
        requests: this.limits.requestsPerMinute > 0 ? new Bucket(this.limits.requestsPerMinute, now) : null,
        tokens: this.limits.tokensPerMinute > 0 ? new Bucket(this.limits.tokensPerMinute, now) : null,
        lastUsed: now,
      };
      this.buckets.set(key, b);
      this.forgetIdle(now);
    }
    b.lastUsed = now;
    return b;
  }

  /** A full bucket carries no state: drop keys idle for over a minute so the map stays bounded by activity. */
  private forgetIdle(now: number): void {
    if (this.buckets.size < 10_000) return;
    for (const [k, b] of this.buckets) if (now - b.lastUsed > 60_000) this.buckets.delete(k);
  }

  private headers(b: KeyBuckets, now: number): Record<string, string> {
    const h: Record<string, string> = {};
    if (b.requests) {
      h['x-ratelimit-limit-requests'] = String(b.requests.limit);
      h['x-ratelimit-remaining-requests'] = String(Math.max(0, Math.floor(b.requests.available(now))));
      h['x-ratelimit-reset-requests'] = `${b.requests.secondsUntil(b.requests.limit, now)}s`;
    }
    if (b.tokens) {
      h['x-ratelimit-limit-tokens'] = String(b.tokens.limit);
      h['x-ratelimit-remaining-tokens'] = String(Math.max(0, Math.floor(b.tokens.available(now))));
      h['x-ratelimit-reset-tokens'] = `${b.tokens.secondsUntil(b.tokens.limit, now)}s`;
    }
    return h;
  }
}
