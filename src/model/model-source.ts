import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetch } from 'undici';
import { sha256File } from '../core/file-digest.js';
import { fsyncDir } from '../core/fs-atomic.js';
import { hfFolderSha256, isHfFolder } from './hf-folder.js';
import { importModel } from './import.js';
import { PACKAGE_FILES, readManifest } from './package-files.js';

/** The default base model: karpathy/tinyllamas stories260K, pinned by revision and checksum. */
export const DEFAULT_MODEL = {
  name: 'stories260K',
  repo: 'karpathy/tinyllamas',
  revision: '0bd21da7698eaf29a0d7de3992de8a46ef624add',
  files: {
    checkpoint: { path: 'stories260K/stories260K.bin', sha256: 'b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696', bytes: 1056540 },
    tokenizer: { path: 'stories260K/tok512.bin', sha256: '037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312', bytes: 6227 },
  },
} as const;

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SHARED_DEFAULT_DIR = path.resolve(REPO_ROOT, '../shared/models/stories260K');

export interface ResolveOptions {
  /** CARRYON_MODEL: a package folder, a Hugging Face model folder, a .bin/.gguf file, or '' for the default model. */
  model: string;
  tokenizer?: string;
  dataDir: string;
  downloadBaseUrl: string;
  /** Where to look for a local copy of the default model before downloading. */
  sharedDir?: string;
  /** CARRYON_QUANTIZE: import checkpoints with 4-bit weights (a package folder is used as it is). */
  quantize?: 'q4_0';
  /**
   * The folder under DATA_DIR/models an import goes to; default: the source's file name. Several
   * bases name theirs (by base name) so two sources with one file name never import over each other.
   */
  folder?: string;
  log: (msg: string) => void;
}

/**
 * Turns CARRYON_MODEL into a ready package folder: a package is used as is; a checkpoint file or a
 * Hugging Face model folder is imported once into DATA_DIR/models and reused while its sha256 (a
 * folder's: over the files the import reads) is unchanged; no setting means
 * stories260K, from ../shared when present, else downloaded from its pinned upstream.
 */
export async function resolveModelPackage(opts: ResolveOptions): Promise<string> {
  if (opts.model) {
    const p = path.resolve(opts.model);
    if (!fs.existsSync(p)) throw new Error(`CARRYON_MODEL ${p} does not exist`);
    const isDir = fs.statSync(p).isDirectory();
    if (isDir && fs.existsSync(path.join(p, PACKAGE_FILES.manifest))) return p;
    if (isDir && !isHfFolder(p)) {
      throw new Error(
        `${p} is neither a model package (no ${PACKAGE_FILES.manifest}) nor a Hugging Face model folder (no config.json); ` +
          'import a checkpoint with `carryon import`',
      );
    }
    const name = isDir ? path.basename(p) : path.basename(p, path.extname(p));
    return importOnce(p, path.join(opts.dataDir, 'models', folderName(opts.folder ?? name, opts)), { tokenizerPath: opts.tokenizer || undefined, name, quantize: opts.quantize }, opts.log);
  }
  const sharedDir = opts.sharedDir ?? SHARED_DEFAULT_DIR;
  const files = fs.existsSync(path.join(sharedDir, 'stories260K.bin'))
    ? { bin: path.join(sharedDir, 'stories260K.bin'), tok: path.join(sharedDir, 'tok512.bin') }
    : await downloadDefaultModel(opts.dataDir, opts.downloadBaseUrl, opts.log);
  const name = DEFAULT_MODEL.name;
  return importOnce(files.bin, path.join(opts.dataDir, 'models', folderName(opts.folder ?? name, opts)), { tokenizerPath: files.tok, name, quantize: opts.quantize }, opts.log);
}

/** A quantized import lives beside the f32 one, so switching CARRYON_QUANTIZE never re-imports over the other. */
function folderName(name: string, opts: ResolveOptions): string {
  return opts.quantize ? `${name}.${opts.quantize}` : name;
}

async function importOnce(
  src: string,
  outDir: string,
  o: { tokenizerPath?: string; name: string; quantize?: 'q4_0' },
  log: (m: string) => void,
): Promise<string> {
  const sha = fs.statSync(src).isDirectory() ? await hfFolderSha256(src) : await sha256File(src);
  if (fs.existsSync(path.join(outDir, PACKAGE_FILES.manifest))) {
    try {
      if (readManifest(outDir).source.sha256 === sha) return outDir;
    } catch {
      // An unreadable manifest means a package from another version: import again.
    }
  }
  log(`importing ${src} into ${outDir}`);
  await importModel(src, outDir, o);
  return outDir;
}

/** Downloads the default checkpoint and tokenizer, verifying size and sha256 before keeping them. */
export async function downloadDefaultModel(dataDir: string, baseUrl: string, log: (m: string) => void): Promise<{ bin: string; tok: string }> {
  const dir = path.join(dataDir, 'downloads', DEFAULT_MODEL.name);
  fs.mkdirSync(dir, { recursive: true });
  const out: Record<string, string> = {};
  for (const [key, f] of Object.entries(DEFAULT_MODEL.files)) {
    const dest = path.join(dir, path.basename(f.path));
    out[key] = dest;
    if (fs.existsSync(dest) && (await sha256File(dest)) === f.sha256) continue;
    const url = `${baseUrl.replace(/\/$/, '')}/${DEFAULT_MODEL.repo}/resolve/${DEFAULT_MODEL.revision}/${f.path}`;
    log(`downloading ${url}`);
    await downloadVerified(url, dest, f.sha256, f.bytes);
  }
  return { bin: out.checkpoint, tok: out.tokenizer };
}

async function downloadVerified(url: string, dest: string, sha256: string, maxBytes: number): Promise<void> {
  // fetch follows the hub's redirect to its file CDN.
  const res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
  if (res.status !== 200 || !res.body) {
    await res.body?.cancel();
    throw new Error(`download of ${url} failed: HTTP ${res.status}`);
  }
  const hash = createHash('sha256');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > maxBytes) throw new Error(`download of ${url} is larger than the pinned ${maxBytes} bytes`);
    hash.update(chunk);
    chunks.push(Buffer.from(chunk));
  }
  const got = hash.digest('hex');
  if (got !== sha256) throw new Error(`download of ${url} has sha256 ${got}, expected ${sha256}`);
  const tmp = `${dest}.part`;
  fs.writeFileSync(tmp, Buffer.concat(chunks));
  const fd = fs.openSync(tmp, 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, dest);
  fsyncDir(path.dirname(dest));
}

