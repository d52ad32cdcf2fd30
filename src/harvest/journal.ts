/**
 * The write-ahead journal of one open shard. Sequences accepted into a shard are appended here (after
 * σ, so the journal holds exactly the bytes the shard will) and kept in memory; when the shard is
 * written and indexed, the journal is deleted. After a crash, `readJournal` returns every complete
 * record, so the shard can be rebuilt.
 *
 * Record: u32 magic "HJR1" | u32 type | u32 payload length | u32 crc32(type, length, payload) | payload.
 * The CRC covers the length, so a torn or corrupted record is never mistaken for a complete one. The
 * reader resynchronises on the next valid record after a bad region, so one corrupt record costs
 * only itself. fsync is batched (the writer's timer and shard roll), not per record: a power loss may
 * drop the last moments of sequences, never corrupt what is read back.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncDir } from '../core/fs-atomic.js';
import { writeAllV, type EncodedSequence, type ShardSchema } from './shard-format.js';
import type { EncodedRows } from './sigma.js';

export const JOURNAL_SUFFIX = '.journal';
const MAGIC = Buffer.from('HJR1', 'latin1');
const RECORD_HEADER = 16;
/** A length beyond this is corruption, not a record (shards are far smaller). */
const MAX_PAYLOAD = 1 << 30;

const enum RecordType {
  Header = 1,
  Sequence = 2,
}

/** The journal's first record: what shard its sequences belong to. */
export interface JournalHeader {
  shardId: string;
  createdAt: number;
  schema: ShardSchema;
}

interface SequenceMeta {
  requestId: string;
  tenantId: string | null;
  carryOnId: string | null;
  finishedAt: number;
  rows: number;
}

export class JournalWriter {
  private dirty = false;
  private closed = false;
  /** Bytes in the file so far. */
  bytes = 0;

  private constructor(
    readonly file: string,
    private readonly fd: number,
  ) {}

  /**
   * Creates the journal with its header record and makes its existence durable (file and folder
   * fsynced), so a later crash always finds the header of whatever records follow.
   */
  static create(file: string, header: JournalHeader): JournalWriter {
    const fd = fs.openSync(file, 'wx', 0o640);
    const w = new JournalWriter(file, fd);
    try {
      w.writeRecord(RecordType.Header, [Buffer.from(JSON.stringify(header), 'utf8')]);
      fs.fsyncSync(fd);
      fsyncDir(path.dirname(file));
    } catch (err) {
      w.close();
      fs.rmSync(file, { force: true });
      throw err;
    }
    w.dirty = false;
    return w;
  }

  /** Appends one sequence; returns the record's size. Not synced: see `sync`. */
  append(seq: EncodedSequence): number {
    const meta: SequenceMeta = {
      requestId: seq.requestId,
      tenantId: seq.tenantId,
      carryOnId: seq.carryOnId,
      finishedAt: seq.finishedAt,
      rows: seq.rows,
    };
    const json = Buffer.from(JSON.stringify(meta), 'utf8');
    // u32 JSON length, JSON, zero padding to 8 so the binary sections can be viewed aligned.
    const lead = Buffer.alloc(Math.ceil((4 + json.length) / 8) * 8);
    lead.writeUInt32LE(json.length, 0);
    json.copy(lead, 4);
    const chunks: Uint8Array[] = [lead];
    for (const l of seq.layers) {
      chunks.push(bytesOf(l.data));
      if (l.scale) chunks.push(bytesOf(l.scale));
    }
    chunks.push(bytesOf(seq.tokenIds), bytesOf(seq.targetIds), bytesOf(seq.isCompletion));
    return this.writeRecord(RecordType.Sequence, chunks);
  }

  /** fsyncs if anything was appended since the last sync. */
  sync(): void {
    if (this.dirty && !this.closed) {
      fs.fsyncSync(this.fd);
      this.dirty = false;
    }
  }

  close(): void {
    if (this.closed) return;
    try {
      this.sync();
    } finally {
      this.closed = true;
      fs.closeSync(this.fd);
    }
  }

  private writeRecord(type: RecordType, payload: Uint8Array[]): number {
    if (this.closed) throw new Error(`journal ${this.file} is closed`);
    const length = payload.reduce((a, c) => a + c.byteLength, 0);
    const head = Buffer.alloc(RECORD_HEADER);
    MAGIC.copy(head, 0);
    head.writeUInt32LE(type, 4);
    head.writeUInt32LE(length, 8);
    let crc = crc32(head.subarray(4, 12));
    for (const c of payload) crc = crc32(c, crc);
    head.writeUInt32LE(crc >>> 0, 12);
    const n = writeAllV(this.fd, [head, ...payload]);
    this.bytes += n;
    this.dirty = true;
    return n;
  }
}

export interface JournalContents {
  header: JournalHeader | null;
  sequences: EncodedSequence[];
  fileBytes: number;
  /** Bytes in records that were read back. */
  validBytes: number;
  /** Bytes that could not be read back (torn tail, corruption, records without a header). */
  lostBytes: number;
  /**
   * Sequences known lost: one per unreadable region (a torn tail is one partial record; a corrupt
   * region is at least one) plus complete sequence records that cannot be decoded.
   */
  lostSequences: number;
}

