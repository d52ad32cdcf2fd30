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

/** A base as routing sees it: its name, and its package's fingerprint once the package is resolved. */
export interface ServedBase {
  name: string;
  /** null while the base's package is still being found or imported (or when that failed). */
  fingerprint: string | null;
  /** 'failed': a null fingerprint will stay unknown, so it is not waited for. */
  status?: 'loading' | 'ready' | 'failed';
}

/** Where a `model` name leads: the base that serves it, and the carry-on version on it (null: the base alone). */
export interface Route {
  base: string;
  record: CarryOnVersionRecord | null;
}

/** A router bound to one base, as that base's inference service uses it. */
export interface BaseRouter {
  /** The carry-on version of a route the gateway resolved (null: the base alone), once it is sure the route is to this base. */
  check(route: Route): CarryOnVersionRecord | null;
  /** For surfaces served by the base alone (embeddings): its name, or `<base>:base`. */
  requireBase(model: string, caller: Caller): void;
}

/**
 * The `model` naming scheme, for every served base B:
 * - `B`                      the caller key's default carry-on when it belongs to B, else B alone
 * - `B:base`                 B alone, always
 * - `B:<id>`                 the caller's carry-on `id`, latest version, which must belong to B
 * - `<id>`                   the caller's carry-on `id`, on the base whose fingerprint its manifest names
 * - `<id>@<v>`               version `v` (a number or an alias), also after `B:`
 * A carry-on of another tenant is a 404 exactly like one that does not exist.
 */
export async function routeModel(model: string, bases: readonly ServedBase[], caller: Caller, catalog: CarryOnCatalog | null): Promise<Route> {
  const named = bases.find((b) => b.name === model);
  if (named) {
    if (!caller.defaultCarryOn) return { base: named.name, record: null };
    const record = await lookup(caller.defaultCarryOn, model, caller, catalog);
    // A key's default carry-on answers only for its own base; on another base the key gets that base alone.
    return { base: named.name, record: named.fingerprint === null || record.manifest.base_fingerprint === named.fingerprint ? record : null };
  }
  const colon = model.indexOf(':');
  const prefixed = colon > 0 ? bases.find((b) => b.name === model.slice(0, colon)) : undefined;
  if (prefixed) {
    const name = model.slice(colon + 1);
    if (name === BASE_ONLY) return { base: prefixed.name, record: null };
    const record = await lookup(name, model, caller, catalog);
    // Still loading (fingerprint unknown): the base's own 503 answers, not a guess.
    if (prefixed.fingerprint !== null && record.manifest.base_fingerprint !== prefixed.fingerprint) throw wrongBase(model, record, prefixed, bases);
    return { base: prefixed.name, record };
  }
  const record = await lookup(model, model, caller, catalog);
  return { base: baseOf(record, model, bases).name, record };
}

/** The base a carry-on version was trained on, among those served; an error naming why when none is. */
function baseOf(record: CarryOnVersionRecord, model: string, bases: readonly ServedBase[]): ServedBase {
  const owner = bases.find((b) => b.fingerprint === record.manifest.base_fingerprint);
  if (owner) return owner;
  if (bases.some(isPending)) {
    throw new ApiError('model_loading', 'The base model is still loading; retry shortly.', { headers: { 'retry-after': '5' } });
  }
  throw new ApiError(
    'carry_on_base_mismatch',
    `The carry-on '${model}' was made for base model ${record.manifest.base_fingerprint.slice(0, 12)}…, which this gateway does not serve (it serves ${servedList(bases)}).`,
    { param: 'model' },
  );
}

/** A base whose fingerprint is not known yet but will be: any carry-on might belong to it. */
export function isPending(base: ServedBase): boolean {
  return base.fingerprint === null && base.status !== 'failed';
}

function wrongBase(model: string, record: CarryOnVersionRecord, asked: ServedBase, bases: readonly ServedBase[]): ApiError {
  const owner = bases.find((b) => b.fingerprint === record.manifest.base_fingerprint);
  const belongs = owner
    ? `belongs to base '${owner.name}', not '${asked.name}': call it as '${owner.name}:${model.slice(asked.name.length + 1)}'`
    : `was made for base model ${record.manifest.base_fingerprint.slice(0, 12)}…, not '${asked.name}', and this gateway serves no such base (it serves ${servedList(bases)})`;
  return new ApiError('carry_on_base_mismatch', `The carry-on in '${model}' ${belongs}.`, { param: 'model' });
}

function servedList(bases: readonly ServedBase[]): string {
  return bases.map((b) => `'${b.name}'`).join(', ');
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
 * Resolves `model` names for a gateway: its served bases (read on every call, since fingerprints
 * become known as packages resolve) and the tenants' carry-on catalog (null without a metadata store).
 */
export class ModelRouter {
  constructor(
    private readonly bases: () => readonly ServedBase[],
    private readonly catalog: CarryOnCatalog | null,
  ) {}

  /** The base and carry-on version `model` names; a 404 (or the mismatch) otherwise. */
  resolve(model: string, caller: Caller): Promise<Route> {
    return routeModel(model, this.bases(), caller, this.catalog);
  }

  /** The base serving a carry-on version: its name, or null when none served here is (yet) known to match. */
  baseNameOf(record: CarryOnVersionRecord): string | null {
    return this.bases().find((b) => b.fingerprint === record.manifest.base_fingerprint)?.name ?? null;
  }

  /** The routing one base's inference service does: it only ever sees names the gateway routed to it. */
  forBase(name: string): BaseRouter {
    return {
      check: (route) => {
        if (route.base !== name) throw new ApiError('internal_error', `A request routed to base '${route.base}' reached base '${name}'.`);
        return route.record;
      },
      requireBase: (model, caller) => {
        if (model !== name && model !== `${name}:${BASE_ONLY}`) throw notFound(model, caller);
      },
    };
  }
}
