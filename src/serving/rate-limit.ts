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

export class RateLimiter {
  private readonly buckets = new Map<string, { requests: Bucket | null; tokens: Bucket | null; lastUsed: number }>();

  constructor(
    private readonly limits: RateLimits,
    private readonly now: () => number = Date.now,
  ) {}

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

  private headers(b: { requests: Bucket | null; tokens: Bucket | null }, now: number): Record<string, string> {
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
