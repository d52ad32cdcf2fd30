import type { FastifyPluginAsync } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import { HarvestShardParams, ListHarvestShardsQuery } from '../../src/admin/schemas.js';
import { parseAdmin } from '../../src/admin/validate.js';
import type { AdminPluginOptions } from './index.js';

const header = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

const harvestRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin }) => {
  app.get('/harvest/shards', async (request) => {
    const { tenant } = parseAdmin(ListHarvestShardsQuery, request.query);
    return admin.harvest.list(adminContext(request), tenant);
  });
  app.get('/harvest/shards/:id', async (request, reply) => {
    const { id } = parseAdmin(HarvestShardParams, request.params);
    const dl = await admin.harvest.download(adminContext(request), id, {
      range: header(request.headers.range),
      ifRange: header(request.headers['if-range']),
      ifNoneMatch: header(request.headers['if-none-match']),
    });
    return reply.code(dl.status).headers(dl.headers).send(dl.body ?? undefined);
  });
  app.delete('/harvest/shards/:id', async (request) => {
    const { id } = parseAdmin(HarvestShardParams, request.params);
    return admin.harvest.delete(adminContext(request), id);
  });
  app.get('/harvest/stats', async (request) => admin.harvest.stats(adminContext(request)));
};

export default harvestRoutes;
