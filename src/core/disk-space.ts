import fs from 'node:fs';
import path from 'node:path';

const RESERVE_FILE = '.disk-reserve';

/**
 * A full disk is an operating state, not a crash. The gateway keeps a reserve file of
 * `reserveBytes` in the data folder; when the disk fills (seen by a write that failed, or by the
 * periodic check), the reserve is deleted, so SQLite can still write the few pages a delete needs:
 * deletes keep working and space can be freed through the API. Once free space is back above
 * twice the reserve, the reserve is made again and the state clears.
 */
export class DiskSpace {
  private fullSince: string | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly dataDir: string,
    private readonly reserveBytes: number,
  ) {}

  /** Null while there is room; otherwise why the disk counts as full (readiness shows it). */
  get full(): string | null {
    return this.fullSince;
  }

  /** Makes the reserve if it is missing; a disk too full for it starts in the full state. */
  start(checkEveryMs = 10_000): void {
    this.check();
    if (!this.fullSince) this.ensureReserve();
    this.timer = setInterval(() => this.check(), checkEveryMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** A write failed for lack of space: give the reserve back so deletes can run. */
  onDiskFull(what: string): void {
    if (!this.fullSince) this.fullSince = `the disk of ${this.dataDir} is full (${what} failed at ${new Date().toISOString()})`;
    this.releaseReserve();
  }

  private check(): void {
    let free: number;
    try {
      const s = fs.statfsSync(this.dataDir);
      free = s.bavail * s.bsize;
    } catch {
      return;
    }
    if (free < this.reserveBytes) {
      // Filled while running, or while the gateway was down: the reserve goes first.
      this.onDiskFull('the free-space check');
    } else if (this.fullSince !== null && free > 3 * this.reserveBytes) {
      if (this.ensureReserve()) this.fullSince = null;
    }
  }

  private get reservePath(): string {
    return path.join(this.dataDir, RESERVE_FILE);
  }

  private hasReserve(): boolean {
    try {
      return fs.statSync(this.reservePath).size === this.reserveBytes;
    } catch {
      return false;
    }
  }

  /** Writes the reserve (real blocks, not a sparse file); false when there is no room for it. */
  private ensureReserve(): boolean {
    if (this.reserveBytes === 0 || this.hasReserve()) return true;
    try {
      const fd = fs.openSync(this.reservePath, 'w', 0o600);
      try {
        const chunk = Buffer.alloc(Math.min(this.reserveBytes, 1 << 20));
        for (let at = 0; at < this.reserveBytes; at += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, this.reserveBytes - at));
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      return true;
    } catch {
      this.releaseReserve();
      if (!this.fullSince) this.fullSince = `the disk of ${this.dataDir} has no room for its ${this.reserveBytes}-byte reserve`;
      return false;
    }
  }

  private releaseReserve(): void {
    fs.rmSync(this.reservePath, { force: true });
  }
}
