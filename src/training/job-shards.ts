import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fsyncDir } from '../core/fs-atomic.js';
import type { ObjectStore } from '../objects/object-store.js';

/**
 * The harvest shards a job trains on, as files on this node. A job names its shards by their path
 * under the data folder (harvest/<tenant>/<id>.safetensors); with an object store that is also the
 * shard's key (shardObjectKey lays the bucket out like the folder). A shard still on this node's
 * disk is read there; one that is not (uploaded and removed, or harvested by another node) is
 * downloaded into the job's folder: temp file, fsync, size checked against the object's, rename.
 * The trainer checks each shard's data hash when it reads it.
 */
export async function shardsOnDisk(paths: string[], dataDir: string, jobFolder: string, objects: ObjectStore | null): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    const local = path.resolve(dataDir, p);
    if (fs.existsSync(local)) {
      out.push(local);
      continue;
    }
    const key = path.relative(dataDir, local).split(path.sep).join('/');
    if (!objects || !/^harvest\/[^/]+\/[^/]+\.safetensors$/.test(key)) {
      throw new Error(`the harvest shard ${key} is not on this node${objects ? '' : ', and no object store is configured (CARRYON_OBJECT_STORE_URL) to fetch it from'}`);
    }
    out.push(await download(objects, key, path.join(shardCache(jobFolder), path.basename(key))));
  }
  return out;
}

/** Where a job's downloaded shards go; removed when the job ends (the bucket keeps the copy). */
export function shardCache(jobFolder: string): string {
  return path.join(jobFolder, 'shards');
}

async function download(objects: ObjectStore, key: string, dest: string): Promise<string> {
  if (fs.existsSync(dest)) return dest; // an earlier attempt of this job on this node fetched it
  const object = await objects.get(key);
  if (!object) throw new Error(`the harvest shard ${key} is neither on this node nor in ${objects.description}`);
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.${randomBytes(6).toString('hex')}.part`;
  try {
    await pipeline(object.body, fs.createWriteStream(tmp, { flush: true }));
    const got = fs.statSync(tmp).size;
    if (got !== object.bytes) throw new Error(`the harvest shard ${key} arrived with ${got} of its ${object.bytes} bytes`);
    fs.renameSync(tmp, dest);
    fsyncDir(path.dirname(dest));
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return dest;
}
