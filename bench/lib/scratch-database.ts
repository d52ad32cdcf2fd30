import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** A throwaway PostgreSQL database on the server of `adminUrl` (whose user may create databases). */
export interface ScratchDatabase {
  /** The new database's URL: `adminUrl` with its own database name. */
  url: string;
  /** Drops it, connections and all. */
  drop: () => Promise<void>;
}

/** Creates a fresh, empty database named `<prefix>_<random>`, so runs never see each other's rows. */
export async function scratchDatabase(adminUrl: string, prefix: string): Promise<ScratchDatabase> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  await adminQuery(adminUrl, `CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => adminQuery(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

async function adminQuery(adminUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
