import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fsyncDir } from '../core/fs-atomic.js';
import { ObjectStoreError, type ByteSpan, type ObjectBody, type ObjectInfo, type ObjectStore } from './object-store.js';

/**
 * An object store that is a folder: `file:///mnt/shared/carryon` (a mount every replica shares,
 * NFS or similar), and the stand-in for a bucket in tests. Objects appear by rename, so a reader
 * never sees half of one; the ETag is derived from size and mtime, as a web server's would be.
 */
export class LocalObjectStore implements ObjectStore {
  readonly description: string;

  constructor(private readonly root: string) {
    this.description = `file://${root}`;
  }

  async putFile(key: string, file: string): Promise<void> {
    const dest = this.pathOf(key);
    await this.io(`upload ${key}`, async () => {
      await fs.promises.mkdir(path.dirname(dest), { recursive: true });
      const tmp = `${dest}.${randomBytes(6).toString('hex')}.part`;
      try {
        await pipeline(fs.createReadStream(file), fs.createWriteStream(tmp, { flush: true }));
        await fs.promises.rename(tmp, dest);
      } finally {
        await fs.promises.rm(tmp, { force: true });
      }
      fsyncDir(path.dirname(dest));
    });
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const st = await this.io(`look up ${key}`, () => statOrNull(this.pathOf(key)));
    return st ? { bytes: st.size, etag: etagOf(st) } : null;
  }

  async get(key: string, span?: ByteSpan): Promise<ObjectBody | null> {
    const file = this.pathOf(key);
    const st = await this.io(`download ${key}`, () => statOrNull(file));
    if (!st) return null;
    return { body: fs.createReadStream(file, span ? { start: span.start, end: span.end } : {}), bytes: st.size, etag: etagOf(st) };
  }

  async delete(key: string): Promise<void> {
    await this.io(`delete ${key}`, () => fs.promises.rm(this.pathOf(key), { force: true }));
  }

  /** Keys are our own (digests, shard names), but a key must never reach outside the root all the same. */
  private pathOf(key: string): string {
    const p = path.resolve(this.root, key);
    const rel = path.relative(this.root, p);
    if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) throw new Error(`object key outside the store: ${key}`);
    return p;
  }

  private async io<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw new ObjectStoreError(`object store ${this.description}: could not ${what}: ${(err as Error).message}`, true, { cause: err });
    }
  }
}

async function statOrNull(file: string): Promise<fs.Stats | null> {
  try {
    return await fs.promises.stat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function etagOf(st: fs.Stats): string {
  return `"${createHash('sha1').update(`${st.size}-${st.mtimeMs}`).digest('hex').slice(0, 16)}"`;
}
