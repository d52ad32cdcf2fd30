import { requireGlobalAdmin } from './access.js';
import { audit, type AdminContext } from './audit.js';

/** How the admin reaches the engine's prefix cache (the engine loads after the admin API starts). */
export interface PrefixCacheControl {
  /** Drops every cached block, or one tenant's; does nothing while no model is loaded. */
  clear(tenantId?: string): void;
}

/**
 * Dropping the prefix cache: an operator's lever after, say, a tokenizer or template change
 * upstream, or to measure cold prefills. Deleting a tenant drops its blocks too (TenantAdmin).
 */
export class PrefixCacheAdmin {
  constructor(private readonly control: PrefixCacheControl) {}

  clear(ctx: AdminContext, tenantId: string | undefined): { object: 'prefix_cache'; cleared: true; tenant: string | null } {
    requireGlobalAdmin(ctx.principal);
    this.control.clear(tenantId);
    audit(ctx, { action: 'prefix_cache.clear', tenant: tenantId ?? null, target: tenantId ?? 'all' });
    return { object: 'prefix_cache', cleared: true, tenant: tenantId ?? null };
  }
}
