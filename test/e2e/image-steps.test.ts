import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { REPO_ROOT as ROOT, STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * The container image's steps, run for real without a Docker engine: the build context the
 * Dockerfile COPYs is copied into a temp "app" folder, the deps stage's scripts/image-install.sh
 * runs there (a real `npm ci --omit=dev`), and the image's ENTRYPOINT + CMD (without tini) serve,
 * answer probes and a completion, and drain on SIGTERM with exit 0. Everything is read from the
 * Dockerfile, so the image and this test cannot drift.
 *
 * The install compiles better-sqlite3 from source where its prebuilt binary can't be downloaded
 * (~60 s on two cores). CARRYON_IMAGE_TEST_REUSE_DEPS=1 links the repo's node_modules instead for a
 * fast local loop; CI never sets it, so every CI run exercises the real install.
 */

const REUSE_DEPS = process.env.CARRYON_IMAGE_TEST_REUSE_DEPS === '1';
const ADMIN_KEY = 'sk-image-test-admin-0123456789';

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name: string;
  steps: Instruction[];
}

/** The Dockerfile as stages of instructions (continuations joined, comments dropped). */
function parseDockerfile(): Stage[] {
  const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages: Stage[] = [];
  for (const line of text.split('\n')) {
    const m = /^([A-Z]+)\s+(.*)$/.exec(line.trim());
    if (!m || line.trim().startsWith('#')) continue;
    const [, op, args] = m;
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args.trim())!;
      stages.push({ from: f[1], name: f[2] ?? '', steps: [] });
    } else stages.at(-1)?.steps.push({ op, args: args.trim() });
  }
  return stages;
}

const stages = parseDockerfile();
const stage = (name: string) => {
  const s = stages.find((x) => x.name === name);
  if (!s) throw new Error(`Dockerfile has no stage ${name}`);
  return s;
};
const deps = stage('deps');
const runtime = stage('runtime');
const json = (s: Stage, op: string): string[] => z.array(z.string()).parse(JSON.parse(s.steps.find((i) => i.op === op)!.args));

/** COPY instructions that take from the build context (not --from another stage). */
function contextCopies(s: Stage): { srcs: string[]; dest: string }[] {
  return s.steps
    .filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))
    .map((i) => {
      const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      return { srcs: parts.slice(0, -1), dest: parts.at(-1)! };
    });
}

/** Docker's COPY: into a folder when the destination ends in "/" or there are several sources; a folder's contents, not the folder. */
function copyInto(appDir: string, { srcs, dest }: { srcs: string[]; dest: string }): void {
  const intoDir = dest.endsWith('/') || srcs.length > 1;
  for (const src of srcs) {
    const from = path.join(ROOT, src);
    const isDir = fs.statSync(from).isDirectory();
    const to = intoDir && !isDir ? path.join(appDir, dest, path.basename(src)) : path.join(appDir, dest);
    // .dockerignore's exclusions inside the allowed folders.
    fs.cpSync(from, to, { recursive: true, filter: (p) => !/\.tmp-|\.DS_Store$/.test(path.basename(p)) });
  }
}

/** The runtime stage's ENV, as the image sets it. */
function runtimeEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of runtime.steps.filter((x) => x.op === 'ENV')) for (const kv of i.args.matchAll(/(\w+)=(\S+)/g)) env[kv[1]] = kv[2];
  return env;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Every file of a tree with its size and mtime (symlinks not followed): to show nothing wrote there. */
function snapshot(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => {
      const st = fs.lstatSync(path.join(dir, f));
      return `${f} ${st.size} ${st.mtimeMs}`;
    })
    .sort();
}

let work: string;
let app: string;
let installSeconds = 0;

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-image-'));
  app = path.join(work, 'app');
  fs.mkdirSync(app);
  for (const c of [...contextCopies(deps), ...contextCopies(runtime)]) copyInto(app, c);
  if (REUSE_DEPS) {
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'), 'dir');
    return;
  }
  const started = Date.now();
  const install = spawnSync('bash', ['scripts/image-install.sh'], {
    cwd: app,
    // A build's environment: none of the npm_config_* that `npm test` exports to its children.
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k))), ACCELERATOR: 'cpu' },
    encoding: 'utf8',
    timeout: 240_000,
  });
  installSeconds = (Date.now() - started) / 1000;
  expect(install.status, `image-install.sh failed:\n${install.stdout}\n${install.stderr}`).toBe(0);
  expect(install.stdout).toContain('image-install: dependencies load (ACCELERATOR=cpu');
}, 300_000);

afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('container image steps', () => {
  it('the Dockerfile installs and starts through scripts/, under tini, from an allowlisted context', () => {
    expect(deps.steps.some((i) => i.op === 'RUN' && /\bbash scripts\/image-install\.sh$/.test(i.args))).toBe(true);
    const entrypoint = json(runtime, 'ENTRYPOINT');
    expect(entrypoint).toEqual(['/usr/bin/tini', '--', 'bash', 'scripts/image-start.sh']);
    expect(json(runtime, 'CMD')[0]).toBe('node');
    expect(runtime.steps.find((i) => i.op === 'HEALTHCHECK')?.args).toMatch(/CMD \["node", "scripts\/image-healthcheck\.mjs"\]$/);
    expect(runtime.steps.find((i) => i.op === 'USER')?.args).toMatch(/^[1-9]\d*:[1-9]\d*$/);
    expect(stages[0].from).toBe('${NODE_IMAGE}');
    expect(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8')).toMatch(/^ARG NODE_IMAGE=node:22-bookworm-slim$/m);

    // .dockerignore is an allowlist ("*" then "!path"): each COPY source must be let through.
    const ignore = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(ignore[0]).toBe('*');
    const allowed = ignore.filter((l) => l.startsWith('!')).map((l) => l.slice(1));
    for (const { srcs } of [...contextCopies(deps), ...contextCopies(runtime)]) for (const src of srcs) expect(allowed, src).toContain(src);
  });

  it('image-start.sh refuses a data folder it cannot write, naming it', () => {
    const blocker = path.join(work, 'not-a-folder');
    fs.writeFileSync(blocker, '');
    const r = spawnSync('bash', ['scripts/image-start.sh', 'true'], { cwd: app, env: { PATH: process.env.PATH, CARRYON_DATA_DIR: path.join(blocker, 'data') }, encoding: 'utf8' });
    expect(r.status).toBe(73);
    expect(r.stderr).toContain(`CARRYON_DATA_DIR '${path.join(blocker, 'data')}' is not a writable folder`);
  });

  it('the CLI runs through the entrypoint (docker run IMAGE node bin/carryon.js ...)', () => {
    const r = spawnSync('bash', ['scripts/image-start.sh', 'node', 'bin/carryon.js', '--help'], {
      cwd: app,
      env: { PATH: process.env.PATH, ...runtimeEnv(), CARRYON_DATA_DIR: path.join(work, 'cli-data'), TMPDIR: work },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('carryon import SRC OUT');
  });

  it('serves from the installed tree: ready, healthcheck, one completion, then SIGTERM drains to exit 0', async () => {
    const port = await freePort();
    const dataDir = path.join(work, 'data');
    const tmpDir = path.join(work, 'tmp');
    fs.mkdirSync(tmpDir);
    const env = {
      PATH: process.env.PATH!,
      ...runtimeEnv(),
      // The pod's overrides: loopback in a test, the data volume and /tmp as temp folders, keys from a Secret.
      HOST: '127.0.0.1',
      PORT: String(port),
      CARRYON_DATA_DIR: dataDir,
      TMPDIR: tmpDir,
      CARRYON_ADMIN_KEY: ADMIN_KEY,
      // The copy is not beside ../shared: name the default model's files explicitly.
      CARRYON_MODEL: STORIES_BIN,
      CARRYON_TOKENIZER: STORIES_TOK,
      CARRYON_THREADS: '1',
    };
    const before = snapshot(app);
    const argv = [...json(runtime, 'ENTRYPOINT').slice(2), ...json(runtime, 'CMD')];
    const child: ChildProcess = spawn(argv[0], argv.slice(1), { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const base = `http://127.0.0.1:${port}`;
    const healthcheck = () => spawnSync('node', ['scripts/image-healthcheck.mjs'], { cwd: app, env, timeout: 10_000 }).status;
    try {
      const readyBy = Date.now() + 60_000;
      let ready = 0;
      while (ready !== 200) {
        if (child.exitCode !== null) throw new Error(`gateway exited early (${child.exitCode}):\n${output}`);
        if (Date.now() > readyBy) throw new Error(`not ready in 60 s:\n${output}`);
        ready = await request(`${base}/health/ready`).then(
          async (r) => (await r.body.dump(), r.statusCode),
          () => 0,
        );
        if (ready !== 200) await new Promise((r) => setTimeout(r, 250));
      }
      expect(healthcheck()).toBe(0);

      const res = await request(`${base}/v1/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
      });
      const body = (await res.body.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
      expect(res.statusCode, JSON.stringify(body)).toBe(200);
      expect(body.choices[0].text.length).toBeGreaterThan(0);
      expect(body.usage.completion_tokens).toBeGreaterThan(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    // image-start.sh exec'd the gateway: the spawned pid is node itself, which drains and exits 0.
    expect(await exited, output).toEqual({ code: 0, signal: null });
    expect(healthcheck()).toBe(1);
    // State lands in the data folder only: the app tree is read-only in the pod.
    expect(fs.existsSync(path.join(dataDir, 'models/stories260K'))).toBe(true);
    expect(snapshot(app)).toEqual(before);
    if (!REUSE_DEPS) console.info(`image-install.sh (real npm ci --omit=dev): ${installSeconds.toFixed(1)} s`);
  }, 120_000);
});
