import type { FastifyPluginAsync } from 'fastify';
import { ApiError } from '../src/core/errors.js';
import type { Metrics } from '../src/core/metrics.js';
import { metricsSummary } from '../src/admin/metrics-summary.js';

/**
 * GET /metrics in Prometheus text format, for operators: a global admin key (series name every
 * tenant's carry-ons), unless the operator made it public; tenants' keys never read it.
 */
const metricsRoutes: FastifyPluginAsync<{ metrics: Metrics; requireAdmin: boolean }> = async (app, { metrics, requireAdmin }) => {
  app.get('/metrics', { config: { public: !requireAdmin } }, async (request, reply) => {
    const p = request.principal;
    if (requireAdmin && (p?.scope !== 'admin' || p.tenantId !== null)) {
      throw new ApiError('permission_denied', "Reading metrics needs a global admin key (or the key-less CARRYON_METRICS_PORT); a tenant's keys cannot read other tenants' series.");
    }
    return reply.type(metrics.contentType).send(await metrics.render());
  });
  // The same numbers as JSON for the console's overview (docs/admin.md): a global admin key always,
  // since it names every tenant's carry-ons, whether or not /metrics itself is public.
  app.get('/admin/metrics', async (request) => {
    const p = request.principal;
    if (p?.scope !== 'admin' || p.tenantId !== null) {
      throw new ApiError('permission_denied', "Reading metrics needs a global admin key; a tenant's keys cannot read other tenants' series.");
    }
    return metricsSummary(metrics);
  });
};

export default metricsRoutes;
