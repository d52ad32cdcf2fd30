import type { FastifyRequest } from 'fastify';
import { requireAdmin } from './access.js';
import type { AdminContext } from './audit.js';

/** The acting admin and the request's logger, for a service call. */
export function adminContext(request: FastifyRequest): AdminContext {
  return { principal: requireAdmin(request.principal), log: request.log };
}
