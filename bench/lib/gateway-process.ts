/**
 * The real gateway as a child process (`node --import tsx src/app/main.ts`, as `npm start` runs it),
 * plus what a load test reads from the outside: /proc for its memory and CPU, /metrics (admin key)
 * for the server's own counters.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface GatewayProcess {
  child: ChildProcess;
  pid: number;
  url: string;
  adminKey: string;
  dataDir: string;
  /** The last lines the gateway wrote to stdout/stderr (for error reports). */
  logTail(): string;
  /** SIGTERM, wait for a clean exit (SIGKILL after `timeoutMs`), remove the data folder. */
  stop(timeoutMs?: number): Promise<number | null>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startGateway(env: Record<string, string>, opts: { readyTimeoutMs?: number } = {}): Promise<GatewayProcess> {
  const port = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-load-'));
  const adminKey = 'sk-load-bench-admin-0123456789';
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/app/main.ts'], {
    cwd: repoRoot,
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: String(port),
      CARRYON_DATA_DIR: dataDir,
      CARRYON_ADMIN_KEY: adminKey,
      CARRYON_LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail: string[] = [];
  const keep = (buf: Buffer) => {
    for (const line of buf.toString('utf8').split('\n')) if (line) tail.push(line);
    if (tail.length > 200) tail.splice(0, tail.length - 200);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((r) =>
    child.on('exit', (code) => {
      exitCode = code;
      r(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const gw: GatewayProcess = {
    child,
    pid: child.pid!,
    url,
    adminKey,
    dataDir,
    logTail: () => tail.slice(-40).join('\n'),
    async stop(timeoutMs = 30_000) {
      if (exitCode === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
      return exitCode ?? null;
    },
  };
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 180_000);
  let lastStatus = '';
  while (Date.now() < deadline) {
    if (exitCode !== undefined) break;
    try {
      const res = await fetch(`${url}/health/ready`);
      lastStatus = `${res.status} ${await res.text()}`;
      if (res.status === 200) return gw;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  await gw.stop(2000);
  throw new Error(`gateway did not become ready (last /health/ready: ${lastStatus || 'no answer'}; exit ${exitCode})\n${gw.logTail()}`);
}

/** VmRSS (and VmHWM) of a process, in bytes, from /proc/<pid>/status. */
export function procMemory(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) * 1024 : NaN;
  };
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

const CLOCK_TICKS = 100; // USER_HZ: 100 on every Linux the gateway targets

/** User + system CPU seconds a process (all its threads) has used, from /proc/<pid>/stat. */
export function procCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** The Prometheus text of /metrics, read with the admin key. */
export async function scrapeMetrics(gw: GatewayProcess): Promise<string> {
  const res = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${gw.adminKey}` } });
  if (res.status !== 200) throw new Error(`/metrics: HTTP ${res.status}`);
  return res.text();
}

/** Sum of every sample of `name` (all label sets); null when the metric is absent. */
export function metricValue(text: string, name: string): number | null {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) {
      sum += value;
      found = true;
    }
  }
  return found ? sum : null;
}
