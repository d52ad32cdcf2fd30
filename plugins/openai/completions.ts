import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/serving/model-routing.js';
import type { Gateway } from '../../src/serving/gateway.js';
import { rateLimitHook } from '../../src/http/rate-limit-hook.js';
import { clientGone, harvestOptOut, respond } from '../../src/http/respond.js';
import { CompletionRequest } from '../../src/openai/schemas.js';
import { serveCompletion } from '../../src/openai/serve-completions.js';
import { parseRequest } from '../../src/core/parse-request.js';

const completionRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/completions', { preHandler: rateLimitHook(gateway) }, async (request, reply) => {
    const body = parseRequest(CompletionRequest, request.body);
    const ac = clientGone(request, reply);
    const caller = callerOf(request.principal);
    await respond(reply, await serveCompletion(gateway, body, caller, ac.signal, harvestOptOut(request.headers)));
  });
};

export default completionRoutes;
