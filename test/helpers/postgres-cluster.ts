import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/**
 * A PostgreSQL cluster of a test's own, which it may stop and start (an outage) without touching
 * the server CARRYON_TEST_DATABASE_URL names. Same recipe as .ci/postgres: trust auth on 127.0.0.1,
 * in a temp folder, owned by the carryon-ci system user when the tests run as root (PostgreSQL
 * refuses to run as root; .ci/postgres creates that user).
 */
export class PostgresCluster {
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly bin: string,
  ) {}

  /** postgres://… of the cluster's `carryon` database. */
  get url(): string {
    return `postgres://carryon@127.0.0.1:${this.port}/carryon`;
  }

  static async create(): Promise<PostgresCluster> {
    const root = '/usr/lib/postgresql';
    const versions = fs.readdirSync(root).sort((x, y) => Number(x) - Number(y));
    const bin = path.join(root, versions[versions.length - 1], 'bin');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-pg-outage-'));
    if (process.getuid?.() === 0) execFileSync('chown', ['carryon-ci', dir]);
    const cluster = new PostgresCluster(dir, await freePort(), bin);
    cluster.asOwner('initdb', ['-D', path.join(dir, 'data'), '-U', 'carryon', '--auth=trust', '-E', 'UTF8']);
    cluster.start();
    cluster.asOwner('createdb', ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'carryon', 'carryon']);
    return cluster;
  }

  start(): void {
    this.asOwner('pg_ctl', [
      '-D', path.join(this.dir, 'data'), '-l', path.join(this.dir, 'postgres.log'),
      '-o', `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1`, '-w', 'start',
    ]);
  }

  /** A fast shutdown, as a restart or failover does it: sessions are terminated (57P01). */
  stop(): void {
    this.asOwner('pg_ctl', ['-D', path.join(this.dir, 'data'), '-m', 'fast', '-w', 'stop']);
  }

  destroy(): void {
    try {
      this.stop();
    } catch {
      // already stopped
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private asOwner(tool: string, args: string[]): void {
    const exe = path.join(this.bin, tool);
    if (process.getuid?.() === 0) execFileSync('runuser', ['-u', 'carryon-ci', '--', exe, ...args], { stdio: 'ignore' });
    else execFileSync(exe, args, { stdio: 'ignore' });
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
