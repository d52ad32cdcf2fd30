/**
 * Schema migrations, applied in order; `PRAGMA user_version` records how many have run. Append
 * only: a released migration is never edited, because databases in the field already ran it.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    deleted_at  TEXT
  ) STRICT;

  CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY,
    -- NULL only for global admin keys.
    tenant_id         TEXT REFERENCES tenants(id),
    scope             TEXT NOT NULL CHECK (scope IN ('admin', 'inference')),
    name              TEXT,
    key_hash          BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix            TEXT NOT NULL,
    default_carry_on  TEXT,
    harvest_policy    TEXT,
    -- 'config': from CARRYON_ADMIN_KEY / CARRYON_API_KEYS, kept in step with them at boot.
    origin            TEXT NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'config')),
    created_at        TEXT NOT NULL,
    revoked_at        TEXT,
    CHECK (scope = 'admin' OR tenant_id IS NOT NULL)
  ) STRICT;
  CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id);

  CREATE TABLE carry_ons (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    id          TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    deleted_at  TEXT,
    PRIMARY KEY (tenant_id, id)
  ) STRICT;

  CREATE TABLE carry_on_versions (
    tenant_id    TEXT NOT NULL,
    carry_on_id  TEXT NOT NULL,
    version      INTEGER NOT NULL CHECK (version > 0),
    manifest     TEXT NOT NULL,
    dir          TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    -- Deleted versions keep their row so a version number is never handed out twice.
    deleted_at   TEXT,
    PRIMARY KEY (tenant_id, carry_on_id, version),
    FOREIGN KEY (tenant_id, carry_on_id) REFERENCES carry_ons(tenant_id, id)
  ) STRICT;

  CREATE TABLE carry_on_aliases (
    tenant_id    TEXT NOT NULL,
    carry_on_id  TEXT NOT NULL,
    alias        TEXT NOT NULL,
    version      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, carry_on_id, alias),
    FOREIGN KEY (tenant_id, carry_on_id, version) REFERENCES carry_on_versions(tenant_id, carry_on_id, version)
  ) STRICT;
  `,
  // 2: the harvest shard index (src/store/harvest-shards.ts). No foreign key to tenants: forgetting a
  // tenant deletes its shard rows explicitly, and tenant_id is NULL for traffic of no tenant.
  `
  CREATE TABLE harvest_shards (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT,
    -- Relative to the data folder, so the folder can move (a volume remounted elsewhere).
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL CHECK (bytes >= 0),
    rows        INTEGER NOT NULL CHECK (rows >= 0),
    sequences   INTEGER NOT NULL CHECK (sequences >= 0),
    -- Unix ms when the shard was opened (its oldest data): retention's clock.
    created_at  INTEGER NOT NULL,
    -- The shard's safetensors __metadata__, as JSON.
    metadata    TEXT NOT NULL,
    pushed_at   TEXT
  ) STRICT;
  CREATE INDEX harvest_shards_by_created ON harvest_shards(created_at, id);
  CREATE INDEX harvest_shards_by_tenant ON harvest_shards(tenant_id, created_at);
  `,
];
