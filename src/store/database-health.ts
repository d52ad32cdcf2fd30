import type { ChangeListener } from './change-listener.js';
import type { PostgresDriver } from './postgres-driver.js';

/** A probe answers from the last result this long, so readiness probes do not hammer the server. */
const CACHE_MS = 1_500;
/** A server that does not answer `SELECT 1` this fast counts as unreachable for readiness. */
const PROBE_TIMEOUT_MS = 1_000;

export interface DatabaseState {
  reachable: boolean;
  /** Why not (password-free); null while reachable. */
  error: string | null;
  /** Since when unreachable (ISO); null while reachable. */
  since: string | null;
  /** Whether this replica hears other replicas' changes at once (false: it relies on the periodic reconcile). */
  changeFeed: boolean;
}

/** Whether the PostgreSQL metadata database answers: a cheap `SELECT 1` with a short timeout, cached briefly. */
export class DatabaseHealth {
  private last: { at: number; state: DatabaseState } | null = null;
  private inFlight: Promise<DatabaseState> | null = null;
  private downSince: string | null = null;

  constructor(
    private readonly driver: PostgresDriver,
    private readonly listener: ChangeListener | null,
  ) {}

  async state(): Promise<DatabaseState> {
    if (this.last && Date.now() - this.last.at < CACHE_MS) return this.last.state;
    this.inFlight ??= this.probe().finally(() => (this.inFlight = null));
    return this.inFlight;
  }

  private async probe(): Promise<DatabaseState> {
    let error: string | null = null;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.driver.query('SELECT 1'),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS))),
      ]);
    } catch (err) {
      error = this.driver.redact(err);
    } finally {
      clearTimeout(timer);
    }
    if (error === null) this.downSince = null;
    else this.downSince ??= new Date().toISOString();
    const state: DatabaseState = { reachable: error === null, error, since: this.downSince, changeFeed: this.listener?.listening ?? false };
    this.last = { at: Date.now(), state };
    return state;
  }
}
