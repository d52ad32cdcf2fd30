import type { FastifyPluginAsync } from 'fastify';
import type { AdminServices } from '../src/admin/services.js';
import type { Metrics } from '../src/core/metrics.js';
import type { Gateway } from '../src/serving/gateway.js';
import adminRoutes from './admin/index.js';
import consoleRoutes from './console.js';
import healthRoutes from './health.js';
import metricsRoutes from './metrics.js';
import chatRoutes from './openai/chat.js';
import completionRoutes from './openai/completions.js';
import embeddingRoutes from './openai/embeddings.js';
import modelRoutes from './openai/models.js';
import responseRoutes from './openai/responses.js';

export interface RouteDeps {
  gateway: Gateway;
  /** The admin API under /admin. */
  admin: { services: AdminServices; maxCarryOnBytes: number };
  /** Prometheus metrics, served at /metrics. */
  metrics: { registry: Metrics; requireAdmin: boolean };
}

/** Every HTTP surface of the gateway, composed in one place: each is a thin plugin over `src/`. */
const routes: FastifyPluginAsync<RouteDeps> = async (app, opts) => {
  await app.register(healthRoutes, { gateway: opts.gateway });
  await app.register(metricsRoutes, { metrics: opts.metrics.registry, requireAdmin: opts.metrics.requireAdmin });
  await app.register(modelRoutes, { gateway: opts.gateway });
  await app.register(chatRoutes, { gateway: opts.gateway });
  await app.register(completionRoutes, { gateway: opts.gateway });
  await app.register(embeddingRoutes, { gateway: opts.gateway });
  await app.register(responseRoutes, { gateway: opts.gateway });
  await app.register(consoleRoutes);
  await app.register(adminRoutes, { prefix: '/admin', admin: opts.admin.services, maxCarryOnBytes: opts.admin.maxCarryOnBytes });
};

export default routes;
