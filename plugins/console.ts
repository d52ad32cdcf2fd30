import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { FastifyPluginAsync } from 'fastify';
import { ApiError } from '../src/core/errors.js';

/**
 * The admin console (docs/console.md): a static page at /console/ that calls the documented admin
 * routes with the key the user types in. Public routes: the page holds no secret, the key lives in
 * the browser's sessionStorage and travels only as a header on the API calls.
 */

/** Every response of the console: scripts and styles only from this origin's files, no inline code. */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

interface Asset {
  body: Buffer;
  type: string;
}

/** The console's own files (this folder), next to this plugin so the image's `COPY plugins` ships them. */
export const CONSOLE_DIR = path.join(import.meta.dirname, 'console');

/**
 * The whole set of servable files, read once at boot into memory (tens of KiB). A request path is
 * only ever looked up in this map, never joined onto a folder, so no URL can reach another file.
 */
export function loadConsoleAssets(dir = CONSOLE_DIR): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  const add = (name: string, file: string) => {
    const type = TYPES[path.extname(file)];
    if (!type) throw new Error(`console asset ${file}: no content type for its extension`);
    assets.set(name, { body: fs.readFileSync(file), type });
  };
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isFile()) add(e.name, path.join(dir, e.name));
  // The libraries come from the installed packages (pinned in package.json), resolved at boot:
  // no CDN, no copy to keep in step. Each is one self-contained ES module or stylesheet.
  const require = createRequire(import.meta.url);
  const pkgDir = (name: string, entry: string) => path.resolve(path.dirname(require.resolve(name)), entry);
  add('vendor/htm-preact.js', pkgDir('htm', '../preact/standalone.module.js'));
  add('vendor/uplot.js', pkgDir('uplot', 'uPlot.esm.js'));
  add('vendor/uplot.css', pkgDir('uplot', 'uPlot.min.css'));
  return assets;
}

const consoleRoutes: FastifyPluginAsync<{ dir?: string }> = async (app, opts) => {
  const assets = loadConsoleAssets(opts.dir);
  // On every response of these routes, errors included (this plugin's hooks apply to its routes only).
  app.addHook('onSend', async (_request, reply) => {
    reply
      .header('content-security-policy', CONSOLE_CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('x-frame-options', 'DENY')
      .header('cache-control', 'no-cache');
  });
  // A relative redirect, so the page works behind a path prefix (/gw/console → /gw/console/); the
  // page's own URLs are all relative to /console/ too.
  app.get('/console', { config: { public: true } }, async (_request, reply) => reply.redirect('console/', 301));
  app.get('/console/*', { config: { public: true } }, async (request, reply) => {
    const name = (request.params as { '*': string })['*'] || 'index.html';
    const asset = assets.get(name);
    if (!asset) throw new ApiError('not_found', `Unknown console file: ${name}.`);
    return reply.type(asset.type).send(asset.body);
  });
};

export default consoleRoutes;
