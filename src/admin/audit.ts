import type { Principal } from '../auth/authenticator.js';

/** The slice of a pino logger the admin services use; the request's logger, so lines carry its reqId. */
export interface AuditLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Who is acting and where to log it: every admin service call gets one. */
export interface AdminContext {
  principal: Principal;
  log: AuditLog;
}

export interface AuditEvent {
  /** `<resource>.<verb>`, e.g. `key.revoke`. */
  action: string;
  tenant: string | null;
  /** The id acted on (key id, carry-on id, `id@version`); never a secret. */
  target: string | null;
}

/** One info line per change: `{audit: {action, actor, tenant, target}}`. Keys appear only as their ids. */
export function audit(ctx: AdminContext, e: AuditEvent): void {
  ctx.log.info({ audit: { action: e.action, actor: ctx.principal.keyId, tenant: e.tenant, target: e.target } }, `admin ${e.action}`);
}
