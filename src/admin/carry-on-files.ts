import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CARRYON_FILES } from '../carryon/manifest.js';
import { fsyncDir } from '../core/fs-atomic.js';
import type { CarryOnGraphBucket } from '../objects/carry-on-graph-bucket.js';
import type { CarryOnRepository } from '../store/carry-ons.js';

/** Staging folders older than this are leftovers of a crash wherever they came from (an upload cannot take this long). */
const STALE_STAGING_MS = 24 * 60 * 60 * 1000;

/** Names under `carry-ons/` that are not (legacy) tenant folders. Tenant ids cannot start with a dot; `blobs` is reserved. */
const BLOBS = 'blobs';
const STAGING = '.staging';

/** Tells this process's staging folders from those of an earlier process with the same pid (a restarted container). */
const PROCESS_TAG = randomBytes(4).toString('hex');
const HOST = os.hostname().replace(/[^A-Za-z0-9.-]/g, '-');

const BLOB_NAME = /^[0-9a-f]{64}\.onnx$/;

/**
 * The carry-on files under DATA_DIR/carry-ons:
 *
 * - `blobs/<sha256>.onnx`: every version's graph, content-addressed, so identical uploads share
 *   one file. A blob appears by rename from staging inside the store's write transaction that
 *   records the version (after the bytes were fsynced), and is deleted, under the same lock, only
 *   once no live version points at it. The per-version manifest lives in the database.
 * - `.staging/<host>_<pid>_<tag>_<random>/`: uploads in progress, on the same filesystem as the
 *   blobs so installing is one rename. Left-overs of a crashed process are removed at start.
 * - `<tenant>/<id>/<version>/`: version folders of gateways before content addressing; still
 *   served, and removed when their version is deleted.
 *
 * With an object store (CARRYON_OBJECT_STORE_URL) every blob is also an object in the bucket, which
 * is what other replicas fetch from; `blobs/` is then this replica's cache of the bucket.
 */
export class CarryOnFiles {
  readonly root: string;
  readonly blobs: string;
  private readonly staging: string;

  constructor(
    dataDir: string,
    private readonly catalog: Pick<CarryOnRepository, 'dropUnreferencedGraphs'>,
    /** The shared bucket; null: graphs live under DATA_DIR only (one node). */
    private readonly bucket: CarryOnGraphBucket | null = null,
  ) {
    this.root = path.join(dataDir, 'carry-ons');
    this.blobs = path.join(this.root, BLOBS);
    this.staging = path.join(this.root, STAGING);
  }

  blobPath(sha256: string): string {
    return path.join(this.blobs, `${sha256}.onnx`);
  }

  /** A fresh, empty staging folder for one upload; the graph goes to `<dir>/model.onnx`. */
  createStagingDir(): string {
    fs.mkdirSync(this.staging, { recursive: true });
    const dir = path.join(this.staging, `${HOST}_${process.pid}_${PROCESS_TAG}_${randomBytes(6).toString('hex')}`);
    fs.mkdirSync(dir);
    return dir;
  }

  stagedGraphPath(stagingDir: string): string {
    return path.join(stagingDir, CARRYON_FILES.graph);
  }

  /**
   * Uploads the staged graph to the bucket, if there is one: before the write transaction, so the
   * slow part never holds the store's write lock. A bucket that cannot take it is a 503 and nothing
   * is recorded.
   */
  async publishGraph(stagedGraph: string, sha256: string): Promise<void> {
    await this.bucket?.publish(stagedGraph, sha256);
  }

  /**
   * Makes the staged graph (already fsynced) the blob for its sha256 and returns the blob's path:
   * a rename, then an fsync of the blobs folder, so the blob is durable before the caller records
   * a row pointing at it. When the blob exists (identical bytes uploaded before) the staged copy
   * is left for `discardStaging`. It runs inside the store's write transaction, between assigning
   * the version and recording it; with a bucket it first checks that the object `publishGraph`
   * uploaded is still there (another replica may have dropped a shared one meanwhile).
   */
  async installGraph(stagedGraph: string, sha256: string, bytes: number): Promise<string> {
    await this.bucket?.ensurePublished(stagedGraph, sha256, bytes);
    const blob = this.blobPath(sha256);
    fs.mkdirSync(this.blobs, { recursive: true });
    let existing: fs.Stats | null = null;
    try {
      existing = fs.statSync(blob);
    } catch {
      // not there yet
    }
    // Same name, same bytes: a blob only ever appears by renaming a complete, hashed file. A size
    // that differs means the disk lost it since; the fresh copy replaces it.
    if (existing?.isFile() && existing.size === bytes) return blob;
    fs.renameSync(stagedGraph, blob);
    fsyncDir(this.blobs);
    return blob;
  }

