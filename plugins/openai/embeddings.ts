import type { FastifyPluginAsync } from 'fastify';
import { callerOf } from '../../src/serving/model-routing.js';
import type { Gateway } from '../../src/serving/gateway.js';
import { rateLimitHook } from '../../src/http/rate-limit-hook.js';
import { clientGone } from '../../src/http/respond.js';
import { EmbeddingRequest } from '../../src/openai/schemas.js';
import { serveEmbeddings } from '../../src/openai/serve-embeddings.js';
import { parseRequest } from '../../src/core/parse-request.js';

const embeddingRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/embeddings', { preHandler: rateLimitHook(gateway) }, async (request, reply) => {
    const body = parseRequest(EmbeddingRequest, request.body);
    const ac = clientGone(request, reply);
    return serveEmbeddings(gateway, body, callerOf(request.principal), ac.signal);
  });
};

export default embeddingRoutes;
