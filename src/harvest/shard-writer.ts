/**
 * The durable harvest writer. Each tenant has at most one open shard per base (a shard holds one
 * base's states, named by its fingerprint): its sequences are σ-encoded,
 * appended to the shard's journal and kept in memory. A shard closes by size or age; closing writes
 * `<id>.safetensors` atomically (temp file, fsync, rename, folder fsync), reports it through
 * `onShardFinished` and only after that resolves deletes the journal, so at every instant each
 * accepted sequence is in a journal, a complete shard file, or both; never in neither.
 *
 * On disk: `<dir>/<tenant folder>/<shard id>.safetensors` and `<shard id>.journal` (see
 * `tenantDirName`). All file I/O is synchronous on purpose: this runs in the harvest worker thread
 * (or an offline CLI), never on the serving event loop, and ordering is simpler to reason about.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../core/fs-atomic.js';
import type { HarvestedSequence } from './types.js';
import { JOURNAL_SUFFIX, JournalWriter, readJournal } from './journal.js';
import {
  SHARD_SUFFIX,
  ShardValidationError,
  encodedSequenceBytes,
  schemaKey,
  sequenceHeaderBytes,
  validateShardFile,
  writeShardFile,
  type EncodedSequence,
  type ShardInfo,
  type ShardSchema,
} from './shard-format.js';
import { CODEC_DTYPE, type Sigma } from './sigma.js';
import { HarvestCounters } from './stats.js';

export interface ShardWriterOptions {
  dir: string;
  sigma: Sigma;
  /** A shard closes before a sequence would take it past this (a single larger sequence gets its own shard). */
  maxShardBytes: number;
  /** A shard closes this long after its first sequence, however small. */
  maxShardAgeMs: number;
  /** How often dirty journals are fsynced (default 1000 ms): the most recent data a power loss can take. */
  journalSyncMs?: number;
  /** Index the shard; may be async. The journal is deleted only after it resolves. */
  onShardFinished: (info: ShardInfo) => void | Promise<void>;
  counters?: HarvestCounters;
  onError?: (err: Error, context: string) => void;
  now?: () => number;
}

export interface RecoveryReport {
  /** Shards rebuilt from journals (already reported through onShardFinished). */
  recovered: ShardInfo[];
  recoveredSequences: number;
  lostSequences: number;
  lostBytes: number;
  tempFilesDeleted: number;
  /** Journals whose shard had already been written (crash between rename and journal deletion). */
  staleJournalsDeleted: number;
}

export interface RescanReport {
  /** Valid shards that were not in `knownIds`, reported through onShardFinished. */
  reported: ShardInfo[];
  /** Shard files that failed validation: never reported, left on disk for inspection. */
  invalid: Array<{ path: string; reason: string }>;
}

export interface ForgetReport {
  /** Ids of the shard files deleted. */
  shardIds: string[];
  /** Sequences of the open shard discarded before being written. */
  discardedSequences: number;
  filesDeleted: number;
}

interface OpenShard {
  id: string;
  tenantKey: string;
  /** Key in `open`: the tenant's folder and the base's fingerprint. */
  openKey: string;
  dir: string;
  schema: ShardSchema;
  schemaKey: string;
  createdAt: number;
  sequences: EncodedSequence[];
  /** Estimated file size: data section plus header. */
  bytes: number;
  journal: JournalWriter;
}

/** Fixed part of a shard header (tensor entries, metadata keys), for the size estimate. */
const HEADER_BASE_BYTES = 2048;

export class ShardWriter {
  readonly counters: HarvestCounters;
  private readonly open = new Map<string, OpenShard>();
  /** Index callbacks in flight, with the tenant folder of their shard. */
  private readonly pending = new Map<Promise<void>, { tenantKey: string; id: string }>();
  /** Ids reported successfully by this process: rescan never reports a shard twice. */
  private readonly reported = new Set<string>();
  private readonly timer: NodeJS.Timeout;
  private lastSync: number;
  /** When the last shard opened: the next opens at least 1 ms later, so (created_at, id) orders shards as opened. */
  private lastOpened = 0;
  private closed = false;
  private readonly now: () => number;
  private readonly syncMs: number;

  constructor(private readonly opts: ShardWriterOptions) {
    if (!(opts.maxShardBytes > 0)) throw new Error('maxShardBytes must be positive');
    if (!(opts.maxShardAgeMs > 0)) throw new Error('maxShardAgeMs must be positive');
    this.counters = opts.counters ?? new HarvestCounters(new ArrayBuffer(1024));
    this.now = opts.now ?? Date.now;
    this.syncMs = opts.journalSyncMs ?? 1000;
    this.lastSync = this.now();
    fs.mkdirSync(opts.dir, { recursive: true });
    const tickMs = Math.max(10, Math.min(this.syncMs, opts.maxShardAgeMs / 4));
    this.timer = setInterval(() => this.tick(), tickMs);
    // Never keeps a process alive by itself: close()/flush() is how data is finished.
    this.timer.unref();
  }

