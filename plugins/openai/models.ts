import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/serving/model-routing.js';
import type { Gateway } from '../../src/serving/gateway.js';
import { ModelParams } from '../../src/openai/schemas.js';
import { listModels, retrieveModel } from '../../src/openai/serve-models.js';
import { parseRequest } from '../../src/core/parse-request.js';

const modelRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.get('/v1/models', async (request) => listModels(gateway, callerOf(request.principal)));
  app.get('/v1/models/:model', async (request) => {
    const { model } = parseRequest(ModelParams, request.params);
    return retrieveModel(gateway, model, callerOf(request.principal));
  });
};

export default modelRoutes;
