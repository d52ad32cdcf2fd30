import { generateApiKey, hashKey, keyPrefix, newKeyId } from '../auth/authenticator.js';
import { ApiError } from '../core/errors.js';
import type { ApiKeyRecord } from '../store/api-keys.js';
import type { HarvestPolicy } from '../store/harvest-policy.js';
import { parseCarryOnRef } from '../store/carry-ons.js';
import type { Store } from '../store/store.js';
import { canManageTenant, managedTenant, requireGlobalAdmin } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { ApiKeyObject, CreatedApiKeyObject, CreateKeyBody, List, PatchKeyBody } from './schemas.js';
import { view } from './views.js';

export class KeyAdmin {
  constructor(
    private readonly store: Store,
    private readonly baseNames: string[],
  ) {}

  /** Creates a key; the response is the only place the key ever appears (the store keeps its hash). */
  async create(ctx: AdminContext, body: CreateKeyBody): Promise<CreatedApiKeyObject> {
    const tenantId = body.tenant ?? null;
    if (tenantId === null) requireGlobalAdmin(ctx.principal);
    else await managedTenant(ctx.principal, this.store.tenants, tenantId);
    if (body.default_carry_on) await this.checkDefaultCarryOn(tenantId, body.default_carry_on);
    this.checkHarvestBases(body.harvest);
    const key = generateApiKey();
    const record = await this.store.apiKeys.insert({
      id: newKeyId(),
      tenantId,
      scope: body.scope,
      name: body.name ?? null,
      hash: hashKey(key),
      prefix: keyPrefix(key),
      defaultCarryOn: body.default_carry_on ?? null,
      harvest: body.harvest ?? null,
    });
    audit(ctx, { action: 'key.create', tenant: tenantId, target: record.id });
    return { ...view.apiKey(record), key };
  }

  /** Keys this admin manages, revoked ones included; `tenant` narrows to one tenant. */
  async list(ctx: AdminContext, tenant: string | undefined): Promise<List<ApiKeyObject>> {
    const own = ctx.principal.tenantId;
    if (tenant !== undefined) await managedTenant(ctx.principal, this.store.tenants, tenant);
    const keys = await this.store.apiKeys.list(tenant ?? own ?? undefined);
    return view.list(keys.map(view.apiKey));
  }

  async update(ctx: AdminContext, id: string, patch: PatchKeyBody): Promise<ApiKeyObject> {
    const key = await this.managedKey(ctx, id);
    if (key.revokedAt !== null) throw new ApiError('conflict', `The key '${id}' is revoked.`);
    if (patch.default_carry_on) await this.checkDefaultCarryOn(key.tenantId, patch.default_carry_on);
    this.checkHarvestBases(patch.harvest);
    const updated = await this.store.apiKeys.update(id, { name: patch.name, defaultCarryOn: patch.default_carry_on, harvest: patch.harvest });
    if (Object.values(patch).some((v) => v !== undefined)) audit(ctx, { action: 'key.update', tenant: key.tenantId, target: id });
    return view.apiKey(updated as ApiKeyRecord);
  }

  /** Revokes at once: the next request with the key gets a 401. Revoking a revoked key changes nothing. */
  async revoke(ctx: AdminContext, id: string): Promise<ApiKeyObject> {
    const key = await this.managedKey(ctx, id);
    if (key.origin === 'config') {
      throw new ApiError('conflict', `The key '${id}' comes from the server's configuration (${key.name}); remove it there and restart.`);
    }
    if (await this.store.apiKeys.revoke(id)) audit(ctx, { action: 'key.revoke', tenant: key.tenantId, target: id });
    return view.apiKey((await this.store.apiKeys.get(id)) as ApiKeyRecord);
  }

  /** A key this admin may manage; others answer 404 like missing ones. */
  private async managedKey(ctx: AdminContext, id: string): Promise<ApiKeyRecord> {
    const key = await this.store.apiKeys.get(id);
    if (!key || !canManageTenant(ctx.principal, key.tenantId)) {
      throw new ApiError('not_found', `The API key '${id}' does not exist or you do not have access to it.`, { param: 'id' });
    }
    return key;
  }

  /** A policy's bases must be served here now (a base removed later is skipped at harvest time, never a failed request). */
  private checkHarvestBases(policy: HarvestPolicy | null | undefined): void {
    const unknown = policy?.bases?.find((b) => !this.baseNames.includes(b));
    if (unknown !== undefined) {
      throw new ApiError('invalid_value', `harvest.bases: '${unknown}' is not a base model served here (${this.baseNames.join(', ')}).`, {
        param: 'harvest.bases',
      });
    }
  }

  /** A default carry-on must resolve now, for the key's own tenant; requests would fail on it otherwise. */
  private async checkDefaultCarryOn(tenantId: string | null, ref: string): Promise<void> {
    if (tenantId === null) {
      throw new ApiError('invalid_value', 'A global admin key has no tenant, so it cannot have a default carry-on.', { param: 'default_carry_on' });
    }
    const parsed = parseCarryOnRef(ref);
    if (!parsed || !(await this.store.carryOns.resolve(tenantId, parsed.carryOnId, parsed.versionOrAlias))) {
      throw new ApiError('invalid_value', `Tenant '${tenantId}' has no carry-on '${ref}'.`, { param: 'default_carry_on' });
    }
  }
}
