import { ApiError } from './errors.js';

export interface SchedulerLimits {
  /** Sequences the engine may run at once. */
  maxLive: number;
  /** Requests that may wait for a slot; beyond this, new requests are refused at once. */
  maxWaiting: number;
}

interface Waiter {
  slots: number;
  grant: (release: () => void) => void;
  reject: (err: Error) => void;
}

/**
 * Admission control, and the one owner of queue state: a request asks for as many sequence slots as it
 * has choices, before any expensive work; it runs when they are free, waits in FIFO order while the
 * queue has room, and is refused with 429 + Retry-After otherwise.
 */
export class Scheduler {
  private running = 0;
  private readonly waiting: Waiter[] = [];
  private draining = false;

  constructor(private readonly limits: SchedulerLimits) {}

  get runningSequences(): number {
    return this.running;
  }

  get waitingRequests(): number {
    return this.waiting.length;
  }

  /** Resolves with a release function once `slots` sequences may run. Aborting while queued gives up the place. */
  acquire(slots: number, signal?: AbortSignal): Promise<() => void> {
    if (this.draining) return Promise.reject(new ApiError('shutting_down', 'the server is shutting down'));
    if (slots > this.limits.maxLive) {
      return Promise.reject(
        new ApiError('invalid_value', `n may be at most ${this.limits.maxLive} on this server`, { param: 'n' }),
      );
    }
    if (this.waiting.length === 0 && this.running + slots <= this.limits.maxLive) {
      this.running += slots;
      return Promise.resolve(this.releaser(slots));
    }
    if (this.waiting.length >= this.limits.maxWaiting) {
      return Promise.reject(
        new ApiError('server_overloaded', 'the server is at capacity; retry after a short wait', {
          headers: { 'retry-after': '1' },
        }),
      );
    }
    return new Promise((grant, reject) => {
      const waiter: Waiter = { slots, grant, reject };
      this.waiting.push(waiter);
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

  /** Refuses everything still waiting and every new request (shutdown). */
  drain(): void {
    this.draining = true;
    for (const w of this.waiting.splice(0)) w.reject(new ApiError('shutting_down', 'the server is shutting down'));
  }

  private releaser(slots: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running -= slots;
      this.dispatch();
    };
  }

  private dispatch(): void {
    while (this.waiting.length > 0 && this.running + this.waiting[0].slots <= this.limits.maxLive) {
      const w = this.waiting.shift()!;
      this.running += w.slots;
      w.grant(this.releaser(w.slots));
    }
  }
}
