import { Readable } from 'node:stream';
import { request } from 'undici';
import type { OpenAIErrorBody } from '../../src/core/errors.js';
import type { TestGateway } from './gateway.js';

export interface ApiResponse<T> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** The body as the route's response type (src/admin/protocol.ts), or an error envelope. */
  json: T & Partial<OpenAIErrorBody>;
  text: string;
}

/** A JSON request to the gateway as `key` (no Authorization header when key is null). */
export async function api<T = Record<string, unknown>>(
  gw: TestGateway,
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
  path: string,
  key: string | null,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<ApiResponse<T>> {
  const res = await request(`${gw.url}${path}`, {
    method,
    headers: {
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return readResponse<T>(res.statusCode, res.headers, await res.body.text());
}

/** Collects the gateway's JSON log lines. */
export class LogCapture {
  readonly lines: string[] = [];
  write(line: string): void {
    this.lines.push(line);
  }
  records(): Array<Record<string, unknown>> {
    return this.lines.flatMap((l) => l.split('\n').filter(Boolean)).map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  audits(): Array<{ action: string; actor: string; tenant: string | null; target: string | null }> {
    return this.records().flatMap((r) => (r.audit ? [r.audit as { action: string; actor: string; tenant: string | null; target: string | null }] : []));
  }
}

export interface FormPart {
  name: string;
  /** Set for a file part. */
  filename?: string;
  data: Uint8Array | string;
}

/** A multipart/form-data body, built by hand so tests control every byte (and can stream it). */
export function multipartBody(parts: FormPart[]): { contentType: string; body: Buffer } {
  const boundary = `----carryon-test-${Math.random().toString(16).slice(2)}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = `form-data; name="${p.name}"${p.filename ? `; filename="${p.filename}"` : ''}`;
    const type = p.filename ? 'application/octet-stream' : 'text/plain; charset=utf-8';
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\nContent-Type: ${type}\r\n\r\n`));
    chunks.push(Buffer.from(p.data));
    chunks.push(Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { contentType: `multipart/form-data; boundary=${boundary}`, body: Buffer.concat(chunks) };
}

/**
 * POSTs a carry-on upload. `chunked` sends the body without a Content-Length, in 64 KiB pieces,
 * so the server can only find an oversized graph while streaming it.
 */
export async function uploadCarryOn<T = Record<string, unknown>>(
  gw: TestGateway,
  tenant: string,
  key: string,
  parts: FormPart[],
  opts: { chunked?: boolean } = {},
): Promise<ApiResponse<T>> {
  return uploadCarryOnTo<T>(gw, `/admin/tenants/${tenant}/carry-ons`, key, parts, opts);
}

/** The same upload to any route, e.g. `POST /admin/carry-ons` (tenant in the form or the manifest). */
export async function uploadCarryOnTo<T = Record<string, unknown>>(
  gw: TestGateway,
  route: string,
  key: string,
  parts: FormPart[],
  opts: { chunked?: boolean } = {},
): Promise<ApiResponse<T>> {
  const { contentType, body } = multipartBody(parts);
  const pieces = async function* () {
    for (let i = 0; i < body.length; i += 65536) yield body.subarray(i, i + 65536);
  };
  const res = await request(`${gw.url}${route}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': contentType },
    body: opts.chunked ? Readable.from(pieces()) : body,
  });
  return readResponse<T>(res.statusCode, res.headers, await res.body.text());
}

function readResponse<T>(status: number, headers: ApiResponse<T>['headers'], text: string): ApiResponse<T> {
  let json = {} as T & Partial<OpenAIErrorBody>;
  try {
    json = JSON.parse(text) as T & Partial<OpenAIErrorBody>;
  } catch {
    // not JSON: the test reads `text`
  }
  return { status, headers, json, text };
}
