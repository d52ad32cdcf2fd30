import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fsyncDir } from '../core/fs-atomic.js';
import type { ObjectStore } from './object-store.js';

/** Why a download was refused: the object is not there, or its bytes are not the ones recorded. */
export class ObjectMismatchError extends Error {
  constructor(
    message: string,
    readonly reason: 'missing' | 'corrupt',
  ) {
    super(message);
    this.name = 'ObjectMismatchError';
  }
}

/**
 * Fetches `key` into `dest` only if its bytes hash to `sha256`: written to a temp file beside
 * `dest`, fsynced, checked, then renamed into place (and the folder fsynced), so `dest` is either
 * absent or complete and verified, also after a crash. Concurrent fetches of one file each write
 * their own temp file; the last rename wins with identical bytes.
 */
export async function downloadVerified(store: ObjectStore, key: string, dest: string, sha256: string): Promise<void> {
  const object = await store.get(key);
  if (!object) throw new ObjectMismatchError(`${store.description} has no object '${key}'`, 'missing');
  const dir = path.dirname(dest);
  await fs.promises.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(dest)}.${randomBytes(6).toString('hex')}.part`);
  const hash = createHash('sha256');
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(object.body, hashing, fs.createWriteStream(tmp, { flush: true }));
    const actual = hash.digest('hex');
    if (actual !== sha256) {
      throw new ObjectMismatchError(`${store.description} object '${key}' is corrupt: its sha256 is ${actual}, not the recorded ${sha256}`, 'corrupt');
    }
    await fs.promises.rename(tmp, dest);
    fsyncDir(dir);
  } finally {
    await fs.promises.rm(tmp, { force: true });
  }
}
