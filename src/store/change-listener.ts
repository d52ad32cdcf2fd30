import type pg from 'pg';
import { CHANGE_CHANNEL, type ChangeFeed } from './change-feed.js';
import type { PostgresDriver } from './postgres-driver.js';

/** First retry soon (a restart takes seconds), then back off so a long outage costs little. */
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5_000;

/**
 * This replica's ear on the change feed: ONE dedicated PostgreSQL connection (not from the pool:
 * LISTEN belongs to a session, and a pooled client would be handed to queries) that LISTENs on
 * the channel and passes every notification to the feed. When the connection drops it reconnects
 * with backoff, and after reconnecting asks the feed's listeners to resync, since notifications
 * sent meanwhile are lost.
 */
export class ChangeListener {
  private client: pg.Client | null = null;
  private timer: NodeJS.Timeout | null = null;
  private retryMs = FIRST_RETRY_MS;
  private stopped = false;
  private everConnected = false;
  /** Why the last attempt failed (password-free), while not listening. */
  lastError: string | null = null;

  constructor(
    private readonly driver: PostgresDriver,
    private readonly feed: ChangeFeed,
    private readonly warn: (msg: string) => void,
  ) {}

  get listening(): boolean {
    return this.client !== null;
  }

  /** Resolves once listening (or after the first failure; it keeps retrying in the background). */
  async start(): Promise<void> {
    await this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = this.driver.dedicatedClient();
    // Until it is ours, a failing attempt only schedules the next one.
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch (err) {
      await client.end().catch(() => undefined);
      this.failed(err);
      return;
    }
    if (this.stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    client.on('notification', (n) => {
      if (n.channel === CHANGE_CHANNEL && n.payload) this.feed.receive(n.payload);
    });
    const lost = (err?: unknown) => {
      if (this.client !== client) return;
      this.client = null;
      client.end().catch(() => undefined);
      this.failed(err ?? new Error('connection ended'));
    };
    client.on('error', lost);
    client.on('end', () => lost());
    this.client = client;
    this.lastError = null;
    this.retryMs = FIRST_RETRY_MS;
    if (this.everConnected) this.warn('PostgreSQL change feed: listening again; reconciling what may have been missed');
    // Anything cached before this moment may predate a change that was never heard: re-check it.
    this.feed.resync();
    this.everConnected = true;
  }

  private failed(err: unknown): void {
    if (this.stopped) return;
    const message = this.driver.redact(err);
    if (this.lastError === null) {
      this.warn(`PostgreSQL change feed: not listening (${message}); retrying`);
      // Whatever was cached may go stale from now on: listeners fall back to the database (or their grace).
      this.feed.resync();
    }
    this.lastError = message;
    this.timer = setTimeout(() => void this.connect(), this.retryMs);
    this.timer.unref();
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
  }
}
