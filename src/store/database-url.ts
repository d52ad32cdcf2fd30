/** CARRYON_DATABASE_URL: where the metadata lives when not in DATA_DIR/gateway.sqlite. */
export const POSTGRES_URL_PATTERN = /^postgres(?:ql)?:\/\//;

/** The URL as it may appear in logs and errors: its password (if any) replaced by `***`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    // Not parseable, so we cannot tell where a password would be: show only the scheme.
    return `${url.split(':')[0]}://(unparseable URL)`;
  }
}

/** `text` with every occurrence of the URL's password replaced, for messages built by a driver. */
export function withoutPassword(text: string, url: string): string {
  let password: string;
  try {
    password = decodeURIComponent(new URL(url).password);
  } catch {
    return text.replaceAll(url, redactUrl(url));
  }
  let out = text.replaceAll(url, redactUrl(url));
  if (password) out = out.replaceAll(password, '***');
  return out;
}
