/**
 * A carry-on package is a folder with two files: the self-contained ONNX graph (`model.onnx`) and
 * a manifest (`manifest.json`) that binds it to one exact base model (by the base package's
 * fingerprint) and to its own bytes (by sha256), so a gateway never pairs a carry-on with the
 * wrong base or a torn/tampered file. models/README.md documents both for trainers.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { TENANT_ID_PATTERN } from '../core/tenant-id.js';

export const CARRYON_FILES = { graph: 'model.onnx', manifest: 'manifest.json' } as const;

export const CARRYON_FORMAT_VERSION = 1;

/** Ids end up in URLs, file names and metric labels, hence the conservative slug. */
export const CARRYON_ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Upper bound of α: beyond a few times the trained correction, outputs are meaningless. */
export const MAX_ALPHA = 4;

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits');
const PositiveInt = z.number().int().positive();

const InputLayerSchema = z.union([z.literal('final'), z.number().int().nonnegative()]);

export const CarryOnArchitecture = z
  .object({
    width: PositiveInt,
    layers: PositiveInt,
    heads: PositiveInt,
    kv_heads: PositiveInt,
    head_dim: PositiveInt,
    intermediate: PositiveInt,
    rope_theta: z.number().positive(),
    rms_norm_eps: z.number().positive(),
    max_positions: PositiveInt,
  })
  .refine((a) => a.heads % a.kv_heads === 0, { message: 'heads must be a multiple of kv_heads', path: ['kv_heads'] })
  .refine((a) => a.head_dim % 2 === 0, { message: 'head_dim must be even (RoPE rotates pairs)', path: ['head_dim'] });
export type CarryOnArchitecture = z.infer<typeof CarryOnArchitecture>;

export const CarryOnManifest = z.object({
  format_version: z.literal(CARRYON_FORMAT_VERSION),
  id: z.string().regex(CARRYON_ID_PATTERN, 'expected a lowercase slug: [a-z0-9][a-z0-9._-]{0,63}'),
  version: PositiveInt,
  /** The base package's `fingerprint` (carryon-package.json): the only base this was trained on. */
  base_fingerprint: Sha256Hex,
  /** The base's hidden size: width of every input layer and of `delta` and `gate`. */
  hidden_size: PositiveInt,
  /** Feature-concatenation order of the graph's inputs: 'final' = `hidden_states`, k = `hidden_states.layer.{k}`. */
  input_layers: z
    .array(InputLayerSchema)
    .min(1)
    .default(['final'])
    .refine((layers) => new Set(layers).size === layers.length, 'input_layers must not repeat a layer'),
  reads_token_ids: z.boolean(),
  default_alpha: z.number().min(0).max(MAX_ALPHA),
  /** Trainable parameters (RoPE tables and scalar constants excluded). */
  parameter_count: z.number().int().nonnegative(),
  /** sha256 of model.onnx. */
  sha256: Sha256Hex,
  description: z.string().max(2000),
  architecture: CarryOnArchitecture,
  created_at: z.iso.datetime(),
  /**
   * Upload routing only: the tenant `POST /admin/carry-ons` stores it for when the form names none.
   * Not part of the carry-on's contract: the gateway drops it from the manifest it stores.
   */
  tenant: z.string().regex(TENANT_ID_PATTERN, 'expected a tenant id: [a-z0-9][a-z0-9_-]{0,62}').optional(),
});
export type CarryOnManifest = z.infer<typeof CarryOnManifest>;

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Validates a manifest object, with an error that says which field is wrong. */
export function parseCarryOnManifest(raw: unknown, where = 'carry-on manifest'): CarryOnManifest {
  const parsed = CarryOnManifest.safeParse(raw);
  if (!parsed.success) throw new Error(`${where} is invalid:\n${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

export async function readCarryOnManifest(dir: string): Promise<CarryOnManifest> {
  const file = path.join(dir, CARRYON_FILES.manifest);
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read carry-on manifest ${file}: ${(err as Error).message}`);
  }
  return parseCarryOnManifest(raw, file);
}

/** Parses the manifest and checks that the graph on disk is exactly the one it describes. */
export async function verifyCarryOnFiles(dir: string): Promise<CarryOnManifest> {
  const manifest = await readCarryOnManifest(dir);
  const graphFile = path.join(dir, CARRYON_FILES.graph);
  const actual = sha256Hex(await fs.readFile(graphFile));
  if (actual !== manifest.sha256) {
    throw new Error(
      `carry-on '${manifest.id}' v${manifest.version}: ${graphFile} has sha256 ${actual}, ` +
        `manifest says ${manifest.sha256} (corrupted or modified)`,
    );
  }
  return manifest;
}
