import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { HARVEST_CONFIG } from '../harvest/config.js';
import { objectStoreUrlProblem } from '../objects/object-store-config.js';
import { POSTGRES_URL_PATTERN } from '../store/database-url.js';
import { ConfigError } from './config-error.js';
import { baseModelsOf, type BaseModelSetting } from './base-models-config.js';

/**
 * Every option is an environment variable; this schema is the single place that names, defaults and
 * validates them, once, at boot. docs/configuration.md's option table documents it (checked against it
 * by test/unit/config-docs.test.ts).
 */
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

export const ConfigSchema = z.object({
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: int(0, 65535).default(8080),
  /** A model package folder, or a llama2.c `.bin` / `.gguf` to import on start. Empty: the default model. */
  CARRYON_MODEL: z.string().default(''),
  /** llama2.c tokenizer.bin for a `.bin` CARRYON_MODEL; defaults to tokenizer.bin / tok512.bin beside it. */
  CARRYON_TOKENIZER: z.string().default(''),
  /** Name clients use in the `model` field for the base; defaults to the package's name. */
  CARRYON_MODEL_NAME: z.string().default(''),
  /**
   * Several bases in one gateway: `name=source,name=source` (each source as CARRYON_MODEL takes it).
   * Each gets its own engine (and CARRYON_KV_CACHE_BYTES); the first is the default base. Exclusive
   * with CARRYON_MODEL, CARRYON_MODEL_NAME and CARRYON_TOKENIZER (see baseModelsOf).
   */
  CARRYON_MODELS: z.string().default(''),
  CARRYON_DATA_DIR: z.string().default('data'),
  /**
   * PostgreSQL for the metadata (tenants, keys, carry-on and harvest indexes) instead of
   * DATA_DIR/gateway.sqlite. Holds a password: messages show it redacted, never as given.
   */
  CARRYON_DATABASE_URL: z
    .string()
    // The message never repeats the value: it holds a password.
    .refine((url) => url === '' || (POSTGRES_URL_PATTERN.test(url) && URL.canParse(url)), 'must be a postgres:// or postgresql:// URL')
    .default(''),
  /** Connections to CARRYON_DATABASE_URL this process may hold at once. */
  CARRYON_DATABASE_POOL_SIZE: int(1, 1000).default(10),
  /** How long after its last check a key keeps working on a replica while PostgreSQL is unreachable (0: not at all). */
  CARRYON_DATABASE_GRACE_SECONDS: int(0, 86_400).default(300),
  /** How often each replica re-checks its cached keys against PostgreSQL, under the change feed (LISTEN/NOTIFY). */
  CARRYON_DATABASE_RECONCILE_SECONDS: int(1, 3600).default(5),
  /**
   * Where carry-on graphs and closed harvest shards are kept for every replica: `s3://bucket/prefix`
   * (an S3-compatible bucket) or `file:///path` (a shared mount). Empty: only under DATA_DIR (one node). Credentials come from
   * the AWS SDK's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, a role).
   */
  CARRYON_OBJECT_STORE_URL: z
    .string()
    .superRefine((url, ctx) => {
      const problem = objectStoreUrlProblem(url);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    })
    .default(''),
  /** An S3-compatible server's URL (MinIO, Ceph, R2); empty: AWS S3 itself. */
  CARRYON_OBJECT_STORE_ENDPOINT: z
    .string()
    .refine((url) => url === '' || /^https?:\/\/[^/]/.test(url), 'must be an http:// or https:// URL')
    .default(''),
  CARRYON_OBJECT_STORE_REGION: z.string().min(1).default('us-east-1'),
  /** Address buckets as `endpoint/bucket/key` (most S3-compatible servers) rather than `bucket.endpoint/key`. */
  CARRYON_OBJECT_STORE_PATH_STYLE: bool.default(false),
  /** A bucket request (HEAD, DELETE) that takes longer fails; so does a transfer silent this long. */
  CARRYON_OBJECT_STORE_TIMEOUT_MS: int(100, 600_000).default(10_000),
  /** Tries of a bucket request that failed on the network, a timeout or a 5xx, before the caller gets a 503. */
  CARRYON_OBJECT_STORE_ATTEMPTS: int(1, 10).default(3),
  /** Admin key; also valid on /v1/*. When unset, one is generated into DATA_DIR/admin-key (mode 0600). */
  CARRYON_ADMIN_KEY: z.string().default(''),
  /** Comma-separated inference-scope API keys. */
  CARRYON_API_KEYS: z.string().default(''),
  /** Serve /v1/* without a key. Off by default: secure unless the operator says otherwise. */
  CARRYON_ALLOW_ANONYMOUS: bool.default(false),
  /** Where the default model is downloaded from when ../shared is absent (a mirror of huggingface.co). */
  CARRYON_DOWNLOAD_BASE_URL: z.string().url().default('https://huggingface.co'),
  /** q4_0: checkpoints (CARRYON_MODEL files, the default model) are imported with 4-bit weights (MatMulNBits). */
  CARRYON_QUANTIZE: z.enum(['none', 'q4_0']).default('none'),
  /** Admin training jobs (POST /admin/training-jobs): one runs at a time; this many may wait. */
  CARRYON_TRAINING_MAX_QUEUED: int(0, 1000).default(4),
  /** A training job running longer than this is stopped and fails. */
  CARRYON_TRAINING_TIMEOUT_MS: int(1000, 7 * 24 * 3600 * 1000).default(6 * 3600 * 1000),
  /** Torch CPU threads of a training job (the base keeps CARRYON_THREADS for serving). */
  CARRYON_TRAINING_THREADS: int(1, 256).default(1),
  /**
   * Who runs the queued training jobs: `inline`, this gateway (one job at a time, beside serving);
   * `external`, only `carryon train-worker` processes on the same database and data folder (this
   * gateway just queues them).
   */
  CARRYON_TRAINING_WORKER: z.enum(['inline', 'external']).default('inline'),
  /** How often a worker heartbeats its running job (and notices a cancel), and how often an idle one polls the queue. */
  CARRYON_TRAINING_HEARTBEAT_MS: int(100, 600_000).default(5_000),
  /** A running job whose worker has not heartbeated for this long is taken up by another worker (or failed, past its attempts). */
  CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: int(1000, 86_400_000).default(60_000),
  /** Claims a training job may have in all: one whose worker is lost on the last one fails, saying so. */
  CARRYON_TRAINING_MAX_ATTEMPTS: int(1, 100).default(3),
  CARRYON_EXECUTION_PROVIDER: z.enum(['cpu', 'cuda', 'webgpu']).default('cpu'),
  /** Intra-op threads for the base model's sessions. */
  CARRYON_THREADS: int(1, 1024).default(Math.max(1, Math.min(os.availableParallelism(), 8))),
  /** Prompt tokens prefilled per engine step, so a long prompt does not stall other sequences. */
  CARRYON_PREFILL_CHUNK: int(1, 65536).default(256),
  /**
   * A long prompt chunk runs in slices of about this many milliseconds, after the step's short
   * prompts have sampled; a request arriving meanwhile waits one slice, not the whole chunk.
   * 0: whole chunks (the most prefill throughput, the longest waits behind a long prompt).
   */
  CARRYON_PREFILL_SLICE_MS: int(0, 60_000).default(50),
  /**
   * Longest sequence (prompt + completion) served; 0: the model's own context length
   * (max_position_embeddings). Lower it to bound KV memory per sequence; it cannot exceed the model's.
   */
  CARRYON_CONTEXT_LENGTH: int(0, 1 << 24).default(0),
  CARRYON_MAX_LIVE_SEQUENCES: int(1, 4096).default(32),
  /**
   * The base's KV cache is one pool of slots × the longest live row: sequences wait in the engine
   * while admitting one more would pass this many bytes (running ones may still grow past it).
   */
  CARRYON_KV_CACHE_BYTES: int(1 << 20, Number.MAX_SAFE_INTEGER).default(2 * 1024 ** 3),
  /**
   * Prefix cache of the base (KV and final hidden states of prompt blocks), within what the live KV
   * pool leaves of CARRYON_KV_CACHE_BYTES; 0: off.
   */
  CARRYON_PREFIX_CACHE_BYTES: int(0, Number.MAX_SAFE_INTEGER).default(512 * 1024 ** 2),
  /** Tokens per prefix-cache block: prompts share cached prefixes in whole blocks. */
  CARRYON_PREFIX_CACHE_BLOCK_TOKENS: int(1, 4096).default(16),
  /** Share cached prefixes across tenants (a hit reveals, through timing, that another tenant sent that prefix). */
  CARRYON_PREFIX_CACHE_SHARED: bool.default(false),
  CARRYON_MAX_WAITING: int(0, 1_000_000).default(256),
  CARRYON_MAX_BODY_BYTES: int(1024, 1 << 30).default(1 << 20),
  /** The most a whole request (headers and body) may take to arrive; a large upload over a slow link needs it long. */
  CARRYON_RECEIVE_TIMEOUT_MS: int(1000, 86_400_000).default(3_600_000),
  /** The longest silence while a request arrives (408 and the connection cut beyond). */
  CARRYON_RECEIVE_IDLE_TIMEOUT_MS: int(100, 3_600_000).default(30_000),
  /** Bytes kept free in the data folder and given back when the disk fills, so deletes still work (0: none). */
  CARRYON_DISK_RESERVE_BYTES: int(0, 2 ** 40).default(32 << 20),
  /** Whole-request deadline for inference routes; a stream past it ends with finish_reason "length". */
  CARRYON_REQUEST_TIMEOUT_MS: int(100, 86_400_000).default(300_000),
  /** An engine step (one batched forward pass) that takes longer means the engine is stuck: requests fail, readiness goes 503. */
  CARRYON_ENGINE_STEP_TIMEOUT_MS: int(1, 3_600_000).default(60_000),
  /** Upper bound on `n` (choices per request). */
  CARRYON_MAX_N: int(1, 128).default(8),
  /** Upper bound on inputs per /v1/embeddings request. */
  CARRYON_MAX_EMBEDDING_INPUTS: int(1, 65536).default(2048),
  /** Upper bound on prompts per /v1/completions request (an array of prompts runs one generation each). */
  CARRYON_MAX_PROMPTS: int(1, 4096).default(128),
  /** Resident carry-on bytes (graph sizes) before the least recently used idle ones are evicted. */
  CARRYON_CARRY_ON_BUDGET_BYTES: int(1, Number.MAX_SAFE_INTEGER).default(1 << 30),
  /** Comma-separated `tenant/carry-on-id` never evicted for space. */
  CARRYON_PINNED_CARRY_ONS: z.string().default(''),
  /**
   * Largest carry-on weights file (weights.safetensors) an upload may carry, 413 beyond; also the most
   * parameter bytes (4 per parameter) a carry-on's architecture may have. Under protobuf's 2 GiB, which
   * bounds the graph the gateway builds from those weights.
   */
  CARRYON_MAX_CARRYON_BYTES: int(1024, 2 ** 31 - 1).default(200 * 1024 * 1024),
  /** Time an upload's build (weights check and graph build, in a child process) may take before it is killed and the upload refused. */
  CARRYON_CARRYON_CHECK_TIMEOUT_MS: int(1000, 3_600_000).default(60_000),
  /** Per-key requests per minute on /v1 inference routes; 0 = unlimited. */
  CARRYON_RATE_LIMIT_RPM: int(0, 10_000_000).default(0),
  /** Per-key prompt + completion tokens per minute; 0 = unlimited. */
  CARRYON_RATE_LIMIT_TPM: int(0, 1_000_000_000).default(0),
  /** With CARRYON_DATABASE_URL: how often replicas pool their rate-limit spending (0: each replica limits alone). */
  CARRYON_RATE_LIMIT_SYNC_MS: int(0, 60_000).default(200),
  /** On SIGTERM: how long in-flight generations may run on before they are ended with a final chunk. */
  CARRYON_DRAIN_TIMEOUT_MS: int(0, 3_600_000).default(30_000),
  /** Who may read /metrics on the main port: admin-scope keys (default) or anyone. */
  CARRYON_METRICS_AUTH: z.enum(['admin', 'none']).default('admin'),
  /** >0: also serve /metrics, without a key, on this separate port (bind it to a private network). */
  CARRYON_METRICS_PORT: int(0, 65535).default(0),
  /** CARRYON_HARVEST*: hidden-state harvesting (src/harvest/config.ts). */
  ...HARVEST_CONFIG,
  CARRYON_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type RawConfig = z.infer<typeof ConfigSchema>;

export interface Config extends RawConfig {
  /** Absolute data folder. */
  dataDir: string;
  inferenceKeys: string[];
  pinnedCarryOns: Set<string>;
  /** The served bases, from CARRYON_MODELS or the single CARRYON_MODEL; the first is the default. */
  bases: BaseModelSetting[];
}

export { ConfigError };

/**
 * For a process's entry point: the validated config, or null after printing what is wrong (the
 * caller exits 2, the conventional status for a usage error).
 */
export function loadConfigOrReport(env: NodeJS.ProcessEnv = process.env): Config | null {
  try {
    return loadConfig(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(err.message);
    return null;
  }
}

/** Validates the environment once; throws a ConfigError naming every bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): Config {
  const known = Object.fromEntries(
    Object.keys(ConfigSchema.shape).flatMap((k) => (env[k] !== undefined && env[k] !== '' ? [[k, env[k]]] : [])),
  );
  const parsed = ConfigSchema.safeParse(known);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const raw = parsed.data;
  if (raw.CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS < 2 * raw.CARRYON_TRAINING_HEARTBEAT_MS) {
    // One late heartbeat must not hand a healthy worker's job to another.
    throw new ConfigError('invalid configuration:\n  CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: must be at least twice CARRYON_TRAINING_HEARTBEAT_MS');
  }
  const bases = baseModelsOf(raw);
  return {
    ...raw,
    dataDir: path.resolve(cwd, raw.CARRYON_DATA_DIR),
    inferenceKeys: raw.CARRYON_API_KEYS.split(',').map((k) => k.trim()).filter(Boolean),
    pinnedCarryOns: new Set(raw.CARRYON_PINNED_CARRY_ONS.split(',').map((k) => k.trim()).filter(Boolean)),
    bases,
  };
}
