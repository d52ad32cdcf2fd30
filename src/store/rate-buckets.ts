import type { SqlDriver } from './sql-driver.js';

/** One replica's use of one bucket since its last sync. */
export interface BucketUse {
  keyId: string;
  kind: 'requests' | 'tokens';
  perMinute: number;
  /** Requests or tokens this replica admitted or charged since it last synced this bucket. */
  spent: number;
  /** The replica's clock (Unix ms) at this sync. */
  at: number;
}

/**
 * Rate-limit buckets shared by every replica on one database: each replica keeps its own buckets
 * on the request path and, every sync, adds what it spent here and takes back the level all
 * replicas' spending left. One statement per bucket, outside any write transaction (no store
 * lock): the row's refill-then-spend is one atomic upsert, so concurrent replicas never lose an
 * update.
 */
export class RateBucketRepository {
  constructor(private readonly db: SqlDriver) {}

  /** Applies `use` to the shared bucket (refilled up to `use.at` first) and returns its level. */
  async exchange(use: BucketUse): Promise<number> {
    // excluded.level carries perMinute − spent: a new row starts full and pays what was spent.
    // Refill runs forward only (a replica whose clock lags adds nothing), and never past the limit.
    const row = await this.db.get<{ level: number }>(
      `INSERT INTO rate_buckets (key_id, kind, level, per_minute, at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (key_id, kind) DO UPDATE SET
         level = (CASE
           WHEN excluded.at <= rate_buckets.at THEN rate_buckets.level
           WHEN rate_buckets.level + (excluded.at - rate_buckets.at) * excluded.per_minute / 60000.0 >= excluded.per_minute THEN excluded.per_minute
           ELSE rate_buckets.level + (excluded.at - rate_buckets.at) * excluded.per_minute / 60000.0
         END) - (excluded.per_minute - excluded.level),
         per_minute = excluded.per_minute,
         at = CASE WHEN excluded.at > rate_buckets.at THEN excluded.at ELSE rate_buckets.at END
       RETURNING level`,
      [use.keyId, use.kind, use.perMinute - use.spent, use.perMinute, Math.round(use.at)],
    );
    return row!.level;
  }
}
