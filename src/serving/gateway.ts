import type { CarryOnCatalog } from '../carryon/catalog.js';
import type { DatabaseState } from '../store/database-health.js';
import type { CarryOnRegistry } from './carry-on-registry.js';
import { ModelRouter, type Caller, type Route } from './model-routing.js';
import type { ChatTemplate } from '../model/chat-template.js';
import type { Engine } from '../engine/engine.js';
import { ApiError } from '../core/errors.js';
import type { RateLimiter } from './rate-limit.js';
import type { Inference } from './inference.js';
import type { Scheduler } from './scheduler.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { PromptEncoder } from '../model/prompt-encoder.js';
import type { SamplingDefaults } from '../model/generation-defaults.js';

export interface ModelServices {
  engine: Engine;
  tokenizer: ModelTokenizer;
  /** The model's own sampling defaults (generation_config.json with do_sample), for requests that leave them out. */
  samplingDefaults: SamplingDefaults;
  /** Text → token ids off the event loop, refusing texts that cannot fit the context. */
  encoder: PromptEncoder;
  chatTemplate: ChatTemplate;
  /** Every request to the model goes through here. */
  inference: Inference;
  contextLength: number;
  hiddenSize: number;
  registry: CarryOnRegistry;
}

export type GatewayStatus = 'loading' | 'ready' | 'failed' | 'stopping';

/** One served base: its own lifecycle, and its own engine and services once loaded. */
export interface BaseModelState {
  readonly name: string;
  status: 'loading' | 'ready' | 'failed';
  failure: string | null;
  /** The package's fingerprint, known once its package is resolved (before the engine starts). */
  fingerprint: string | null;
  services: ModelServices | null;
}

/**
 * What the HTTP surfaces share: the served bases (the first is the default), each with its services
 * once loaded and its own lifecycle status, which readiness and the 503s read. Routes get this
 * object, never globals.
 */
export class Gateway {
  /** Per-key request and token limits on inference routes; null: none configured. */
  rateLimiter: RateLimiter | null = null;
  /** The data folder's space: `full` says why it counts as full (readiness reports it), null while there is room. */
  disk: { readonly full: string | null } | null = null;
  /** PostgreSQL's reachability (readiness reports it); null on SQLite. */
  database: { state(): Promise<DatabaseState> } | null = null;
  /** In configuration order; the first is the default base. */
  readonly bases: readonly BaseModelState[];
  private stopping = false;
  readonly created = Math.floor(Date.now() / 1000);
  /** `model` names → a base and a tenant's carry-on version on it; needs no loaded model. */
  readonly router: ModelRouter;

  constructor(
    /** The served bases' names, the default first. */
    baseNames: readonly string[],
    readonly scheduler: Scheduler,
    readonly limits: { maxN: number; maxEmbeddingInputs: number; maxPrompts: number },
    /** Tenants' carry-ons; null when the gateway runs without a metadata store. */
    readonly catalog: CarryOnCatalog | null = null,
  ) {
    if (baseNames.length === 0) throw new Error('a gateway serves at least one base model');
    this.bases = baseNames.map((name) => ({ name, status: 'loading', failure: null, fingerprint: null, services: null }));
    this.router = new ModelRouter(() => this.bases, catalog);
  }

  /** The default base's name: what training and harvesting use, and the single base's name. */
  get modelName(): string {
    return this.bases[0].name;
  }

  /** 'ready' once every base is loaded; 'failed' when any failed; 'stopping' from shutdown on. */
  get status(): GatewayStatus {
    if (this.stopping) return 'stopping';
    if (this.bases.some((b) => b.status === 'failed')) return 'failed';
    return this.bases.every((b) => b.status === 'ready') ? 'ready' : 'loading';
  }

  /** Why the gateway is not fully serving: the failed bases' reasons (named when there are several). */
  get failure(): string | null {
    const failed = this.bases.filter((b) => b.failure !== null);
    if (failed.length === 0) return null;
    return this.bases.length === 1 ? failed[0].failure : failed.map((b) => `${b.name}: ${b.failure}`).join('; ');
  }

  /** Shutdown: every request from now on is refused (503, Connection: close). */
  stop(): void {
    this.stopping = true;
  }

  base(name: string = this.modelName): BaseModelState {
    const state = this.bases.find((b) => b.name === name);
    if (!state) throw new ApiError('model_not_found', `The model '${name}' does not exist or you do not have access to it.`, { param: 'model' });
    return state;
  }

  setReady(services: ModelServices, name?: string): void {
    const state = this.base(name);
    state.services = services;
    state.status = 'ready';
  }

  setFailed(message: string, name?: string): void {
    const state = this.base(name);
    state.failure = message;
    state.status = 'failed';
  }

  /** A loaded base (the default one when unnamed), or the 503 a client should see instead. */
  model(name?: string): ModelServices {
    if (this.stopping) throw shuttingDown();
    const state = this.base(name);
    if (!state.services || state.status !== 'ready') {
      const which = this.bases.length === 1 ? 'The model' : `The base model '${state.name}'`;
      throw new ApiError('model_loading', state.status === 'failed' ? `${which} is not available: ${state.failure}` : `${which} is still loading; retry shortly.`, {
        headers: { 'retry-after': '5' },
      });
    }
    return state.services;
  }

  /**
   * Where a request's `model` routes, resolved once for the whole request: the base's services and
   * the route (base and carry-on version) that its generation runs on (a 404, mismatch or 503 otherwise).
   */
  async modelFor(model: string, caller: Caller): Promise<{ services: ModelServices; route: Route }> {
    // Before any lookup: a draining server answers every request alike.
    if (this.stopping) throw shuttingDown();
    const route = await this.router.resolve(model, caller);
    return { services: this.model(route.base), route };
  }
}

const shuttingDown = () => new ApiError('shutting_down', 'The server is shutting down.', { headers: { connection: 'close' } });