  /**
   * Encodes and journals one sequence (synchronously); may close the tenant's shard of its base. Throws on an
   * inconsistent sequence or a disk error: the sequence is then not accepted. The id arrays are kept
   * by reference until the shard is written: the caller must not reuse them (the worker owns
   * transferred ones; the offline harvest allocates fresh ones).
   */
  append(seq: HarvestedSequence): void {
    if (this.closed) throw new Error('shard writer is closed');
    const rows = checkSequence(seq);
    if (rows === 0) return;
    const sigma = this.opts.sigma;
    const encoded: EncodedSequence = {
      requestId: seq.requestId,
      tenantId: seq.tenantId,
      carryOnId: seq.carryOnId,
      finishedAt: seq.finishedAt,
      rows,
      layers: seq.hidden.map((h) => sigma.encode(h, rows, seq.hiddenSize)),
      tokenIds: seq.tokenIds,
      targetIds: seq.targetIds,
      isCompletion: seq.isCompletion,
    };
    const key = tenantDirName(seq.tenantId);
    const seqBytes = encodedSequenceBytes(encoded) + sequenceHeaderBytes(encoded);
    let shard = this.open.get(openKeyOf(key, seq.baseFingerprint));
    const sKey = schemaKey({ layers: seq.layers, hiddenSize: seq.hiddenSize });
    if (shard && (shard.schemaKey !== sKey || shard.bytes + seqBytes > this.opts.maxShardBytes)) {
      this.roll(shard);
      shard = undefined;
    }
    shard ??= this.openShard(key, seq);
    try {
      shard.journal.append(encoded);
    } catch (err) {
      // The journal may now end in a partial record: close the shard with what it holds (its
      // sequences are intact in memory) so no later record is written after the torn one.
      this.roll(shard);
      throw err;
    }
    shard.sequences.push(encoded);
    shard.bytes += seqBytes;
    this.counters.add('journaled');
    if (shard.bytes >= this.opts.maxShardBytes) this.roll(shard);
  }

  /** Closes every open shard and waits for every index callback. */
  async flush(): Promise<void> {
    for (const shard of [...this.open.values()]) this.roll(shard);
    await this.settle();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    clearInterval(this.timer);
  }

  stats(): ReturnType<HarvestCounters['snapshot']> {
    return this.counters.snapshot();
  }

  /**
   * Rebuilds shards from leftover journals (call once at start, before appending): complete records
   * become a shard (metadata `recovered: "true"`), torn or corrupt regions are counted lost, temp
   * files from interrupted shard writes are deleted.
   */
  async recover(): Promise<RecoveryReport> {
    const report: RecoveryReport = {
      recovered: [],
      recoveredSequences: 0,
      lostSequences: 0,
      lostBytes: 0,
      tempFilesDeleted: 0,
      staleJournalsDeleted: 0,
    };
    const live = new Set([...this.open.values()].map((s) => s.id));
    for (const dir of this.tenantDirs()) {
      for (const name of fs.readdirSync(dir)) {
        const file = path.join(dir, name);
        if (name.startsWith('.') && name.endsWith(`${SHARD_SUFFIX}.tmp`)) {
          fs.rmSync(file, { force: true });
          report.tempFilesDeleted++;
          this.counters.add('tempFilesDeleted');
          continue;
        }
        if (!name.endsWith(JOURNAL_SUFFIX)) continue;
        const id = name.slice(0, -JOURNAL_SUFFIX.length);
        if (live.has(id) || this.isPending(id)) continue;
        const shardFile = path.join(dir, `${id}${SHARD_SUFFIX}`);
        if (fs.existsSync(shardFile) && this.isValidShard(shardFile)) {
          // Written before the crash; rescan reports it. The journal is redundant.
          fs.rmSync(file, { force: true });
          report.staleJournalsDeleted++;
          continue;
        }
        try {
          await this.recoverJournal(dir, file, report);
        } catch (err) {
          // Left in place (e.g. disk full): the next start tries again.
          this.fail(err, `recovering ${file}`);
        }
      }
      fsyncDir(dir);
    }
    return report;
  }

  private async recoverJournal(dir: string, file: string, report: RecoveryReport): Promise<void> {
    const contents = readJournal(file);
    report.lostSequences += contents.lostSequences;
    report.lostBytes += contents.lostBytes;
    this.counters.add('lostSequences', contents.lostSequences);
    this.counters.add('lostBytes', contents.lostBytes);
    if (!contents.header || contents.sequences.length === 0) {
      fs.rmSync(file, { force: true });
      return;
    }
    const { header, sequences } = contents;
    const times = { createdAt: header.createdAt, closedAt: this.now() };
    const info = writeShardFile(dir, header.shardId, header.schema, sequences, times, { recovered: 'true' });
    this.countShard(info);
    report.recovered.push(info);
    report.recoveredSequences += sequences.length;
    this.counters.add('recoveredShards');
    this.counters.add('recoveredSequences', sequences.length);
    await this.report(info, file);
  }

