/**
 * A carry-on package is a folder with three files: the weights (`weights.safetensors`), the ONNX
 * graph built from them (`model.onnx`) and a manifest (`manifest.json`) that binds both to one
 * exact base model (by the base package's fingerprint) and to their bytes (by sha256), so a gateway
 * never pairs a carry-on with the wrong base or a torn/tampered file. Uploads send the manifest and
 * the weights only: the gateway builds the graph. models/README.md documents the files for trainers.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { TENANT_ID_PATTERN } from '../core/tenant-id.js';

/** `model.onnx` is built from `weights.safetensors` (by the gateway for uploads); the manifest binds both. */
export const CARRYON_FILES = { graph: 'model.onnx', manifest: 'manifest.json', weights: 'weights.safetensors' } as const;

export const CARRYON_FORMAT_VERSION = 1;

/** Ids end up in URLs, file names and metric labels, hence the conservative slug. */
export const CARRYON_ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Upper bound of α: beyond a few times the trained correction, outputs are meaningless. */
export const MAX_ALPHA = 4;

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits');
const PositiveInt = z.number().int().positive();

const InputLayerSchema = z.union([z.literal('final'), z.number().int().nonnegative()]);

/**
 * Bounds of the supported architecture: a carry-on is "a few transformer blocks". They bound a
 * carry-on's per-token cost and memory by construction, before any weight is read.
 */
export const ARCHITECTURE_LIMITS = { width: 8192, layers: 32, heads: 128, head_dim: 512, intermediate: 65536, max_positions: 1 << 20 } as const;

export const CarryOnArchitecture = z
  .object({
    width: PositiveInt.max(ARCHITECTURE_LIMITS.width),
    layers: PositiveInt.max(ARCHITECTURE_LIMITS.layers),
    heads: PositiveInt.max(ARCHITECTURE_LIMITS.heads),
    kv_heads: PositiveInt.max(ARCHITECTURE_LIMITS.heads),
    head_dim: PositiveInt.max(ARCHITECTURE_LIMITS.head_dim),
    intermediate: PositiveInt.max(ARCHITECTURE_LIMITS.intermediate),
    rope_theta: z.number().positive().max(1e9),
    rms_norm_eps: z.number().positive().max(1),
    max_positions: PositiveInt.max(ARCHITECTURE_LIMITS.max_positions),
  })
  .refine((a) => a.heads % a.kv_heads === 0, { message: 'heads must be a multiple of kv_heads', path: ['kv_heads'] })
  .refine((a) => a.head_dim % 2 === 0, { message: 'head_dim must be even (RoPE rotates pairs)', path: ['head_dim'] });
export type CarryOnArchitecture = z.infer<typeof CarryOnArchitecture>;

const InputLayers = z
  .array(InputLayerSchema)
  .min(1)
  .refine((layers) => new Set(layers).size === layers.length, 'input_layers must not repeat a layer');

/** The most secondary bases one mixture carry-on reads: each one runs its whole body per token. */
export const MAX_SECONDARY_BASES = 4;

/**
 * A mixture carry-on's other base: served by the same gateway, sharing the primary's tokenizer, run
 * over the same tokens; the carry-on reads these layers of it after the primary's (models/README.md).
 */
export const SecondaryBase = z.object({
  fingerprint: Sha256Hex,
  hidden_size: PositiveInt,
  input_layers: InputLayers,
});
export type SecondaryBase = z.infer<typeof SecondaryBase>;

export const CarryOnManifest = z.object({
  format_version: z.literal(CARRYON_FORMAT_VERSION),
  id: z.string().regex(CARRYON_ID_PATTERN, 'expected a lowercase slug: [a-z0-9][a-z0-9._-]{0,63}'),
  version: PositiveInt,
  /** The base package's `fingerprint` (carryon-package.json): the only base this was trained on. */
  base_fingerprint: Sha256Hex,
  /** The base's hidden size: width of every input layer and of `delta` and `gate`. */
  hidden_size: PositiveInt,
  /** Feature-concatenation order of the graph's inputs: 'final' = `hidden_states`, k = `hidden_states.layer.{k}`. */
  input_layers: InputLayers.default(['final']),
  /**
   * A mixture: the other bases whose states it reads (absent: the primary alone). The primary
   * (`base_fingerprint`) keeps the head and the merge; the secondaries only feed the carry-on.
   */
  secondary_bases: z
    .array(SecondaryBase)
    .max(MAX_SECONDARY_BASES)
    .refine((bases) => new Set(bases.map((b) => b.fingerprint)).size === bases.length, 'secondary_bases must not repeat a base')
    .optional(),
  reads_token_ids: z.boolean(),
  default_alpha: z.number().min(0).max(MAX_ALPHA),
  /** Trainable parameters (RoPE tables and scalar constants excluded). */
  parameter_count: z.number().int().nonnegative(),
  /** sha256 of model.onnx. */
  sha256: Sha256Hex,
  /** sha256 of weights.safetensors, which model.onnx was built from (absent in packages from before weights uploads). */
  weights_sha256: Sha256Hex.optional(),
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

export function secondaryBasesOf(m: Pick<CarryOnManifest, 'secondary_bases'>): SecondaryBase[] {
  return m.secondary_bases ?? [];
}

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
    throw new Error(`cannot read carry-on manifest ${file}: ${(err as Error).message}`, { cause: err });
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
