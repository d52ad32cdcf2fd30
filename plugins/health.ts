import type { FastifyPluginAsync } from 'fastify';
import type { Gateway } from '../src/serving/gateway.js';

/**
 * Probes: `live` is cheap and always 200 while the process serves; `ready` is 200 only with every
 * base model loaded, reports each base (`models`), so an operator sees which one is loading or
 * failed, and names what is degraded (a full disk, an unreachable metadata database).
 */
const healthRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.get('/health/live', { config: { public: true } }, async () => ({ status: 'ok' }));
  app.get('/health/ready', { config: { public: true } }, async (_request, reply) => {
    const ready = gateway.status === 'ready';
    // A full disk keeps serving (inference needs no disk) but says so: uploads answer 507 meanwhile.
    const diskFull = gateway.disk?.full ?? null;
    // So does an unreachable PostgreSQL: recently checked keys keep inference going (the grace
    // window), which a 503 here would end by taking every replica out of its Service at once.
    const database = gateway.database ? await gateway.database.state() : null;
    return reply.code(ready ? 200 : 503).send({
      status: gateway.status,
      ...(gateway.failure ? { error: gateway.failure } : {}),
      ...(diskFull ? { disk_full: diskFull } : {}),
      models: gateway.bases.map((b) => ({ name: b.name, status: b.status, ...(b.failure ? { error: b.failure } : {}) })),
      ...(database && !database.reachable ? { database_unavailable: { error: database.error, since: database.since } } : {}),
      ...(database ? { change_feed: database.changeFeed ? 'listening' : 'reconnecting' } : {}),
    });
  });
};

export default healthRoutes;