  /**
   * Removes the files of deleted versions: a blob (and its object in the bucket) once no live
   * version points at it (checked under the store's write lock), a legacy version folder at once.
   * Never throws: returns what it could not remove.
   */
  async remove(files: string[]): Promise<string[]> {
    const failed: string[] = [];
    const blobs = files.filter((f) => path.dirname(f) === this.blobs && BLOB_NAME.test(path.basename(f)));
    const legacy = files.filter((f) => !blobs.includes(f) && this.isLegacyVersionDir(f));
    try {
      await this.catalog.dropUnreferencedGraphs(blobs, async (blob) => {
        try {
          fs.rmSync(blob, { force: true });
          // The bucket's object too: no live version anywhere points at it. Other replicas' cached
          // copies go at their next start (sweepAtStart).
          await this.bucket?.delete(path.basename(blob, '.onnx'));
        } catch {
          failed.push(blob);
        }
      });
      if (blobs.length > 0) fsyncDir(this.blobs);
    } catch {
      failed.push(...blobs.filter((b) => fs.existsSync(b)));
    }
    for (const dir of legacy) {
      try {
        fs.rmSync(dir, { recursive: true, force: true });
        const parent = path.dirname(dir);
        if (this.isInside(parent) && fs.readdirSync(parent).length === 0) fs.rmdirSync(parent);
      } catch {
        failed.push(dir);
      }
    }
    return failed;
  }

  /** Removes a deleted tenant's legacy folder (`carry-ons/<tenant>/`), if it has one. */
  removeTenant(tenantId: string): void {
    if (tenantId === BLOBS || tenantId.startsWith('.')) return;
    const dir = path.join(this.root, tenantId);
    if (this.isInside(dir)) fs.rmSync(dir, { recursive: true, force: true });
  }

  discardStaging(dir: string): void {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  /**
   * At start: removes what a crashed upload can leave. Staging folders of processes on this host
   * that are gone (or of an earlier process with this pid), and any older than a day; then blobs
   * no live version points at (a crash between installing a blob and committing its row, or a
   * cached copy of a version another replica deleted). Another live process's uploads (a second
   * gateway on the same data folder) are left alone. The bucket is not swept: its objects of
   * uploads in flight on other replicas have no row yet.
   */
  async sweepAtStart(now = Date.now()): Promise<{ staging: number; blobs: number }> {
    return { staging: this.sweepStaging(now), blobs: await this.sweepBlobs() };
  }

  private sweepStaging(now: number): number {
    let removed = 0;
    for (const name of readDir(this.staging)) {
      const p = path.join(this.staging, name);
      try {
        if (!this.isStagingLeftover(name, p, now)) continue;
        fs.rmSync(p, { recursive: true, force: true });
        removed++;
      } catch {
        // raced with another process's sweep or upload: nothing to do
      }
    }
    return removed;
  }

  private isStagingLeftover(name: string, p: string, now: number): boolean {
    if (now - fs.statSync(p).mtimeMs > STALE_STAGING_MS) return true;
    const parts = name.split('_');
    if (parts.length < 4) return false;
    const [tag, pidText] = [parts.at(-2), parts.at(-3)];
    const host = parts.slice(0, -3).join('_');
    const pid = Number(pidText);
    if (host !== HOST || !Number.isInteger(pid)) return false;
    if (pid === process.pid) return tag !== PROCESS_TAG;
    return !processAlive(pid);
  }

  private async sweepBlobs(): Promise<number> {
    const blobs = readDir(this.blobs)
      .filter((name) => BLOB_NAME.test(name))
      .map((name) => path.join(this.blobs, name));
    if (blobs.length === 0) return 0;
    const dropped = await this.catalog.dropUnreferencedGraphs(blobs, (blob) => fs.rmSync(blob, { force: true }));
    if (dropped.length > 0) fsyncDir(this.blobs);
    return dropped.length;
  }

  /** A `<tenant>/<id>/<version>` folder under the root: never the blobs, the staging area or anything outside. */
  private isLegacyVersionDir(p: string): boolean {
    const rel = path.relative(this.root, p);
    if (!this.isInside(p)) return false;
    const parts = rel.split(path.sep);
    return parts.length === 3 && parts[0] !== BLOBS && !parts[0].startsWith('.');
  }

  /** Guards every removal: a path from the database must never point the server outside its carry-on folder. */
  private isInside(p: string): boolean {
    const rel = path.relative(this.root, p);
    return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
  }
}

function readDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, it is just not ours to signal.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
