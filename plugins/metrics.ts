import type { FastifyPluginAsync } from 'fastify';
import { ApiError } from '../src/core/errors.js';
import type { Metrics } from '../src/core/metrics.js';

/** GET /metrics in Prometheus text format; admin keys only unless the operator made it public. */
const metricsRoutes: FastifyPluginAsync<{ metrics: Metrics; requireAdmin: boolean }> = async (app, { metrics, requireAdmin }) => {
  app.get('/metrics', { config: { public: !requireAdmin } }, async (request, reply) => {
    if (requireAdmin && request.principal?.scope !== 'admin') {
      throw new ApiError('permission_denied', 'Reading metrics needs an admin-scope key.');
    }
    return reply.type(metrics.contentType).send(await metrics.render());
  });
};

export default metricsRoutes;