  /**
   * Reports every valid shard on disk that the index does not know (`knownIds`) and this process has
   * not reported: the crash between rename and index. Invalid files are returned, never reported.
   */
  async rescan(knownIds: Iterable<string>): Promise<RescanReport> {
    const known = new Set(knownIds);
    const out: RescanReport = { reported: [], invalid: [] };
    for (const dir of this.tenantDirs()) {
      for (const name of fs.readdirSync(dir)) {
        if (name.startsWith('.') || !name.endsWith(SHARD_SUFFIX)) continue;
        const id = name.slice(0, -SHARD_SUFFIX.length);
        if (known.has(id) || this.reported.has(id) || this.isPending(id)) continue;
        const file = path.join(dir, name);
        let info: ShardInfo;
        try {
          info = validateShardFile(file);
          if (info.id !== id) throw new ShardValidationError(`${file}: metadata shard_id ${info.id} does not match the file name`);
        } catch (err) {
          out.invalid.push({ path: file, reason: (err as Error).message });
          continue;
        }
        const journal = path.join(dir, `${id}${JOURNAL_SUFFIX}`);
        if (await this.report(info, fs.existsSync(journal) ? journal : null)) out.reported.push(info);
      }
    }
    return out;
  }

  /**
   * Deletes everything of one tenant: its open shard (discarded, not written), its journals and all
   * its shard files, including ones not indexed yet. Index callbacks in flight for the tenant finish
   * first, so the caller can delete the tenant's index rows afterwards and none reappears.
   */
  async forgetTenant(tenantId: string | null): Promise<ForgetReport> {
    const key = tenantDirName(tenantId);
    const dir = path.join(this.opts.dir, key);
    const report: ForgetReport = { shardIds: [], discardedSequences: 0, filesDeleted: 0 };
    const discardOpen = () => {
      for (const shard of [...this.open.values()].filter((s) => s.tenantKey === key)) {
        this.open.delete(shard.openKey);
        report.discardedSequences += shard.sequences.length;
        shard.journal.close();
      }
    };
    discardOpen();
    await Promise.allSettled([...this.pending].filter(([, v]) => v.tenantKey === key).map(([p]) => p));
    discardOpen();
    if (!fs.existsSync(dir)) return report;
    for (const name of fs.readdirSync(dir)) {
      if (!name.startsWith('.') && name.endsWith(SHARD_SUFFIX)) report.shardIds.push(name.slice(0, -SHARD_SUFFIX.length));
      report.filesDeleted++;
    }
    fs.rmSync(dir, { recursive: true, force: true });
    fsyncDir(this.opts.dir);
    return report;
  }

  private openShard(key: string, seq: HarvestedSequence): OpenShard {
    const dir = path.join(this.opts.dir, key);
    if (!fs.existsSync(dir)) {
      fs.mkdirSync(dir, { recursive: true });
      fsyncDir(this.opts.dir);
    }
    const createdAt = Math.max(this.now(), this.lastOpened + 1);
    this.lastOpened = createdAt;
    const id = newShardId(createdAt);
    const sigma = this.opts.sigma;
    const schema: ShardSchema = {
      tenantId: seq.tenantId,
      baseFingerprint: seq.baseFingerprint,
      layers: [...seq.layers],
      hiddenSize: seq.hiddenSize,
      storedSize: sigma.outputSize(seq.hiddenSize),
      dtype: CODEC_DTYPE[sigma.codec],
      sigma: sigma.describe(seq.hiddenSize),
    };
    const journal = JournalWriter.create(path.join(dir, `${id}${JOURNAL_SUFFIX}`), { shardId: id, createdAt, schema });
    const shard: OpenShard = {
      id,
      tenantKey: key,
      openKey: openKeyOf(key, seq.baseFingerprint),
      dir,
      schema,
      schemaKey: schemaKey(schema),
      createdAt,
      sequences: [],
      bytes: HEADER_BASE_BYTES,
      journal,
    };
    this.open.set(shard.openKey, shard);
    return shard;
  }

  /** Closes a shard: journal synced, shard file written atomically, then reported. */
  private roll(shard: OpenShard): void {
    this.open.delete(shard.openKey);
    let info: ShardInfo;
    try {
      shard.journal.close();
      info = writeShardFile(shard.dir, shard.id, shard.schema, shard.sequences, {
        createdAt: shard.createdAt,
        closedAt: this.now(),
      });
    } catch (err) {
      // The journal stays: recover() rebuilds the shard on the next start.
      this.fail(err, `writing shard ${shard.id}`);
      return;
    }
    this.countShard(info);
    void this.report(info, shard.journal.file);
  }

