import { ApiError } from '../core/errors.js';

export interface SchedulerLimits {
  /** Sequences the engine may run at once. */
  maxLive: number;
  /** Requests that may wait for a slot; beyond this, new requests are refused at once. */
  maxWaiting: number;
}

interface Waiter {
  slots: number;
  /** Fairness key: the caller's tenant ('' for keys without one). */
  tenant: string;
  grant: (release: () => void) => void;
  reject: (err: Error) => void;
}

/**
 * Admission control, and the one owner of queue state: a request asks for as many sequence slots as it
 * has choices, before any expensive work; it runs when they are free, waits while the queue has
 * room, and is refused with 429 + Retry-After otherwise. Fair between tenants: a freed slot goes to
 * the waiting request whose tenant has the fewest sequences running, then whose tenant was served
 * longest ago, then the oldest; so one tenant's burst cannot hold every slot while another waits.
 */
export class Scheduler {
  private running = 0;
  private readonly runningByTenant = new Map<string, number>();
  /** When each tenant was last granted slots (a counter), to rotate between tenants that tie. */
  private readonly lastServed = new Map<string, number>();
  private grants = 0;
  private readonly waiting: Waiter[] = [];
  private draining = false;
  /** Background work (harvest replays) waiting for a slot no request wants. */
  private readonly spareListeners: Array<() => void> = [];

  constructor(private readonly limits: SchedulerLimits) {}

  /** Sequences that may run at once: the most slots one request can be granted. */
  get maxLive(): number {
    return this.limits.maxLive;
  }

  get runningSequences(): number {
    return this.running;
  }

  get waitingRequests(): number {
    return this.waiting.length;
  }

  /** Resolves with a release function once `slots` sequences may run. Aborting while queued gives up the place. */
  acquire(slots: number, signal?: AbortSignal, tenant: string | null = null): Promise<() => void> {
    const key = tenant ?? '';
    if (this.draining) return Promise.reject(new ApiError('shutting_down', 'the server is shutting down'));
    if (slots > this.limits.maxLive) {
      return Promise.reject(
        new ApiError('invalid_value', `n may be at most ${this.limits.maxLive} on this server`, { param: 'n' }),
      );
    }
    if (this.waiting.length === 0 && this.running + slots <= this.limits.maxLive) {
      return Promise.resolve(this.admit(slots, key));
    }
    if (this.waiting.length >= this.limits.maxWaiting) {
      return Promise.reject(
        new ApiError('server_overloaded', 'the server is at capacity; retry after a short wait', {
          headers: { 'retry-after': '1' },
        }),
      );
    }
    return new Promise((grant, reject) => {
      const waiter: Waiter = { slots, tenant: key, grant, reject };
      this.waiting.push(waiter);
      // Capacity may be free for this one while a bigger request waits for more.
      queueMicrotask(() => this.dispatch());
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.waiting.indexOf(waiter);
          if (i >= 0) {
            this.waiting.splice(i, 1);
            reject(new ApiError('request_timeout', 'request cancelled while waiting for capacity'));
            this.dispatch();
          }
        },
        { once: true },
      );
    });
  }

  /**
   * A slot for background work, only if one is free and no request waits for it: background work
   * never queues ahead of a request, and never fills the queue that makes requests get a 429.
   */
  tryAcquireSpare(tenant: string | null): (() => void) | null {
    if (this.draining || this.waiting.length > 0 || this.running + 1 > this.limits.maxLive) return null;
    return this.admit(1, tenant ?? '');
  }

  /** Called whenever a slot frees with no request waiting for it (see tryAcquireSpare). */
  onSpareSlot(listener: () => void): void {
    this.spareListeners.push(listener);
  }

  /** Refuses everything still waiting and every new request (shutdown). */
  drain(): void {
    this.draining = true;
    for (const w of this.waiting.splice(0)) w.reject(new ApiError('shutting_down', 'the server is shutting down'));
  }

  /** Sequences running for a tenant ('' = keys without one). */
  runningFor(tenant: string | null): number {
    return this.runningByTenant.get(tenant ?? '') ?? 0;
  }

  private admit(slots: number, tenant: string): () => void {
    this.running += slots;
    this.runningByTenant.set(tenant, this.runningFor(tenant) + slots);
    this.lastServed.set(tenant, ++this.grants);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running -= slots;
      const left = this.runningFor(tenant) - slots;
      if (left > 0) this.runningByTenant.set(tenant, left);
      else this.runningByTenant.delete(tenant);
      this.dispatch();
      if (this.waiting.length === 0 && this.running < this.limits.maxLive) for (const l of this.spareListeners) l();
    };
  }

  /** Whether tenant a's waiter goes before tenant b's (an earlier arrival wins any tie). */
  private before(a: string, b: string): boolean {
    const ra = this.runningFor(a);
    const rb = this.runningFor(b);
    if (ra !== rb) return ra < rb;
    return (this.lastServed.get(a) ?? 0) < (this.lastServed.get(b) ?? 0);
  }

  private dispatch(): void {
    for (;;) {
      let pick = -1;
      for (let i = 0; i < this.waiting.length; i++) {
        const w = this.waiting[i];
        if (this.running + w.slots > this.limits.maxLive) continue;
        if (pick < 0 || this.before(w.tenant, this.waiting[pick].tenant)) pick = i;
      }
      if (pick < 0) return;
      const [w] = this.waiting.splice(pick, 1);
      w.grant(this.admit(w.slots, w.tenant));
    }
  }
}
