// The only way the console talks to the gateway: documented routes, relative URLs (so a path
// prefix in front of the gateway just works), the key as a header and nowhere else.

const KEY = 'carryon-console-key';

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set(key) {
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

/** An error answer of the gateway, in its envelope: `param` names the field it is about. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error ? body.error : {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.param = e.param || null;
  }
}

/** `path` is relative to the gateway's root, e.g. `admin/tenants`; the page lives at `console/`. */
export function url(path) {
  return `../${path}`;
}

function headers(extra, key) {
  const h = { authorization: `Bearer ${key || session.key}` };
  return Object.assign(h, extra || {});
}

/**
 * A call to the gateway. `json` sends a JSON body, `form` a FormData (multipart), `tenant` the
 * x-carryon-tenant header (a global admin acting for a tenant on /v1). Answers the parsed JSON,
 * or the Response itself with `raw`.
 */
export async function call(method, path, opts = {}) {
  const extra = {};
  let body;
  if (opts.json !== undefined) {
    extra['content-type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.form) {
    body = opts.form;
  }
  if (opts.tenant) extra['x-carryon-tenant'] = opts.tenant;
  const res = await fetch(url(path), {
    method,
    headers: headers(extra, opts.key),
    body,
    cache: 'no-store',
    credentials: 'omit',
    signal: opts.signal,
  });
  if (!res.ok) {
    let parsed = null;
    try {
      parsed = await res.json();
    } catch {
      // Not JSON (a proxy's page): the status says enough.
    }
    throw new ApiError(res.status, parsed);
  }
  if (opts.raw) return res;
  return res.json();
}

export const get = (path, opts) => call('GET', path, opts);

/** `?tenant=` for routes that take one, empty for none. */
export function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') s.set(k, String(v));
  const t = s.toString();
  return t ? `?${t}` : '';
}

/**
 * Streams a completion (`POST v1/completions`, `stream: true`), calling `onText` with each piece.
 * Answers the whole text.
 */
export async function streamCompletion(body, opts, onText) {
  const res = await call('POST', 'v1/completions', { ...opts, json: { ...body, stream: true }, raw: true });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let text = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]') return text;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk);
      const piece = chunk.choices && chunk.choices[0] ? chunk.choices[0].text || '' : '';
      text += piece;
      onText(text);
    }
  }
  return text;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtTime(iso) {
  if (!iso) return '–';
  return new Date(iso).toLocaleString();
}