  private countShard(info: ShardInfo): void {
    this.counters.add('shardsWritten');
    this.counters.add('bytesWritten', info.bytes);
    this.counters.add('sequencesWritten', info.sequences);
  }

  /** Runs the index callback; on success deletes the journal. Resolves true when indexed. */
  private report(info: ShardInfo, journalFile: string | null): Promise<boolean> {
    const run = (async () => {
      await this.opts.onShardFinished(info);
      this.reported.add(info.id);
      if (journalFile) fs.rmSync(journalFile, { force: true });
      return true;
    })().catch((err: unknown) => {
      // Shard and journal stay: the next start's recover() drops the journal, rescan() reports the shard.
      this.fail(err, `indexing shard ${info.id}`);
      return false;
    });
    const tracked = run.then(() => undefined);
    this.pending.set(tracked, { tenantKey: tenantDirName(info.tenantId), id: info.id });
    void tracked.finally(() => this.pending.delete(tracked));
    return run;
  }

  private async settle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending.keys()]);
  }

  private isPending(id: string): boolean {
    for (const v of this.pending.values()) if (v.id === id) return true;
    return false;
  }

  private isValidShard(file: string): boolean {
    try {
      validateShardFile(file);
      return true;
    } catch {
      return false;
    }
  }

  private tenantDirs(): string[] {
    return fs
      .readdirSync(this.opts.dir, { withFileTypes: true })
      .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
      .map((e) => path.join(this.opts.dir, e.name));
  }

  private tick(): void {
    const now = this.now();
    try {
      for (const shard of [...this.open.values()]) {
        if (now - shard.createdAt >= this.opts.maxShardAgeMs) this.roll(shard);
      }
      if (now - this.lastSync >= this.syncMs) {
        this.lastSync = now;
        for (const shard of this.open.values()) shard.journal.sync();
      }
    } catch (err) {
      this.fail(err, 'periodic journal sync');
    }
  }

  private fail(err: unknown, context: string): void {
    this.counters.add('errors');
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.opts.onError) this.opts.onError(e, context);
    else console.error(`harvest: ${context}: ${e.message}`);
  }
}

function openKeyOf(tenantKey: string, baseFingerprint: string): string {
  return `${tenantKey}/${baseFingerprint}`;
}

/**
 * The folder of a tenant's files: ids made of [A-Za-z0-9-] are used as they are, any other byte
 * becomes `_XX` (hex), so the mapping is injective and every name is safe on any filesystem. The
 * null tenant (anonymous traffic) is `_anonymous`, which no escaped id can produce (`_a…` is not
 * hex-escaped text), nor can `_empty` or `_h<sha256>`.
 */
export function tenantDirName(tenantId: string | null): string {
  if (tenantId === null) return '_anonymous';
  if (tenantId === '') return '_empty';
  let out = '';
  for (const b of Buffer.from(tenantId, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9-]/.test(c) ? c : `_${b.toString(16).padStart(2, '0')}`;
  }
  // Folder names are limited to 255 bytes; a very long id is named by its hash ('_h' is not hex-escaped text).
  return out.length <= 128 ? out : `_h${createHash('sha256').update(tenantId).digest('hex')}`;
}

/** Time-ordered and unique without coordination: ms timestamp, then 64 random bits. */
function newShardId(now: number): string {
  return `${now.toString().padStart(13, '0')}-${randomBytes(8).toString('hex')}`;
}

/** Rows of a well-formed sequence; throws naming the inconsistency otherwise. */
function checkSequence(seq: HarvestedSequence): number {
  const rows = seq.tokenIds.length;
  const bad = (what: string): never => {
    throw new Error(`harvested sequence ${seq.requestId}: ${what}`);
  };
  if (!Number.isInteger(seq.hiddenSize) || seq.hiddenSize <= 0) bad(`hiddenSize ${seq.hiddenSize}`);
  if (typeof seq.baseFingerprint !== 'string' || seq.baseFingerprint === '') bad('no base fingerprint');
  if (seq.layers.length === 0 || seq.layers.length !== seq.hidden.length) bad(`${seq.layers.length} layers, ${seq.hidden.length} hidden arrays`);
  if (seq.targetIds.length !== rows || seq.isCompletion.length !== rows) bad('token, target and completion arrays differ in length');
  for (const h of seq.hidden) if (h.length !== rows * seq.hiddenSize) bad(`hidden array of ${h.length} floats for ${rows}×${seq.hiddenSize}`);
  if (new Set(seq.layers).size !== seq.layers.length) bad('repeated layer');
  return rows;
}
