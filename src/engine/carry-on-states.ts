import { ByteBudgetLru } from './byte-budget-lru.js';
import type { CarryOnCache, CarryOnSession } from './carry-on-session.js';

interface State {
  sessionId: number;
  length: number;
  tensors: CarryOnCache['tensors'];
}

/**
 * A carry-on's own attention cache over a cached prefix, kept per carry-on session and prefix
 * block name, so a carry-on's second request on a warm prefix runs neither the base nor itself over
 * it. Keyed by the session object (one per loaded carry-on version), never by name: a new version,
 * or a carry-on deleted and uploaded again under the same name and number, is a new session and
 * can never meet an old one's state. States are the carry-on's output tensors, which later runs
 * only read (each run returns new ones), so keeping and reusing one copies nothing.
 */
export class CarryOnPrefixStates {
  private readonly ids = new WeakMap<CarryOnSession, number>();
  private nextId = 1;
  private readonly states: ByteBudgetLru<State>;

  constructor(budgetBytes: number) {
    this.states = new ByteBudgetLru(budgetBytes);
  }

  get bytes(): number {
    return this.states.bytes;
  }

  /**
   * Starts `cache` from the longest kept state along `names` (the prefix's block names, in order;
   * block i ends at position (i + 1) · blockTokens). Returns the positions it covers (0: none).
   */
  restore(session: CarryOnSession, names: string[], blockTokens: number, cache: CarryOnCache): number {
    // A mixture's state would need its secondary bases' caches too: it replays the prefix instead.
    if (session.isMixture) return 0;
    const id = this.ids.get(session);
    if (id === undefined) return 0;
    for (let i = names.length - 1; i >= 0; i--) {
      const state = this.states.get(`${id}:${names[i]}`);
      if (!state) continue;
      cache.length = state.length;
      cache.tensors = new Map(state.tensors);
      return (i + 1) * blockTokens;
    }
    return 0;
  }

  /** Keeps `cache` (which covers exactly the prefix ending with block `name`) within `limit` bytes. */
  keep(session: CarryOnSession, name: string, cache: CarryOnCache, limit: number): void {
    if (session.isMixture) return;
    let id = this.ids.get(session);
    if (id === undefined) this.ids.set(session, (id = this.nextId++));
    let bytes = 0;
    for (const t of cache.tensors.values()) bytes += (t.data as Float32Array).byteLength;
    this.states.insert(`${id}:${name}`, { sessionId: id, length: cache.length, tensors: new Map(cache.tensors) }, bytes, limit);
  }

  /** Drops a released session's states. */
  forget(session: CarryOnSession): void {
    const id = this.ids.get(session);
    if (id === undefined) return;
    this.states.deleteWhere((state) => state.sessionId === id);
  }

  shrinkTo(bytes: number): void {
    this.states.shrinkTo(bytes);
  }

  clear(): void {
    this.states.deleteWhere();
  }
}
