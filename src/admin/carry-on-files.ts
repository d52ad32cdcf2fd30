import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CARRYON_FILES, type CarryOnManifest } from '../carryon/manifest.js';
import { fsyncDir } from '../fs-atomic.js';

/** Staging folders older than this are leftovers of a crash (an upload cannot take this long). */
const STALE_STAGING_MS = 24 * 60 * 60 * 1000;

/**
 * The carry-on folders under DATA_DIR/carry-ons: `<tenant>/<id>/<version>/` holding carry-on.onnx
 * and manifest.json, and `.staging/` for uploads in progress (on the same filesystem, so
 * installing a version is one rename).
 */
export class CarryOnFiles {
  readonly root: string;
  private readonly staging: string;

  constructor(dataDir: string) {
    this.root = path.join(dataDir, 'carry-ons');
    this.staging = path.join(this.root, '.staging');
  }

  versionDir(tenantId: string, carryOnId: string, version: number): string {
    return path.join(this.root, tenantId, carryOnId, String(version));
  }

  tenantDir(tenantId: string): string {
    return path.join(this.root, tenantId);
  }

  /** A fresh, empty staging folder for one upload. */
  createStagingDir(): string {
    fs.mkdirSync(this.staging, { recursive: true });
    const dir = path.join(this.staging, `${process.pid}-${randomBytes(6).toString('hex')}`);
    fs.mkdirSync(dir);
    return dir;
  }

  /**
   * Writes the stored manifest beside the staged graph and renames the folder into place.
   * Synchronous on purpose: it runs inside the store's write transaction, between assigning the
   * version and recording it.
   */
  install(stagingDir: string, manifest: CarryOnManifest, tenantId: string): string {
    const manifestPath = path.join(stagingDir, CARRYON_FILES.manifest);
    const fd = fs.openSync(manifestPath, 'w', 0o644);
    try {
      fs.writeSync(fd, `${JSON.stringify(manifest, null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fsyncDir(stagingDir);
    const target = this.versionDir(tenantId, manifest.id, manifest.version);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    // Only a crash between a rename and its commit can leave a folder here; no row points at it.
    fs.rmSync(target, { recursive: true, force: true });
    fs.renameSync(stagingDir, target);
    fsyncDir(path.dirname(target));
    return target;
  }

  /** Removes version folders and the carry-on folders they leave empty. Never throws: returns what it could not remove. */
  remove(dirs: string[]): string[] {
    const failed: string[] = [];
    for (const dir of dirs) {
      if (!this.isInside(dir)) continue;
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

  removeTenant(tenantId: string): void {
    const dir = this.tenantDir(tenantId);
    if (this.isInside(dir)) fs.rmSync(dir, { recursive: true, force: true });
  }

  discardStaging(dir: string): void {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  /** Removes staging folders a crashed upload left behind. */
  sweepStaleStaging(now = Date.now()): void {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(this.staging, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(this.staging, e.name);
      try {
        if (now - fs.statSync(p).mtimeMs > STALE_STAGING_MS) fs.rmSync(p, { recursive: true, force: true });
      } catch {
        // raced with another process's sweep or upload: nothing to do
      }
    }
  }

  /** Guards every removal: a path from the database must never point the server outside its carry-on folder. */
  private isInside(p: string): boolean {
    const rel = path.relative(this.root, p);
    return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
  }
}
