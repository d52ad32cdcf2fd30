import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { downloadVerified, ObjectMismatchError } from '../../src/objects/download-verified.js';
import { LocalObjectStore } from '../../src/objects/local-object-store.js';
import { objectStoreUrlProblem, s3LocationOf } from '../../src/objects/object-store-config.js';
import { ObjectStoreError, type ObjectStore } from '../../src/objects/object-store.js';
import { S3ObjectStore } from '../../src/objects/s3-object-store.js';
import { S3Client } from '@aws-sdk/client-s3';
import { TEST_BUCKET } from '../helpers/object-store.js';
import { freshDataDir } from '../helpers/gateway.js';
import { startTestBucket, type TestBucket } from '../helpers/object-store.js';

/**
 * The object store against a real S3-protocol server (s3rver) and against a folder: the same
 * contract, so the gateway cannot tell them apart.
 */
let bucket: TestBucket;
let work: string;
beforeAll(async () => {
  bucket = await startTestBucket();
  work = freshDataDir('carryon-objects-');
});
afterAll(async () => {
  await bucket?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const CONTENT = 'the quick brown fox jumps over the lazy dog\n'.repeat(1000);
const SHA = createHash('sha256').update(CONTENT).digest('hex');

describe.each([
  ['s3', () => bucket.store(`unit-${Date.now()}`)],
  ['local folder', () => new LocalObjectStore(path.join(work, 'folder-store'))],
])('%s object store', (_name, make: () => ObjectStore) => {
  let store: ObjectStore;
  let file: string;
  beforeAll(() => {
    store = make();
    file = path.join(work, `content-${_name.replace(' ', '-')}`);
    fs.writeFileSync(file, CONTENT);
  });

  it('puts a file; head, get and a byte range read it back; delete removes it', async () => {
    await store.putFile('a/blob.bin', file);
    const info = await store.head('a/blob.bin');
    expect(info).toMatchObject({ bytes: CONTENT.length });
    expect(info?.etag).toMatch(/^".+"$/);
    const whole = await store.get('a/blob.bin');
    expect(await text(whole!.body)).toBe(CONTENT);
    const part = await store.get('a/blob.bin', { start: 4, end: 8 });
    expect(await text(part!.body)).toBe('quick');
    expect(part?.bytes).toBe(CONTENT.length);
    expect(part?.etag).toBe(info?.etag);
    await store.delete('a/blob.bin');
    expect(await store.head('a/blob.bin')).toBeNull();
    expect(await store.get('a/blob.bin')).toBeNull();
    await store.delete('a/blob.bin'); // a missing object is not an error
  });

  it('downloads into place only when the digest matches, leaving no partial file otherwise', async () => {
    await store.putFile('b/blob.bin', file);
    const dest = path.join(work, `dl-${_name.replace(' ', '-')}`, 'blob.bin');
    await downloadVerified(store, 'b/blob.bin', dest, SHA);
    expect(fs.readFileSync(dest, 'utf8')).toBe(CONTENT);

    const other = path.join(path.dirname(dest), 'other.bin');
    await expect(downloadVerified(store, 'b/blob.bin', other, '0'.repeat(64))).rejects.toMatchObject({ reason: 'corrupt' });
    await expect(downloadVerified(store, 'b/missing.bin', other, SHA)).rejects.toBeInstanceOf(ObjectMismatchError);
    expect(fs.readdirSync(path.dirname(dest))).toEqual(['blob.bin']);
  });
});

describe('a large file', () => {
  it('goes up in parts (multipart upload) and comes back byte for byte', async () => {
    const client = new S3Client({ endpoint: bucket.endpoint, region: 'us-east-1', forcePathStyle: true, maxAttempts: 1 });
    // What went over the wire, by S3 operation (an SDK middleware: s3rver's ETags do not tell parts apart).
    const sent: string[] = [];
    client.middlewareStack.add((next, context) => (args) => (sent.push(context.commandName as string), next(args)), { step: 'initialize' });
    const store = new S3ObjectStore({
      bucket: TEST_BUCKET,
      prefix: 'multipart/',
      client,
      timeoutMs: 5000,
      retry: { attempts: 1, firstDelayMs: 10 },
      multipartBytes: 5 * 1024 * 1024,
      partBytes: 5 * 1024 * 1024,
    });
    const big = path.join(work, 'big.bin');
    const data = Buffer.alloc(11 * 1024 * 1024 + 123);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
    fs.writeFileSync(big, data);
    await store.putFile('big.bin', big);
    expect(sent).toEqual(['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand']);
    const dest = path.join(work, 'big-back.bin');
    await downloadVerified(store, 'big.bin', dest, createHash('sha256').update(data).digest('hex'));
    const tail = await store.get('big.bin', { start: data.length - 10, end: data.length - 1 });
    expect(Buffer.from(await tail!.body.toArray().then((c) => Buffer.concat(c as Buffer[])))).toEqual(data.subarray(data.length - 10));
  });
});

describe('an S3 store whose server is down', () => {
  it('fails with a retryable ObjectStoreError after its bounded tries, in seconds', async () => {
    const store = bucket.store('down');
    await bucket.stop();
    try {
      const started = Date.now();
      const err = await store.head('x').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ObjectStoreError);
      expect(err).toMatchObject({ retryable: true });
      expect((err as Error).message).toContain(`s3://carryon-test/down/`);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await bucket.start();
    }
    expect(await store.head('x')).toBeNull();
  });
});

describe('CARRYON_OBJECT_STORE_URL', () => {
  it('parses s3://bucket/prefix and refuses what cannot be one', () => {
    expect(s3LocationOf('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(s3LocationOf('s3://my-bucket/a/b/')).toEqual({ bucket: 'my-bucket', prefix: 'a/b/' });
    expect(s3LocationOf('s3://My_Bucket/x')).toBeNull();
    expect(s3LocationOf('s3://bucket/../x')).toBeNull();
    expect(objectStoreUrlProblem('')).toBeNull();
    expect(objectStoreUrlProblem('file:///mnt/blobs')).toBeNull();
    expect(objectStoreUrlProblem('file://relative')).toMatch(/absolute/);
    expect(objectStoreUrlProblem('https://bucket.example')).toMatch(/s3:\/\//);
  });
});
