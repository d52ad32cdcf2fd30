import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { objectStoreFromConfig } from '../../src/objects/object-store-config.js';
import type { ObjectStore } from '../../src/objects/object-store.js';

/** s3rver's one account: the AWS SDK's credential chain finds it in the environment, as a deployment's would. */
const CREDENTIALS = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
export const TEST_BUCKET = 'carryon-test';

export interface TestBucket {
  endpoint: string;
  /** What a gateway needs to keep its blobs under `prefix` in this bucket. */
  env(prefix: string): Record<string, string>;
  /** An object store on this bucket, as a gateway builds it. */
  store(prefix: string): ObjectStore;
  /** The keys of every object under `prefix` (relative to it), by S3's own listing. */
  keys(prefix: string): Promise<string[]>;
  /** Stops the server (the bucket is unreachable: connections refused) until `start`. */
  stop(): Promise<void>;
  /** Starts it again on the same port, with the same objects. */
  start(): Promise<void>;
  /** Stops it for good and removes its files. */
  close(): Promise<void>;
}

/**
 * A real S3-protocol server (s3rver, from npm: a devDependency, so a fresh clone's `npm ci` is all CI
 * needs) on a free port, storing objects in a temporary folder, with one empty bucket. Started
 * in-process by the tests that need it, so they never skip and can take it down to test an outage.
 */
export async function startTestBucket(): Promise<TestBucket> {
  for (const [k, v] of Object.entries(CREDENTIALS)) process.env[k] = v;
  // Node 20's deprecation notice from the SDK, once per process: noise in test output.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-s3rver-'));
  let port = 0;
  let server: S3rver | null = null;
  const start = async () => {
    const s = new S3rver({ address: '127.0.0.1', port, directory, silent: true, configureBuckets: [{ name: TEST_BUCKET }] });
    port = (await s.run()).port;
    server = s;
  };
  const stop = async () => {
    const s = server;
    server = null;
    if (!s) return;
    // The SDK keeps connections alive; a plain close would wait for them to idle out.
    s.httpServer?.closeAllConnections();
    await s.close();
  };
  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  const env = (prefix: string) => ({
    CARRYON_OBJECT_STORE_URL: `s3://${TEST_BUCKET}/${prefix}`,
    CARRYON_OBJECT_STORE_ENDPOINT: endpoint,
    CARRYON_OBJECT_STORE_PATH_STYLE: 'true',
    // An outage is answered in well under a second, not after the production defaults' retries.
    CARRYON_OBJECT_STORE_TIMEOUT_MS: '2000',
    CARRYON_OBJECT_STORE_ATTEMPTS: '2',
  });
  return {
    endpoint,
    env,
    store: (prefix) => {
      const e = env(prefix);
      const store = objectStoreFromConfig({
        CARRYON_OBJECT_STORE_URL: e.CARRYON_OBJECT_STORE_URL,
        CARRYON_OBJECT_STORE_ENDPOINT: endpoint,
        CARRYON_OBJECT_STORE_REGION: 'us-east-1',
        CARRYON_OBJECT_STORE_PATH_STYLE: true,
        CARRYON_OBJECT_STORE_TIMEOUT_MS: 2000,
        CARRYON_OBJECT_STORE_ATTEMPTS: 2,
      });
      if (!store) throw new Error('no object store configured');
      return store;
    },
    keys: async (prefix) => {
      const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: CREDENTIALS.AWS_ACCESS_KEY_ID, secretAccessKey: CREDENTIALS.AWS_SECRET_ACCESS_KEY } });
      const out: string[] = [];
      try {
        let token: string | undefined;
        do {
          const r = await client.send(new ListObjectsV2Command({ Bucket: TEST_BUCKET, Prefix: `${prefix}/`, ContinuationToken: token }));
          for (const o of r.Contents ?? []) out.push(o.Key!.slice(prefix.length + 1));
          token = r.NextContinuationToken;
        } while (token);
      } finally {
        client.destroy();
      }
      return out;
    },
    stop,
    start,
    close: async () => {
      await stop();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}
