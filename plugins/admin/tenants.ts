import type { FastifyPluginAsync } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import { CreateTenantBody, TenantParams } from '../../src/admin/schemas.js';
import { parseAdmin } from '../../src/admin/validate.js';
import type { AdminPluginOptions } from './index.js';

const tenantRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin }) => {
  app.post('/tenants', async (request, reply) => {
    const body = parseAdmin(CreateTenantBody, request.body);
    return reply.code(201).send(await admin.tenants.create(adminContext(request), body));
  });
  app.get('/tenants', async (request) => admin.tenants.list(adminContext(request)));
  app.delete('/tenants/:tenant', async (request) => {
    const { tenant } = parseAdmin(TenantParams, request.params);
    return admin.tenants.delete(adminContext(request), tenant);
  });
};

export default tenantRoutes;
