import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT as ROOT } from '../helpers/paths.js';

/**
 * The folders are the architecture: each layer may import the layers below it, never one above.
 * Lowest first. `plugins/` (thin HTTP routes) sits above `src/http`; `src/app` composes everything;
 * `src/cli` drives the app from a terminal.
 */
const LAYERS = [
  'src/core', // errors, atomic files, metrics, request parsing: depends on nothing of ours
  'src/formats', // file formats: safetensors, float16, ONNX building
  'src/model', // base model: import, tokenizer, chat template, package files
  'src/carryon', // carry-on packages: manifest, graph contract, building
  'src/objects', // blobs in an S3-compatible bucket or a shared folder: carry-on graphs, shards
  'src/engine', // ONNX Runtime worker, KV cache, continuous-batching step loop
  'src/eval', // held-out loss of a carry-on over the engine
  'src/store', // SQLite or PostgreSQL: tenants, keys, carry-on catalog, shard index
  'src/harvest', // hidden-state capture into durable shards
  'src/auth', // API keys to principals
  'src/training', // the trainer child process, its report, a job's request and its shards on disk
  'src/serving', // inference service: admission, carry-on leases, harvest decision, generation
  'src/openai', // OpenAI protocol: schemas and translation to and from the inference service
  'src/admin', // admin services: tenants, keys, carry-on uploads, harvest, training jobs
  'src/http', // Fastify shell: auth hook, error envelope, SSE
  'plugins', // route plugins, one per surface
  'src/app', // config and boot: builds the services and registers the routes
  'src/cli', // `carryon` command line
];

const IMPORT = /(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;

function layerOf(file: string): string | null {
  const rel = path.relative(ROOT, file).split(path.sep);
  if (rel[0] === 'plugins') return 'plugins';
  if (rel[0] === 'src') return rel.length > 2 ? `src/${rel[1]}` : 'src';
  return null;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(ts|mjs)$/.test(e.name) ? [p] : [];
  });
}

interface Edge {
  from: string;
  to: string;
  file: string;
  spec: string;
}

function crossLayerImports(): Edge[] {
  const edges: Edge[] = [];
  for (const file of [...sourceFiles(path.join(ROOT, 'src')), ...sourceFiles(path.join(ROOT, 'plugins'))]) {
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2];
      const from = layerOf(file);
      const to = layerOf(path.resolve(path.dirname(file), spec));
      if (from && to && from !== to) edges.push({ from, to, file: path.relative(ROOT, file), spec });
    }
  }
  return edges;
}

describe('layer map', () => {
  const edges = crossLayerImports();

  it('sees the imports it checks (the parser is not silently matching nothing)', () => {
    expect(edges.some((e) => e.from === 'plugins' && e.to === 'src/openai')).toBe(true);
    expect(edges.some((e) => e.from === 'src/serving' && e.to === 'src/engine')).toBe(true);
  });

  it('puts every source file in a layer folder, none loose in src/', () => {
    const loose = fs.readdirSync(path.join(ROOT, 'src')).filter((n) => fs.statSync(path.join(ROOT, 'src', n)).isFile());
    expect(loose).toEqual([]);
    const folders = fs.readdirSync(path.join(ROOT, 'src')).map((n) => `src/${n}`);
    expect(folders.filter((f) => !LAYERS.includes(f))).toEqual([]);
  });

  it('never imports a layer above its own', () => {
    const upward = edges
      .filter((e) => LAYERS.indexOf(e.to) > LAYERS.indexOf(e.from))
      .map((e) => `${e.file} (${e.from}) imports ${e.spec} (${e.to}), a layer above it`);
    expect(upward).toEqual([]);
  });
});
