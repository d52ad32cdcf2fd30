import type { Principal } from '../auth/authenticator.js';
import { ApiError } from '../core/errors.js';
import type { TenantRecord, TenantRepository } from '../store/tenants.js';

/**
 * Who may do what on /admin. A global admin key (no tenant) may do everything. A tenant's admin
 * key manages only its own tenant: its keys and carry-ons, never other tenants or global keys.
 * Tenants a key may not see answer 404 exactly like missing ones, so ids do not leak.
 */
export function requireAdmin(principal: Principal | null): Principal {
  if (!principal) throw new ApiError('invalid_api_key', "The admin API needs an admin key. Send it as 'Authorization: Bearer <key>'.");
  if (principal.scope !== 'admin') throw new ApiError('permission_denied', 'This API key has inference scope; the admin API needs an admin key.');
  return principal;
}

export function requireGlobalAdmin(principal: Principal): void {
  if (principal.tenantId !== null) {
    throw new ApiError('permission_denied', "Only a global admin key may do this; this key manages tenant '" + principal.tenantId + "' only.");
  }
}

export function canManageTenant(principal: Principal, tenantId: string | null): boolean {
  return principal.tenantId === null || principal.tenantId === tenantId;
}

/** The live tenant `tenantId`, if this admin may manage it; otherwise 404. */
export async function managedTenant(principal: Principal, tenants: TenantRepository, tenantId: string): Promise<TenantRecord> {
  const tenant = canManageTenant(principal, tenantId) ? await tenants.get(tenantId) : null;
  if (!tenant) throw new ApiError('not_found', `The tenant '${tenantId}' does not exist or you do not have access to it.`, { param: 'tenant' });
  return tenant;
}
