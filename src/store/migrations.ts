import type { Dialect } from './sql-driver.js';

/** Column types where the dialects differ; the SQLite texts are exactly those released before PostgreSQL. */
interface Types {
  text: string;
  bytes: string;
  int: string;
  real: string;
  strict: string;
}

const TYPES: Record<Dialect, Types> = {
  sqlite: { text: 'TEXT', bytes: 'BLOB', int: 'INTEGER', real: 'REAL', strict: ' STRICT' },
  // COLLATE "C": ORDER BY id/created_at compares bytes, as SQLite does, whatever the database's locale.
  // BIGINT: versions, byte counts and ms timestamps (SQLite's INTEGER is 64-bit too).
  postgres: { text: 'TEXT COLLATE "C"', bytes: 'BYTEA', int: 'BIGINT', real: 'DOUBLE PRECISION', strict: '' },
};

/**
 * Schema migrations, applied in order; the schema version (SQLite: `PRAGMA user_version`;
 * PostgreSQL: the carryon_schema table) records how many have run. Append only: a released
 * migration is never edited, because databases in the field already ran it.
 */
const STEPS: ReadonlyArray<(t: Types) => string> = [
  (t) => `
  CREATE TABLE tenants (
    id          ${t.text} PRIMARY KEY,
    name        ${t.text} NOT NULL,
    created_at  ${t.text} NOT NULL,
    deleted_at  ${t.text}
  )${t.strict};

  CREATE TABLE api_keys (
    id                ${t.text} PRIMARY KEY,
    -- NULL only for global admin keys.
    tenant_id         ${t.text} REFERENCES tenants(id),
    scope             ${t.text} NOT NULL CHECK (scope IN ('admin', 'inference')),
    name              ${t.text},
    key_hash          ${t.bytes} NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix            ${t.text} NOT NULL,
    default_carry_on  ${t.text},
    harvest_policy    ${t.text},
    -- 'config': from CARRYON_ADMIN_KEY / CARRYON_API_KEYS, kept in step with them at boot.
    origin            ${t.text} NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'config')),
    created_at        ${t.text} NOT NULL,
    revoked_at        ${t.text},
    CHECK (scope = 'admin' OR tenant_id IS NOT NULL)
  )${t.strict};
  CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id);

  CREATE TABLE carry_ons (
    tenant_id   ${t.text} NOT NULL REFERENCES tenants(id),
    id          ${t.text} NOT NULL,
    created_at  ${t.text} NOT NULL,
    deleted_at  ${t.text},
    PRIMARY KEY (tenant_id, id)
  )${t.strict};

  CREATE TABLE carry_on_versions (
    tenant_id    ${t.text} NOT NULL,
    carry_on_id  ${t.text} NOT NULL,
    version      ${t.int} NOT NULL CHECK (version > 0),
    manifest     ${t.text} NOT NULL,
    dir          ${t.text} NOT NULL,
    sha256       ${t.text} NOT NULL,
    bytes        ${t.int} NOT NULL,
    created_at   ${t.text} NOT NULL,
    -- Deleted versions keep their row so a version number is never handed out twice.
    deleted_at   ${t.text},
    PRIMARY KEY (tenant_id, carry_on_id, version),
    FOREIGN KEY (tenant_id, carry_on_id) REFERENCES carry_ons(tenant_id, id)
  )${t.strict};

  CREATE TABLE carry_on_aliases (
    tenant_id    ${t.text} NOT NULL,
    carry_on_id  ${t.text} NOT NULL,
    alias        ${t.text} NOT NULL,
    version      ${t.int} NOT NULL,
    PRIMARY KEY (tenant_id, carry_on_id, alias),
    FOREIGN KEY (tenant_id, carry_on_id, version) REFERENCES carry_on_versions(tenant_id, carry_on_id, version)
  )${t.strict};
  `,
  // 2: the harvest shard index (src/store/harvest-shards.ts). No foreign key to tenants: forgetting a
  // tenant deletes its shard rows explicitly, and tenant_id is NULL for traffic of no tenant.
  (t) => `
  CREATE TABLE harvest_shards (
    id          ${t.text} PRIMARY KEY,
    tenant_id   ${t.text},
    -- Relative to the data folder, so the folder can move (a volume remounted elsewhere).
    path        ${t.text} NOT NULL,
    bytes       ${t.int} NOT NULL CHECK (bytes >= 0),
    rows        ${t.int} NOT NULL CHECK (rows >= 0),
    sequences   ${t.int} NOT NULL CHECK (sequences >= 0),
    -- Unix ms when the shard was opened (its oldest data): retention's clock.
    created_at  ${t.int} NOT NULL,
    -- The shard's safetensors __metadata__, as JSON.
    metadata    ${t.text} NOT NULL,
    pushed_at   ${t.text}
  )${t.strict};
  CREATE INDEX harvest_shards_by_created ON harvest_shards(created_at, id);
  CREATE INDEX harvest_shards_by_tenant ON harvest_shards(tenant_id, created_at);
  `,
  // 3: per-key rate-limit buckets shared by the replicas (src/store/rate-buckets.ts). No foreign key:
  // a row is a few numbers, rewritten every sync, and a revoked key's row simply stops changing.
  (t) => `
  CREATE TABLE rate_buckets (
    key_id      ${t.text} NOT NULL,
    kind        ${t.text} NOT NULL CHECK (kind IN ('requests', 'tokens')),
    level       ${t.real} NOT NULL,
    per_minute  ${t.real} NOT NULL CHECK (per_minute > 0),
    -- Unix ms of the last sync that wrote the row: refill runs from here.
    at          ${t.int} NOT NULL,
    PRIMARY KEY (key_id, kind)
  )${t.strict};
  `,
  // 4: where a shard is in the object store (CARRYON_OBJECT_STORE_URL), once uploaded; NULL while it
  // is only on the disk of the replica that wrote it (src/harvest/service.ts uploads it later).
  (t) => `
  ALTER TABLE harvest_shards ADD COLUMN object_key ${t.text};
  `,
  // 5: the training job queue (src/admin/training-job-queue.ts), claimed by one worker at a time (gateway
  // or `carryon train-worker`). No foreign key to tenants: a job's row outlives its tenant, as its
  // run folder does, and is what an operator looks at afterwards.
  (t) => `
  CREATE TABLE training_jobs (
    id                ${t.text} PRIMARY KEY,
    tenant_id         ${t.text} NOT NULL,
    -- The validated request body (CreateTrainingJobBody), as JSON.
    body              ${t.text} NOT NULL,
    -- JSON array of shard files, relative to the data folder (like harvest_shards.path).
    shard_paths       ${t.text} NOT NULL,
    -- Only a worker serving this base may claim the job.
    base_fingerprint  ${t.text} NOT NULL,
    -- The admin key id that created it: the worker registers the carry-on in its name.
    created_by        ${t.text},
    status            ${t.text} NOT NULL CHECK (status IN ('queued', 'running', 'registering', 'succeeded', 'failed', 'cancelled')),
    created_at        ${t.text} NOT NULL,
    started_at        ${t.text},
    finished_at       ${t.text},
    error             ${t.text},
    -- JSON: the registered carry-on version, and the progress/eval read once when the job ended.
    carry_on_version  ${t.text},
    outcome           ${t.text},
    -- Claims so far (a retry after a lost worker is one more).
    attempts          ${t.int} NOT NULL DEFAULT 0,
    claimed_by        ${t.text},
    -- Unix ms of the claiming worker's last heartbeat.
    heartbeat_at      ${t.int},
    -- Set by a cancel on any replica; the claiming worker sees it on its next heartbeat.
    cancel_requested  ${t.int} NOT NULL DEFAULT 0
  )${t.strict};
  CREATE INDEX training_jobs_by_status ON training_jobs(status, created_at);
  CREATE INDEX training_jobs_by_tenant ON training_jobs(tenant_id, created_at);
  `,
];

/** How many migrations this gateway knows: a database past it was written by a newer gateway. */
export const SCHEMA_VERSION = STEPS.length;

/** Migration `i` (0-based) as `dialect` runs it. */
export function migrationSql(dialect: Dialect, i: number): string {
  return STEPS[i](TYPES[dialect]);
}

/** The refusal when a database was written by a newer gateway (both backends). */
export function newerSchemaMessage(location: string, version: number): string {
  return `${location} has schema version ${version}, newer than this gateway knows (${SCHEMA_VERSION}); upgrade the gateway or restore a matching database`;
}
