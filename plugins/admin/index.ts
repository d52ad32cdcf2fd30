import type { FastifyPluginAsync } from 'fastify';
import { requireAdmin } from '../../src/admin/access.js';
import type { AdminServices } from '../../src/admin/services.js';
import carryOnRoutes from './carry-ons.js';
import harvestRoutes from './harvest.js';
import keyRoutes from './keys.js';
import prefixCacheRoutes from './prefix-cache.js';
import tenantRoutes from './tenants.js';
import trainingRoutes from './training.js';

export interface AdminPluginOptions {
  admin: AdminServices;
  /** CARRYON_MAX_CARRYON_BYTES: the multipart parser's own cut-off for the graph part. */
  maxCarryOnBytes: number;
}

/** The admin API, registered under /admin: admin-scope keys only, checked before any body is read. */
const adminRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, opts) => {
  app.addHook('onRequest', async (request) => {
    requireAdmin(request.principal);
  });
  // Not `opts` itself: it carries this plugin's `prefix`, which the children would apply again.
  const deps: AdminPluginOptions = { admin: opts.admin, maxCarryOnBytes: opts.maxCarryOnBytes };
  await app.register(tenantRoutes, deps);
  await app.register(keyRoutes, deps);
  await app.register(carryOnRoutes, deps);
  await app.register(harvestRoutes, deps);
  await app.register(trainingRoutes, deps);
  await app.register(prefixCacheRoutes, deps);
};

export default adminRoutes;
