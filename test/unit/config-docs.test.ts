import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { ConfigSchema } from '../../src/app/config.js';

/**
 * docs/configuration.md is the option reference: its table must list exactly the keys of
 * ConfigSchema, and every default it states as a literal must be the one the schema applies.
 */
const DOC = path.resolve(import.meta.dirname, '../../docs/configuration.md');

/** Defaults computed at boot (not a constant), documented in words. */
const COMPUTED_DEFAULTS = new Set(['CARRYON_THREADS']);

interface Row {
  name: string;
  /** The backticked literal the default cell starts with; null when the cell is prose ("none", "generated"). */
  literal: string | null;
  line: number;
}

function documentedOptions(markdown: string): Row[] {
  const rows: Row[] = [];
  markdown.split('\n').forEach((text, i) => {
    const m = /^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|/.exec(text);
    if (!m) return;
    const lit = /^\s*`([^`]*)`/.exec(m[2]);
    rows.push({ name: m[1], literal: lit ? lit[1] : null, line: i + 1 });
  });
  return rows;
}

const shape = ConfigSchema.shape as Record<string, z.ZodType>;
const schemaKeys = Object.keys(shape);
const rows = documentedOptions(fs.readFileSync(DOC, 'utf8'));

describe('docs/configuration.md', () => {
  it('finds the option table (the parser is not silently matching nothing)', () => {
    expect(rows.length).toBeGreaterThan(10);
  });

  it('lists exactly the options of ConfigSchema, each once', () => {
    expect(rows.map((r) => r.name).sort()).toEqual([...schemaKeys].sort());
  });

  it('states each literal default as the schema applies it', () => {
    const wrong: string[] = [];
    for (const { name, literal, line } of rows) {
      const schema = shape[name];
      if (!schema) continue; // reported by the name check
      const applied = schema.parse(undefined);
      if (COMPUTED_DEFAULTS.has(name)) {
        if (literal !== null) wrong.push(`${name} (line ${line}): its default is computed at boot; describe it, do not give a literal`);
        continue;
      }
      if (literal === null) {
        // Prose ("none", "generated", "the default model") is only right for an empty default.
        if (applied !== '') wrong.push(`${name} (line ${line}): default not stated; the schema's is ${JSON.stringify(applied)}`);
        continue;
      }
      // Parse the documented literal as the environment value it would be (`on` → true, `8080` → 8080).
      const parsed = schema.safeParse(literal);
      if (!parsed.success || parsed.data !== applied) {
        wrong.push(`${name} (line ${line}): documented \`${literal}\`, the schema's default is ${JSON.stringify(applied)}`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
