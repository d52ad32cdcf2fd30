import type { FastifyPluginAsync } from 'fastify';
import type { Gateway } from '../../src/gateway.js';
import { clientGone } from '../../src/http/respond.js';
import { EmbeddingRequest } from '../../src/openai/protocol.js';
import { serveEmbeddings } from '../../src/openai/serve-embeddings.js';
import { parseRequest } from '../../src/openai/validate.js';

const embeddingRoutes: FastifyPluginAsync<{ gateway: Gateway }> = async (app, { gateway }) => {
  app.post('/v1/embeddings', async (request, reply) => {
    const body = parseRequest(EmbeddingRequest, request.body);
    const ac = clientGone(request, reply);
    return serveEmbeddings(gateway, body, ac.signal);
  });
};

export default embeddingRoutes;
