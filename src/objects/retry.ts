import { setTimeout as sleep } from 'node:timers/promises';
import { ObjectStoreError } from './object-store.js';

export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Wait before the second try; doubled before each further one. */
  firstDelayMs: number;
}

/**
 * Runs `attempt` until it succeeds, fails with a non-retryable error, or has been tried
 * `policy.attempts` times. Bounded on purpose: a request waiting on the bucket must get its 503
 * in seconds, not hang while the bucket is down.
 */
export async function withRetries<T>(policy: RetryPolicy, attempt: () => Promise<T>, classify: (err: unknown) => ObjectStoreError): Promise<T> {
  let delay = policy.firstDelayMs;
  for (let tried = 1; ; tried++) {
    try {
      return await attempt();
    } catch (err) {
      const failure = classify(err);
      if (!failure.retryable || tried >= policy.attempts) throw failure;
      await sleep(delay);
      delay *= 2;
    }
  }
}
