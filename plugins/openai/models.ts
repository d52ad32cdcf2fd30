import type { FastifyPluginAsync } from 'fastify';
import type { Gateway } from '../../src/gateway.js';
import { ModelParams } from '../../src/openai/protocol.js';
import { parseRequest } from '../../src/openai/validate.js';

const modelRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  const card = () => ({
    id: gateway.modelName,
    object: 'model',
    created: gateway.created,
    owned_by: 'carry-on-gateway',
    root: gateway.modelName,
    parent: null,
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [card()] }));
  app.get('/v1/models/:model', async (request) => {
    const { model } = parseRequest(ModelParams, request.params);
    gateway.resolveModel(model);
    return card();
  });
};

export default modelRoutes;
