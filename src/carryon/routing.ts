import { ApiError } from '../errors.js';
import type { HarvestPolicy } from '../harvest/types.js';
import type { CarryOnCatalog, CarryOnVersionRecord } from './catalog.js';

/** Who is asking, as far as routing cares. */
export interface Caller {
  /** null: a global admin key, which sees the base only. */
  tenantId: string | null;
  defaultCarryOn: string | null;
  /** The key's harvest policy (opt-in); null: this caller's traffic is never harvested. */
  harvest: HarvestPolicy | null;
  /** Non-secret key id (rate-limit buckets, logs); 'anonymous' without a key. */
  keyId: string;
}

/** The routing view of an authenticated principal (null: anonymous access). */
export function callerOf(principal: object | null): Caller {
  const p = (principal ?? {}) as { tenantId?: string | null; defaultCarryOn?: string | null; harvest?: HarvestPolicy | null; keyId?: string };
  return { tenantId: p.tenantId ?? null, defaultCarryOn: p.defaultCarryOn ?? null, harvest: p.harvest ?? null, keyId: p.keyId ?? 'anonymous' };
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
export function routeModel(model: string, baseName: string, caller: Caller, catalog: CarryOnCatalog | null): CarryOnVersionRecord | null {
  if (model === baseName) {
    return caller.defaultCarryOn ? lookup(caller.defaultCarryOn, model, caller, catalog) : null;
  }
  const name = model.startsWith(`${baseName}:`) ? model.slice(baseName.length + 1) : model;
  if (name === BASE_ONLY && name !== model) return null;
  return lookup(name, model, caller, catalog);
}

function lookup(name: string, model: string, caller: Caller, catalog: CarryOnCatalog | null): CarryOnVersionRecord {
  const at = name.lastIndexOf('@');
  const id = at > 0 ? name.slice(0, at) : name;
  const version = at > 0 ? name.slice(at + 1) : undefined;
  const record = caller.tenantId && catalog ? catalog.resolve(caller.tenantId, id, version) : null;
  if (!record) throw notFound(model);
  return record;
}

export function notFound(model: string): ApiError {
  return new ApiError('model_not_found', `The model '${model}' does not exist or you do not have access to it.`, { param: 'model' });
}
