import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { bearerToken, TENANT_HEADER, type Authenticator, type Principal } from '../auth/authenticator.js';
import { ApiError, databaseUnavailableError, diskFullError, isDatabaseUnavailable, isDiskFull } from '../core/errors.js';
import type { Gateway } from '../serving/gateway.js';
import { receiveDone, watchReceive } from './receive-timeout.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Reachable without an API key (health probes only). */
    public?: boolean;
  }
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export interface HttpServerOptions {
  gateway: Gateway;
  auth: Authenticator;
  allowAnonymous: boolean;
  bodyLimit: number;
  logLevel: string;
  /** CARRYON_RECEIVE_TIMEOUT_MS: the most a whole request (headers and body) may take to arrive. */
  receiveTimeoutMs: number;
  /** CARRYON_RECEIVE_IDLE_TIMEOUT_MS: the longest silence while a request arrives. */
  receiveIdleTimeoutMs: number;
  /** Told when a request failed for lack of disk space (the reserve is given back). */
  onDiskFull?: (what: string) => void;
  /** Where log lines (JSON) go; default stdout. Tests capture them here. */
  logStream?: { write(line: string): void };
}

/**
 * The HTTP server every surface shares: limits, request ids, authentication and the one mapping
 * from errors to OpenAI's envelope. The routes are registered on it by `plugins/index.ts`.
 */
export function createHttpServer(opts: HttpServerOptions): FastifyInstance {
  const app = Fastify({
    // Errors Node's HTTP parser finds before Fastify sees a request (oversized headers, a bad
    // request line, a receive timeout) get the same envelope as every other error.
    // Errors the router finds before any hook runs (a bad URL, an over-long path segment).
    frameworkErrors: (err, _request, reply: FastifyReply) => {
      const apiErr = toApiError(err);
      void reply.code(apiErr.status).send(apiErr.toBody());
    },
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      const apiErr = clientError(err);
      if (!socket.writable) return void socket.destroy(err);
      const body = JSON.stringify(apiErr.toBody());
      socket.end(
        `HTTP/1.1 ${apiErr.status} ${STATUS_CODES[apiErr.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    },
    bodyLimit: opts.bodyLimit,
    requestTimeout: opts.receiveTimeoutMs,
    connectionTimeout: 0,
    keepAliveTimeout: 65_000,
    return503OnClosing: true,
    logger: {
      level: opts.logLevel,
      // Never log credentials, whatever a serializer change might add later.
      redact: { paths: ['req.headers.authorization', 'req.headers["x-api-key"]'], censor: '[redacted]' },
      ...(opts.logStream ? { stream: opts.logStream } : {}),
    },
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,128}$/.test(given) ? given : randomUUID();
    },
  });

  // JSON only: a text/plain body should be a 415, not a string handed to the JSON schemas.
  app.removeContentTypeParser('text/plain');
  // Slow headers are cut early; a body may take up to receiveTimeoutMs, but never idles longer than receiveIdleTimeoutMs.
  app.server.headersTimeout = Math.min(opts.receiveTimeoutMs, Math.max(opts.receiveIdleTimeoutMs, 1000));
  app.addHook('onRequest', async (request, reply) => {
    watchReceive(request.raw, reply.raw, opts.receiveIdleTimeoutMs);
  });
  // JSON bodies are read before handlers run; multipart uploads end the watch themselves once read.
  app.addHook('preHandler', async (request) => {
    if (!/^multipart\//i.test(request.headers['content-type'] ?? '')) receiveDone(request.raw);
  });
  app.addHook('onResponse', async (request) => {
    receiveDone(request.raw);
  });
  app.decorateRequest('principal', null);
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id);
    // Draining: tell keep-alive clients to reconnect (to another replica) instead of reusing this socket.
    if (opts.gateway.status === 'stopping') reply.header('connection', 'close');
  });
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config?.public) return;
    const token = bearerToken(request.headers.authorization);
    if (token) {
      const principal = await opts.auth.authenticate(token);
      if (!principal) throw new ApiError('invalid_api_key', 'Incorrect API key provided.');
      const actFor = request.headers[TENANT_HEADER];
      request.principal = typeof actFor === 'string' && actFor !== '' ? await opts.auth.actAs(principal, actFor) : principal;
      return;
    }
    if (!opts.allowAnonymous) {
      throw new ApiError('invalid_api_key', "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.");
    }
  });

  app.setErrorHandler((err: FastifyError | ApiError, request, reply) => {
    const apiErr = toApiError(err);
    if (apiErr.code === 'insufficient_storage') opts.onDiskFull?.(`${request.method} ${request.routeOptions.url ?? request.url}`);
    if (apiErr.status >= 500) request.log.error({ err }, 'request failed');
    else request.log.info({ code: apiErr.code, param: apiErr.param }, 'request rejected');
    void reply.code(apiErr.status).headers(apiErr.headers).send(apiErr.toBody());
  });
  app.setNotFoundHandler((request, reply) => {
    const e = new ApiError('not_found', `Unknown request URL: ${request.method} ${request.url.split('?')[0]}.`);
    void reply.code(e.status).send(e.toBody());
  });

  return app;
}

/** What Node's HTTP parser refused, as an ApiError. */
function clientError(err: NodeJS.ErrnoException): ApiError {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new ApiError('headers_too_large', 'The request headers (or the URL) are larger than this server accepts.');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new ApiError('request_timeout', 'The request was not received in time.');
    default:
      return new ApiError('malformed_request', 'The request is not valid HTTP.');
  }
}

/** Fastify's own errors (bad JSON, body too large, wrong content type) in OpenAI's envelope. */
function toApiError(err: FastifyError | ApiError): ApiError {
  if (err instanceof ApiError) return err;
  if (isDiskFull(err)) {
    return diskFullError();
  }
  if (isDatabaseUnavailable(err)) return databaseUnavailableError();
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError('invalid_json', `We could not parse the JSON body of your request: ${err.message}`);
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('request_too_large', 'The request body is larger than this server accepts.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('unsupported_media_type', "Send the request body as JSON with 'Content-Type: application/json'.");
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('invalid_json', 'The Content-Length header does not match the body.');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new ApiError('uri_too_long', 'A part of the request URL is longer than this server accepts.');
    case 'FST_ERR_BAD_URL':
      return new ApiError('malformed_request', 'The request URL is not valid.');
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new ApiError('unsupported_media_type', "Send the request body as 'multipart/form-data'.");
  }
  // @fastify/multipart's own limits (file size, part counts) and anything else that says 413.
  if (err.statusCode === 413) return new ApiError('request_too_large', `The request is larger than this server accepts: ${err.message}`);
  if (err.statusCode === 400 && err instanceof SyntaxError) {
    return new ApiError('invalid_json', `We could not parse the JSON body of your request: ${err.message}`);
  }
  if (err.statusCode && err.statusCode < 500) return new ApiError('invalid_value', err.message);
  return new ApiError('internal_error', 'The server had an error while processing your request.');
}
