import type { FastifyPluginAsync } from 'fastify';
import type { Gateway } from '../src/serving/gateway.js';

/**
 * Probes: `live` is cheap and always 200 while the process serves; `ready` is 200 only with every
 * base model loaded, and reports each base (`models`), so an operator sees which one is loading or failed.
 */
const healthRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.get('/health/live', { config: { public: true } }, async () => ({ status: 'ok' }));
  app.get('/health/ready', { config: { public: true } }, async (_request, reply) => {
    const ready = gateway.status === 'ready';
    // A full disk keeps serving (inference needs no disk) but says so: uploads answer 507 meanwhile.
    const diskFull = gateway.disk?.full ?? null;
    return reply.code(ready ? 200 : 503).send({
      status: gateway.status,
      ...(gateway.failure ? { error: gateway.failure } : {}),
      ...(diskFull ? { disk_full: diskFull } : {}),
      models: gateway.bases.map((b) => ({ name: b.name, status: b.status, ...(b.failure ? { error: b.failure } : {}) })),
    });
  });
};

export default healthRoutes;