/** Reads every complete record of a journal, skipping torn or corrupt regions. */
export function readJournal(file: string): JournalContents {
  const buf = fs.readFileSync(file);
  let header: JournalHeader | null = null;
  const sequences: EncodedSequence[] = [];
  let validBytes = 0;
  let lostSequences = 0;
  let pos = 0;
  while (pos < buf.length) {
    const rec = recordAt(buf, pos);
    if (!rec) {
      // Bad region: skip to the next offset where a whole valid record starts.
      lostSequences++;
      let next = buf.indexOf(MAGIC, pos + 1);
      while (next !== -1 && !recordAt(buf, next)) next = buf.indexOf(MAGIC, next + 1);
      pos = next === -1 ? buf.length : next;
      continue;
    }
    const payload = buf.subarray(pos + RECORD_HEADER, pos + RECORD_HEADER + rec.length);
    const size = RECORD_HEADER + rec.length;
    pos += size;
    if (rec.type === RecordType.Header && header === null) {
      header = parseHeader(payload);
      if (header) validBytes += size;
      continue;
    }
    const seq = rec.type === RecordType.Sequence && header ? decodeSequence(payload, header.schema) : null;
    if (seq) {
      sequences.push(seq);
      validBytes += size;
    } else {
      lostSequences++;
    }
  }
  return { header, sequences, fileBytes: buf.length, validBytes, lostBytes: buf.length - validBytes, lostSequences };
}

/** A record whose type is no RecordType member is returned as is; the reader's type checks skip it. */
function recordAt(buf: Buffer, pos: number): { type: RecordType; length: number } | null {
  if (buf.length - pos < RECORD_HEADER) return null;
  if (buf.compare(MAGIC, 0, 4, pos, pos + 4) !== 0) return null;
  const type = buf.readUInt32LE(pos + 4);
  const length = buf.readUInt32LE(pos + 8);
  if (length > MAX_PAYLOAD || pos + RECORD_HEADER + length > buf.length) return null;
  const crc = crc32(buf.subarray(pos + RECORD_HEADER, pos + RECORD_HEADER + length), crc32(buf.subarray(pos + 4, pos + 12)));
  return crc >>> 0 === buf.readUInt32LE(pos + 12) ? { type, length } : null;
}

function parseHeader(payload: Buffer): JournalHeader | null {
  try {
    const h = JSON.parse(payload.toString('utf8')) as JournalHeader;
    return typeof h.shardId === 'string' && typeof h.createdAt === 'number' && h.schema ? h : null;
  } catch {
    return null;
  }
}

/** Copies each section into its own aligned typed array; null if the record does not fit the schema. */
function decodeSequence(payload: Buffer, schema: ShardSchema): EncodedSequence | null {
  if (payload.length < 4) return null;
  const jsonLen = payload.readUInt32LE(0);
  let pos = Math.ceil((4 + jsonLen) / 8) * 8;
  if (pos > payload.length) return null;
  let meta: SequenceMeta;
  try {
    meta = JSON.parse(payload.toString('utf8', 4, 4 + jsonLen)) as SequenceMeta;
  } catch {
    return null;
  }
  const rows = meta.rows;
  if (!Number.isSafeInteger(rows) || rows < 0) return null;
  const take = (bytes: number): Uint8Array | null => {
    if (pos + bytes > payload.length) return null;
    const out = new Uint8Array(bytes);
    out.set(payload.subarray(pos, pos + bytes));
    pos += bytes;
    return out;
  };
  const elem = schema.dtype === 'F32' ? 4 : schema.dtype === 'F16' ? 2 : 1;
  const layers: EncodedRows[] = [];
  for (let i = 0; i < schema.layers.length; i++) {
    const data = take(rows * schema.storedSize * elem);
    const scale = schema.dtype === 'I8' ? take(rows * 4) : undefined;
    if (!data || scale === null) return null;
    layers.push({
      dtype: schema.dtype,
      rows,
      cols: schema.storedSize,
      data:
        schema.dtype === 'F32'
          ? new Float32Array(data.buffer)
          : schema.dtype === 'F16'
            ? new Uint16Array(data.buffer)
            : new Int8Array(data.buffer),
      scale: scale ? new Float32Array(scale.buffer) : null,
    });
  }
  const tokenIds = take(rows * 4);
  const targetIds = take(rows * 4);
  const isCompletion = take(rows);
  if (!tokenIds || !targetIds || !isCompletion || pos !== payload.length) return null;
  return {
    requestId: meta.requestId,
    tenantId: meta.tenantId,
    carryOnId: meta.carryOnId,
    finishedAt: meta.finishedAt,
    rows,
    layers,
    tokenIds: new Int32Array(tokenIds.buffer),
    targetIds: new Int32Array(targetIds.buffer),
    isCompletion,
  };
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
