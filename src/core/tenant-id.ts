import { z } from 'zod';

/**
 * Tenant ids become URL segments, metric labels and (for harvest shards) folder names: a slug with
 * no dots, so never `.` or `..`, and no `/`. Shared by the store and the carry-on manifest (which
 * may name the tenant it is uploaded for), so both accept exactly the same ids.
 */
export const TENANT_ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** The tenant id as a request field, with the one error message every surface gives. */
export const TenantIdField = z.string().regex(TENANT_ID_PATTERN, 'expected a lowercase slug: [a-z0-9][a-z0-9_-]{0,62}');
