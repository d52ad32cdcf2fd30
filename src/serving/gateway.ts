import type { CarryOnCatalog } from '../carryon/catalog.js';
import type { DatabaseState } from '../store/database-health.js';
import type { CarryOnRegistry } from './carry-on-registry.js';
import { ModelRouter } from './model-routing.js';
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

/**
 * What the HTTP surfaces share: the served model's name, its services once loaded, and the lifecycle
 * status that readiness and the 503s read. Routes get this object, never globals.
 */
export class Gateway {
  status: GatewayStatus = 'loading';
  /** Per-key request and token limits on inference routes; null: none configured. */
  rateLimiter: RateLimiter | null = null;
  failure: string | null = null;
  /** The data folder's space: `full` says why it counts as full (readiness reports it), null while there is room. */
  disk: { readonly full: string | null } | null = null;
  /** PostgreSQL's reachability (readiness reports it); null on SQLite. */
  database: { state(): Promise<DatabaseState> } | null = null;
  private services: ModelServices | null = null;
  readonly created = Math.floor(Date.now() / 1000);
  /** `model` names → the base or a tenant's carry-on version; needs no loaded model. */
  readonly router: ModelRouter;

  constructor(
    readonly modelName: string,
    readonly scheduler: Scheduler,
    readonly limits: { maxN: number; maxEmbeddingInputs: number; maxPrompts: number },
    /** Tenants' carry-ons; null when the gateway runs without a metadata store. */
    readonly catalog: CarryOnCatalog | null = null,
  ) {
    this.router = new ModelRouter(modelName, catalog);
  }

  setReady(services: ModelServices): void {
    this.services = services;
    this.status = 'ready';
  }

  setFailed(message: string): void {
    this.failure = message;
    this.status = 'failed';
  }

  /** The loaded model, or the 503 a client should see instead. */
  model(): ModelServices {
    if (this.status === 'stopping') throw new ApiError('shutting_down', 'The server is shutting down.', { headers: { connection: 'close' } });
    if (!this.services || this.status !== 'ready') {
      throw new ApiError('model_loading', this.status === 'failed' ? `The model is not available: ${this.failure}` : 'The model is still loading; retry shortly.', {
        headers: { 'retry-after': '5' },
      });
    }
    return this.services;
  }
}
