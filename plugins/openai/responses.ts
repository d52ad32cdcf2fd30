import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/serving/model-routing.js';
import type { Gateway } from '../../src/serving/gateway.js';
import { rateLimitHook } from '../../src/http/rate-limit-hook.js';
import { clientGone, harvestOptOut, respond } from '../../src/http/respond.js';
import { ResponsesRequest } from '../../src/openai/responses-schemas.js';
import { serveResponses } from '../../src/openai/serve-responses.js';
import { parseRequest } from '../../src/core/parse-request.js';

/** POST /v1/responses: OpenAI's Responses API, text only and stateless (docs/api.md). */
const responseRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/responses', { preHandler: rateLimitHook(gateway) }, async (request, reply) => {
    const body = parseRequest(ResponsesRequest, request.body);
    const ac = clientGone(request, reply);
    await respond(reply, await serveResponses(gateway, body, callerOf(request.principal), ac.signal, harvestOptOut(request.headers)));
  });
};

export default responseRoutes;
