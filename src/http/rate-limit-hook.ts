import type { FastifyReply, FastifyRequest } from 'fastify';
import { callerOf } from '../serving/model-routing.js';
import { ApiError } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';

/**
 * preHandler for inference routes: the caller key's request/token budget, before any expensive work.
 * Headers go on the raw response so streamed (hijacked) replies carry them too.
 */
export function rateLimitHook(gateway: Gateway) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const limiter = gateway.rateLimiter;
    if (!limiter?.enabled) return;
    const keyId = callerOf(request.principal).keyId;
    await limiter.warm(keyId);
    const decision = limiter.admit(keyId);
    for (const [k, v] of Object.entries(decision.headers)) reply.raw.setHeader(k, v);
    if (!decision.allowed) {
      throw new ApiError('rate_limit_exceeded', `Rate limit reached for ${decision.limitedBy} per minute on this key; retry after ${decision.retryAfterSeconds}s.`, {
        headers: { 'retry-after': String(decision.retryAfterSeconds) },
      });
    }
  };
}
