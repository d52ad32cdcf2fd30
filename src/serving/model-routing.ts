import { ApiError } from '../core/errors.js';
import { TENANT_HEADER } from '../auth/authenticator.js';
import type { HarvestPolicy } from '../harvest/types.js';
import type { CarryOnCatalog, CarryOnVersionRecord } from '../carryon/catalog.js';

/** Who is asking, as far as routing cares. */
export interface Caller {
  /** null: a global admin key, which sees the base only. */
  tenantId: string | null;
  defaultCarryOn: string | null;
  /** The key's harvest policy (opt-in); null: this caller's traffic is never harvested. */
  harvest: HarvestPolicy | null;
  /** Non-secret key id (rate-limit buckets, logs); 'anonymous' without a key. */
  keyId: string;
  /** 'admin' for admin keys; an admin key without a tenant is told how to act for one. */
  scope: 'admin' | 'inference' | 'anonymous';
}

/** The routing view of an authenticated principal (null: anonymous access). */
export function callerOf(principal: object | null): Caller {
  const p = (principal ?? {}) as { tenantId?: string | null; defaultCarryOn?: string | null; harvest?: HarvestPolicy | null; keyId?: string; scope?: string };
  return {
    tenantId: p.tenantId ?? null,
    defaultCarryOn: p.defaultCarryOn ?? null,
    harvest: p.harvest ?? null,
    keyId: p.keyId ?? 'anonymous',
    scope: p.scope === 'admin' ? 'admin' : principal ? 'inference' : 'anonymous',
  };
}

/** The literal carry-on name that always means "the base alone", e.g. `stories260K:base`. */
export const BASE_ONLY = 'base';

/**
 * The `model` naming scheme:
 * - `<base>`                 the caller key's default carry-on if it has one, else the base
 * - `<base>:base`            the base alone, always
 * - `<id>` / `<base>:<id>`   the caller's carry-on `id`, latest version
 * - `<id>@<v>`               version `v` (a number or an alias), also after `<base>:`
 * A carry-on of another tenant is a 404 exactly like one that does not exist.
 */
export async function routeModel(model: string, baseName: string, caller: Caller, catalog: CarryOnCatalog | null): Promise<CarryOnVersionRecord | null> {
  if (model === baseName) {
    return caller.defaultCarryOn ? lookup(caller.defaultCarryOn, model, caller, catalog) : null;
  }
  const name = model.startsWith(`${baseName}:`) ? model.slice(baseName.length + 1) : model;
  if (name === BASE_ONLY && name !== model) return null;
  return lookup(name, model, caller, catalog);
}

async function lookup(name: string, model: string, caller: Caller, catalog: CarryOnCatalog | null): Promise<CarryOnVersionRecord> {
  const at = name.lastIndexOf('@');
  const id = at > 0 ? name.slice(0, at) : name;
  const version = at > 0 ? name.slice(at + 1) : undefined;
  const record = caller.tenantId && catalog ? await catalog.resolve(caller.tenantId, id, version) : null;
  if (!record) throw notFound(model, caller);
  return record;
}

/** The same 404 whether the model is missing or another tenant's; a caller with no tenant is told why. */
export function notFound(model: string, caller: Caller): ApiError {
  let why = '';
  if (caller.tenantId === null && caller.scope === 'admin') {
    why =
      ` This is a global admin key, which belongs to no tenant and serves only the base model: to call a tenant's carry-on, ` +
      `send the header '${TENANT_HEADER}: <tenant id>' with it, or use one of that tenant's API keys.`;
  } else if (caller.tenantId === null) {
    why = ' Requests without a tenant (anonymous access) are served by the base model only.';
  }
  return new ApiError('model_not_found', `The model '${model}' does not exist or you do not have access to it.${why}`, { param: 'model' });
}

/**
 * Resolves `model` names for a gateway: its base's name and the tenants' carry-on catalog (null
 * when the gateway runs without a metadata store).
 */
export class ModelRouter {
  constructor(
    readonly baseName: string,
    private readonly catalog: CarryOnCatalog | null,
  ) {}

  /** The base (null) or one of the caller's carry-on versions; a 404 otherwise. */
  route(model: string, caller: Caller): Promise<CarryOnVersionRecord | null> {
    return routeModel(model, this.baseName, caller, this.catalog);
  }

  /** For surfaces served by the base alone (embeddings): its name, or `<base>:base`. */
  requireBase(model: string, caller: Caller): void {
    if (model !== this.baseName && model !== `${this.baseName}:${BASE_ONLY}`) throw notFound(model, caller);
  }
}
