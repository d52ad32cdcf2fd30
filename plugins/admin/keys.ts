import type { FastifyPluginAsync } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import { CreateKeyBody, KeyParams, ListKeysQuery, PatchKeyBody } from '../../src/admin/schemas.js';
import { parseAdmin } from '../../src/admin/validate.js';
import type { AdminPluginOptions } from './index.js';

const keyRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin }) => {
  app.post('/keys', async (request, reply) => {
    const body = parseAdmin(CreateKeyBody, request.body);
    // The one response that carries a key: keep it out of every cache on the way.
    return reply.code(201).header('cache-control', 'no-store').send(await admin.keys.create(adminContext(request), body));
  });
  app.get('/keys', async (request) => {
    const { tenant } = parseAdmin(ListKeysQuery, request.query);
    return admin.keys.list(adminContext(request), tenant);
  });
  app.patch('/keys/:id', async (request) => {
    const { id } = parseAdmin(KeyParams, request.params);
    return admin.keys.update(adminContext(request), id, parseAdmin(PatchKeyBody, request.body));
  });
  app.delete('/keys/:id', async (request) => {
    const { id } = parseAdmin(KeyParams, request.params);
    return admin.keys.revoke(adminContext(request), id);
  });
};

export default keyRoutes;
