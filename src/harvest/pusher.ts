/**
 * Delivers finished shards somewhere, at least once: to CARRYON_HARVEST_PUSH_URL (`httpPut`: `PUT
 * <url>/<tenant folder>/<shard id>.safetensors`, the file streamed from disk), or into the object store
 * (CARRYON_OBJECT_STORE_URL, src/harvest/service.ts). At least once: a shard is marked delivered only after it arrived, every failure
 * is retried with exponential backoff (with jitter, capped), and shards still undelivered at shutdown are
 * queued again at the next start from the index. It runs on the serving thread's event loop but only
 * ever awaits I/O, so it never holds up serving; a shard deleted meanwhile (retention, tenant
 * deletion, the admin API) is simply no longer pushed.
 */
import fs from 'node:fs';
import { request } from 'undici';
import { tenantDirName } from './shard-writer.js';

/** What the pusher needs of an indexed shard. */
export interface PushableShard {
  id: string;
  tenantId: string | null;
  path: string;
  bytes: number;
  metadata: Record<string, string>;
}

export interface ShardPusherOptions {
  /** Sends one shard to its destination; throws to have it retried later (httpPut, or an object-store upload). */
  deliver(shard: PushableShard, signal: AbortSignal): Promise<void>;
  /** Names the destination in log lines ("harvest shard <what> failed; will retry"). */
  what?: string;
  /** The shard as indexed now; null when it was deleted (then it is dropped from the queue). */
  lookup(id: string): PushableShard | null | Promise<PushableShard | null>;
  /** Records the push in the index. */
  markPushed(id: string): void | Promise<void>;
  log: { warn(obj: object, msg: string): void };
  /** First retry delay; doubles per failure up to maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Shards pushed at once. */
  concurrency?: number;
}

export interface PushStats {
  pushed: number;
  /** Failed attempts (each retried later). */
  failedAttempts: number;
  /** Shards waiting for a (re)try or in flight. */
  pending: number;
}

interface Entry {
  id: string;
  attempts: number;
  /** Unix ms before which it is not tried again. */
  notBefore: number;
}

export class ShardPusher {
  private readonly queue = new Map<string, Entry>();
  private readonly inFlight = new Map<string, AbortController>();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private pumping = false;
  private repump = false;
  private pushed = 0;
  private failedAttempts = 0;
  private readonly idle = new Set<() => void>();

  constructor(private readonly opts: ShardPusherOptions) {}

  /** Queues a shard (idempotent: a shard already queued or in flight is not queued twice). */
  enqueue(id: string): void {
    if (this.closed || this.queue.has(id) || this.inFlight.has(id)) return;
    this.queue.set(id, { id, attempts: 0, notBefore: 0 });
    this.pump();
  }

  stats(): PushStats {
    return { pushed: this.pushed, failedAttempts: this.failedAttempts, pending: this.queue.size + this.inFlight.size };
  }

  /** Resolves once nothing is queued or in flight (tests; a push that keeps failing never settles). */
  settled(): Promise<void> {
    if (this.queue.size + this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.add(resolve));
  }

  /** Stops: aborts pushes in flight; the index still says they are unpushed, so the next start retries. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const c of this.inFlight.values()) c.abort();
    this.queue.clear();
  }

  /** Starts what may start and arms the timer for the next retry. Re-entrant calls (an attempt that ends at once) loop here instead. */
  private pump(): void {
    if (this.pumping) {
      this.repump = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.repump = false;
        this.pumpOnce();
      } while (this.repump);
    } finally {
      this.pumping = false;
    }
  }

  private pumpOnce(): void {
    if (this.closed) return;
    const now = Date.now();
    const limit = this.opts.concurrency ?? 2;
    let nextAt = Infinity;
    for (const entry of this.queue.values()) {
      if (this.inFlight.size >= limit) break;
      if (entry.notBefore > now) {
        nextAt = Math.min(nextAt, entry.notBefore);
        continue;
      }
      this.queue.delete(entry.id);
      void this.attempt(entry);
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (Number.isFinite(nextAt) && this.inFlight.size < limit) {
      this.timer = setTimeout(() => this.pump(), Math.max(1, nextAt - now));
      this.timer.unref(); // pushing never keeps a stopping process alive
    }
    if (this.queue.size + this.inFlight.size === 0) {
      for (const resolve of this.idle) resolve();
      this.idle.clear();
    }
  }

  private async attempt(entry: Entry): Promise<void> {
    const abort = new AbortController();
    this.inFlight.set(entry.id, abort);
    try {
      const shard = await this.opts.lookup(entry.id);
      if (!shard) return; // deleted since it was queued: nothing to push any more
      await this.opts.deliver(shard, abort.signal);
      await this.opts.markPushed(shard.id);
      this.pushed++;
    } catch (err) {
      if (!this.closed) {
        this.failedAttempts++;
        entry.attempts++;
        const base = this.opts.baseDelayMs ?? 1000;
        const cap = this.opts.maxDelayMs ?? 5 * 60_000;
        // Exponential backoff scaled by a random 0.5–1, so shards that failed together do not retry in lockstep.
        const delay = Math.min(cap, base * 2 ** (entry.attempts - 1)) * (0.5 + Math.random() / 2);
        entry.notBefore = Date.now() + delay;
        this.queue.set(entry.id, entry);
        this.opts.log.warn(
          { shard: entry.id, attempt: entry.attempts, retryInMs: Math.round(delay), err: (err as Error).message },
          `harvest shard ${this.opts.what ?? 'push'} failed; will retry`,
        );
      }
    } finally {
      this.inFlight.delete(entry.id);
      this.pump();
    }
  }
}

/**
 * CARRYON_HARVEST_PUSH_URL's delivery: `PUT <url>/<tenant folder>/<shard id>.safetensors`, the file
 * streamed from disk; `timeoutMs` bounds the wait for response headers and between body chunks.
 */
export function httpPut(url: string, timeoutMs = 60_000): ShardPusherOptions['deliver'] {
  const base = url.replace(/\/+$/, '');
  return async (shard, signal) => {
    const target = `${base}/${encodeURIComponent(tenantDirName(shard.tenantId))}/${encodeURIComponent(shard.id)}.safetensors`;
    // Opened before the request so a shard deleted meanwhile fails here (and is then dropped by lookup).
    const fd = await fs.promises.open(shard.path, 'r');
    const size = (await fd.stat()).size;
    try {
      const res = await request(target, {
        method: 'PUT',
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(size),
          'x-carryon-data-sha256': shard.metadata.data_sha256 ?? '',
        },
        body: fd.createReadStream({ autoClose: false, start: 0 }),
        signal,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      await res.body.dump();
      if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`HTTP ${res.statusCode} from ${target}`);
    } finally {
      await fd.close();
    }
  };
}
