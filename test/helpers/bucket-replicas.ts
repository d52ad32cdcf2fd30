import fs from 'node:fs';
import type { ObjectStore } from '../../src/objects/object-store.js';
import { testDatabase, type TestDatabase } from './databases.js';
import { freshDataDir, startTestGateway, type TestGateway } from './gateway.js';
import { startTestBucket, type TestBucket } from './object-store.js';

export interface BucketReplicas {
  database: TestDatabase;
  bucket: TestBucket;
  /** The gateways' object store, as they see it (same bucket and prefix). */
  objects: ObjectStore;
  /** The environment both gateways share (database, bucket and `env`): what another node of theirs needs. */
  shared: Record<string, string>;
  a: TestGateway;
  b: TestGateway;
  /** Stops both gateways and the bucket, drops the database, removes the data folders. */
  close(): Promise<void>;
}

/**
 * Two gateways, each with its own data folder, over one fresh PostgreSQL database and one bucket
 * (s3rver, under a prefix of their own): replicas that share nothing but those two.
 */
export async function startBucketReplicas(name: string, env: Record<string, string> = {}): Promise<BucketReplicas> {
  const prefix = `${name}-${Date.now()}`;
  const database = await testDatabase('postgres');
  const bucket = await startTestBucket();
  const shared = { ...database.env, ...bucket.env(prefix), ...env };
  const a = await startTestGateway({ ...shared, CARRYON_DATA_DIR: freshDataDir(`carryon-${name}-a-`) });
  const b = await startTestGateway({ ...shared, CARRYON_DATA_DIR: freshDataDir(`carryon-${name}-b-`) });
  return {
    database,
    bucket,
    objects: bucket.store(prefix),
    shared,
    a,
    b,
    close: async () => {
      await Promise.all([a.close(), b.close()]);
      await database.drop();
      await bucket.close();
      for (const g of [a, b]) fs.rmSync(g.dataDir, { recursive: true, force: true });
    },
  };
}
