import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/app/config.js';
import { DEFAULT_MODEL, downloadDefaultModel, resolveModelPackage } from '../../src/model/model-source.js';
import { readManifest } from '../../src/model/package-files.js';
import { startServer } from '../../src/app/server.js';
import { STORIES_BIN, STORIES_TOK } from '../helpers/paths.js';

/**
 * The default model's download path, against a local mirror that serves the real upstream bytes under
 * the pinned Hugging Face URL layout (this machine cannot reach huggingface.co).
 */
let mirror: http.Server;
let mirrorUrl: string;
let gate: Promise<void> = Promise.resolve();
let corrupt = false;
const hits: string[] = [];

beforeAll(async () => {
  const files: Record<string, string> = {
    [`/${DEFAULT_MODEL.repo}/resolve/${DEFAULT_MODEL.revision}/${DEFAULT_MODEL.files.checkpoint.path}`]: STORIES_BIN,
    [`/${DEFAULT_MODEL.repo}/resolve/${DEFAULT_MODEL.revision}/${DEFAULT_MODEL.files.tokenizer.path}`]: STORIES_TOK,
  };
  const serve = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    hits.push(req.url!);
    await gate;
    const file = files[req.url!];
    if (!file) return void res.writeHead(404).end();
    const bytes = fs.readFileSync(file);
    if (corrupt) bytes[100] ^= 0xff;
    res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
  };
  // void: http ignores what a listener returns; a throw in serve is an unhandled rejection, which fails the run.
  mirror = http.createServer((req, res) => void serve(req, res));
  await new Promise<void>((r) => mirror.listen(0, '127.0.0.1', r));
  mirrorUrl = `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => mirror.close(() => r())));

const tmpDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-dl-'));
const noShared = path.join(os.tmpdir(), 'carryon-no-shared-here');

describe('default model download', () => {
  it('refuses a download whose sha256 does not match the pin', async () => {
    corrupt = true;
    try {
      await expect(downloadDefaultModel(tmpDir(), mirrorUrl, () => {})).rejects.toThrow(/sha256/);
    } finally {
      corrupt = false;
    }
  });

  it('serves 503 model_loading and an unready probe while downloading, then the model; reuses the import on restart', async () => {
    const dataDir = tmpDir();
    let release!: () => void;
    gate = new Promise((r) => (release = r));
    const config = loadConfig({ HOST: '127.0.0.1', PORT: '0', CARRYON_DATA_DIR: dataDir, CARRYON_ADMIN_KEY: 'k', CARRYON_DOWNLOAD_BASE_URL: mirrorUrl, CARRYON_LOG_LEVEL: 'silent' });
    // Point the default-model lookup away from ../shared so the download path runs.
    const server = await startServer({ ...config, sharedModelDir: noShared });
    try {
      const probe = await request(`${server.url}/health/ready`);
      expect(probe.statusCode).toBe(503);
      await probe.body.dump();
      const early = await request(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'stories260K', prompt: 'Hi' }),
      });
      expect(early.statusCode).toBe(503);
      expect(early.headers['retry-after']).toBe('5');
      expect(((await early.body.json()) as { error: { code: string } }).error.code).toBe('model_loading');
      release();
      await server.ready;
      const ok = await request(`${server.url}/health/ready`);
      expect(ok.statusCode).toBe(200);
      await ok.body.dump();
    } finally {
      await server.close();
    }
    const pkg = path.join(dataDir, 'models', 'stories260K');
    const first = readManifest(pkg).created_at;
    hits.length = 0;
    const again = await resolveModelPackage({ model: '', dataDir, downloadBaseUrl: mirrorUrl, sharedDir: noShared, log: () => {} });
    expect(again).toBe(pkg);
    expect(readManifest(pkg).created_at).toBe(first);
    expect(hits).toEqual([]);
  });

  it('reports a model that cannot load as failed, with the reason, and keeps answering', async () => {
    const config = loadConfig({ HOST: '127.0.0.1', PORT: '0', CARRYON_DATA_DIR: tmpDir(), CARRYON_ADMIN_KEY: 'k', CARRYON_EXECUTION_PROVIDER: 'cuda', CARRYON_LOG_LEVEL: 'silent' });
    const server = await startServer(config);
    try {
      await expect(server.ready).rejects.toThrow(/execution provider "cuda"/);
      const probe = await request(`${server.url}/health/ready`);
      expect(probe.statusCode).toBe(503);
      expect(await probe.body.json()).toMatchObject({ status: 'failed', error: expect.stringMatching(/cuda/) as unknown });
    } finally {
      await server.close();
    }
  });
});
