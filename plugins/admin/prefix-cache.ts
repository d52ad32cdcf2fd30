import type { FastifyPluginAsync } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import { PrefixCacheQuery } from '../../src/admin/schemas.js';
import { parseAdmin } from '../../src/admin/validate.js';
import type { AdminPluginOptions } from './index.js';

const prefixCacheRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin }) => {
  app.delete('/prefix-cache', async (request) => {
    const { tenant } = parseAdmin(PrefixCacheQuery, request.query);
    return admin.prefixCache.clear(adminContext(request), tenant);
  });
};

export default prefixCacheRoutes;
