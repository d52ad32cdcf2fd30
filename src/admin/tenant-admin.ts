import { ApiError } from '../core/errors.js';
import type { ForgetSummary } from '../harvest/service.js';
import type { Store } from '../store/store.js';
import { managedTenant, requireGlobalAdmin } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { CarryOnFiles } from './carry-on-files.js';
import type { PrefixCacheControl } from './prefix-cache-admin.js';
import type { DeletedObject, List, TenantObject } from './schemas.js';
import { view } from './views.js';

export class TenantAdmin {
  constructor(
    private readonly store: Store,
    private readonly files: CarryOnFiles,
    /** Deletes a tenant's harvested shards, journals and index rows. */
    private readonly harvest: { forgetTenant(tenantId: string): Promise<ForgetSummary> },
    /** The engine's prefix cache, which holds the tenant's prompt blocks. */
    private readonly prefixCache: PrefixCacheControl,
  ) {}

  async create(ctx: AdminContext, body: { id: string; name?: string }): Promise<TenantObject> {
    requireGlobalAdmin(ctx.principal);
    const tenant = await this.store.tenants.create(body.id, body.name ?? body.id);
    if (!tenant) throw new ApiError('conflict', `A tenant '${body.id}' already exists.`, { param: 'id' });
    audit(ctx, { action: 'tenant.create', tenant: tenant.id, target: tenant.id });
    return view.tenant(tenant);
  }

  /** A global admin sees every tenant; a tenant's admin key sees its own. */
  async list(ctx: AdminContext): Promise<List<TenantObject>> {
    const { tenantId } = ctx.principal;
    const tenants = tenantId === null ? await this.store.tenants.list() : [await this.store.tenants.get(tenantId)].filter((t) => t !== null);
    return view.list(tenants.map(view.tenant));
  }

  /**
   * Revokes the tenant's keys and deletes its carry-ons with it, in one transaction; then removes
   * their files and everything harvested from its traffic. The response waits for the harvest data to
   * be gone, so a 200 means forgotten.
   */
  async delete(ctx: AdminContext, tenantId: string): Promise<DeletedObject> {
    requireGlobalAdmin(ctx.principal);
    await managedTenant(ctx.principal, this.store.tenants, tenantId);
    const dirs = await this.store.carryOns.deleteForTenant(tenantId, async (tx) => {
      await this.store.tenants.markDeleted(tenantId, tx);
      await this.store.apiKeys.revokeForTenant(tenantId, tx);
    });
    await this.files.remove(dirs);
    try {
      this.files.removeTenant(tenantId);
    } catch (err) {
      ctx.log.warn({ err, tenant: tenantId }, 'could not remove the deleted tenant’s carry-on folder');
    }
    this.prefixCache.clear(tenantId);
    audit(ctx, { action: 'tenant.delete', tenant: tenantId, target: tenantId });
    try {
      const forgotten = await this.harvest.forgetTenant(tenantId);
      ctx.log.info({ tenant: tenantId, harvest: forgotten }, 'harvest data of the deleted tenant removed');
    } catch (err) {
      // The tenant is gone already; the next start removes what is left of its harvest data.
      ctx.log.error({ err, tenant: tenantId }, 'could not remove the deleted tenant’s harvest data');
      throw new ApiError('internal_error', `Tenant '${tenantId}' was deleted, but its harvest data could not all be removed yet; it is removed at the next start.`);
    }
    return view.deleted('tenant', tenantId);
  }
}
