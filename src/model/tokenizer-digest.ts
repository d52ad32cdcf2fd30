import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PACKAGE_FILES } from './package-files.js';

/**
 * sha256 of the package's tokenizer.json with its keys in a fixed order, less what does not change
 * how text becomes ids (`version`, and the `truncation` and `padding` a caller sets per call). The
 * vocabulary, merges, added tokens and every normalisation and splitting step are in it: two
 * packages converted from the same tokenizer agree, byte differences in layout do not matter.
 */
export function tokenizerDigest(packageDir: string): string {
  const raw = JSON.parse(fs.readFileSync(path.join(packageDir, PACKAGE_FILES.tokenizer), 'utf8')) as Record<string, unknown>;
  const { version: _version, truncation: _truncation, padding: _padding, ...rest } = raw;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
