import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/carryon/routing.js';
import type { Gateway } from '../../src/gateway.js';
import { rateLimitHook } from '../../src/http/rate-limit-hook.js';
import { clientGone, harvestOptOut, respond } from '../../src/http/respond.js';
import { ChatCompletionRequest } from '../../src/openai/protocol.js';
import { serveChat } from '../../src/openai/serve-chat.js';
import { parseRequest } from '../../src/openai/validate.js';

const chatRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/chat/completions', { preHandler: rateLimitHook(gateway) }, async (request, reply) => {
    const body = parseRequest(ChatCompletionRequest, request.body);
    const ac = clientGone(request, reply);
    const caller = callerOf(request.principal);
    await respond(reply, await serveChat(gateway, body, caller, ac.signal, harvestOptOut(request.headers)));
  });
};

export default chatRoutes;
