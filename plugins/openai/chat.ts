import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/serving/model-routing.js';
import type { Gateway } from '../../src/serving/gateway.js';
import { rateLimitHook } from '../../src/http/rate-limit-hook.js';
import { clientGone, harvestOptOut, respond } from '../../src/http/respond.js';
import { ChatCompletionRequest } from '../../src/openai/schemas.js';
import { serveChat } from '../../src/openai/serve-chat.js';
import { parseRequest } from '../../src/core/parse-request.js';

const chatRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/chat/completions', { preHandler: rateLimitHook(gateway) }, async (request, reply) => {
    const body = parseRequest(ChatCompletionRequest, request.body);
    const ac = clientGone(request, reply);
    const caller = callerOf(request.principal);
    await respond(reply, await serveChat(gateway, body, caller, ac.signal, harvestOptOut(request.headers)));
  });
};

export default chatRoutes;
