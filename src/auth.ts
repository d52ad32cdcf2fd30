import { createHash, timingSafeEqual } from 'node:crypto';

export type Scope = 'admin' | 'inference';

export interface Principal {
  scope: Scope;
  /** A short, non-secret id for logs: the first hex digits of the key's hash. */
  keyId: string;
}

/**
 * API keys, held only as SHA-256 hashes. A presented key is hashed and compared against every stored
 * hash with timingSafeEqual, so neither the match position nor the key leaks through timing.
 */
export class KeyStore {
  private readonly entries: Array<{ hash: Buffer; scope: Scope }> = [];

  constructor(keys: { admin: string[]; inference: string[] }) {
    for (const k of keys.admin) this.entries.push({ hash: hashKey(k), scope: 'admin' });
    for (const k of keys.inference) this.entries.push({ hash: hashKey(k), scope: 'inference' });
  }

  authenticate(presented: string): Principal | null {
    const h = hashKey(presented);
    let found: Principal | null = null;
    for (const e of this.entries) {
      if (timingSafeEqual(h, e.hash) && !found) found = { scope: e.scope, keyId: h.toString('hex').slice(0, 12) };
    }
    return found;
  }
}

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** `Authorization: Bearer <key>` → key; anything else → null. */
export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : null;
}
