/**
 * Offline harvest: runs the base over a data file and writes the same shards live traffic produces,
 * so carry-ons can be trained on a corpus before (or without) serving it. One forward pass per record,
 * in this thread (nothing else runs here), through the same ShardWriter as the gateway.
 *
 * Rows: position p holds the hidden state after token p and targets token p+1, for the record's
 * first n-1 positions (the last token has no target). `is_completion` is 0 everywhere except in
 * `chat` format, where it is 1 on rows whose target lies in an assistant turn (as rendered by the
 * model's chat template, so the turn's end marker counts too): the rows a carry-on trained on
 * responses learns from.
 */
import path from 'node:path';
import { ChatTemplate, type ChatMessage } from '../model/chat-template.js';
import { ModelRunner } from '../engine/model-runner.js';
import { readManifest } from '../model/package-files.js';
import type { PackageManifest } from '../model/package-files.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { defaultFormat, readRecords, type InputFormat, type InputRecord } from './records.js';
import type { LayerId, ShardInfo } from './shard-format.js';
import { ShardWriter } from './shard-writer.js';
import { Sigma, type SigmaCodec } from './sigma.js';
import type { HarvestStats } from './stats.js';

export interface OfflineHarvestOptions {
  modelDir: string;
  input: string;
  out: string;
  sigma?: SigmaCodec;
  projectionPath?: string;
  layers?: LayerId[];
  /** Tokens per record at most (and never more than the model's context). */
  maxTokens?: number;
  format?: InputFormat;
  tenantId?: string | null;
  maxShardBytes?: number;
  /** Stop after this many records. */
  limit?: number;
  threads?: number;
  onShard?: (info: ShardInfo) => void;
}

export interface OfflineHarvestReport {
  records: number;
  /** JSON values of no known shape, and records shorter than two tokens. */
  skipped: number;
  /** Records cut to maxTokens. */
  truncated: number;
  rows: number;
  completionRows: number;
  shards: ShardInfo[];
  stats: HarvestStats;
  seconds: number;
}

/** The base model as the harvest sees it: body runner, tokenizer, chat template, manifest. */
export interface HarvestBase {
  runner: ModelRunner;
  tokenizer: ModelTokenizer;
  template: ChatTemplate;
  manifest: PackageManifest;
}

export async function openBase(modelDir: string, threads = 1): Promise<HarvestBase> {
  const runner = await ModelRunner.create({ modelDir, provider: 'cpu', threads, prefillChunk: 256 });
  const tokenizer = ModelTokenizer.load(modelDir, runner.config.vocab_size);
  const template = new ChatTemplate(tokenizer.chatTemplate, tokenizer.specialTokens);
  return { runner, tokenizer, template, manifest: readManifest(modelDir) };
}

/** Hidden states of `ids` for each layer ([ids.length × D] each), from one forward pass. */
export async function hiddenStates(base: HarvestBase, ids: number[], layers: LayerId[] = ['final']): Promise<Float32Array[]> {
  const result = await base.runner.forwardBody(ids, base.runner.newCache());
  return layers.map((l) => {
    const h = l === 'final' ? result.hidden : result.layers.get(l);
    if (!h) throw new Error(`the base package does not output layer ${l} (re-import it with --layers ${l})`);
    return h;
  });
}

export async function harvestOffline(opts: OfflineHarvestOptions): Promise<OfflineHarvestReport> {
  const started = performance.now();
  const format = opts.format ?? defaultFormat(opts.input);
  const layers = opts.layers ?? ['final'];
  const base = await openBase(opts.modelDir, opts.threads ?? 1);
  for (const l of layers) {
    if (l !== 'final' && !base.manifest.extra_layer_outputs.includes(l)) {
      throw new Error(`--layers ${l}: the base package outputs [${base.manifest.extra_layer_outputs.join(',')}] besides final`);
    }
  }
  const maxTokens = Math.min(opts.maxTokens ?? 512, base.runner.config.max_position_embeddings);
  if (maxTokens < 2) throw new Error('--max-tokens must be at least 2 (one row needs a token and its target)');
  const shards: ShardInfo[] = [];
  const errors: string[] = [];
  const writer = new ShardWriter({
    dir: opts.out,
    sigma: Sigma.load({ codec: opts.sigma ?? 'f16', projectionPath: opts.projectionPath }),
    maxShardBytes: opts.maxShardBytes ?? 64 << 20,
    // Offline shards close by size and at the end; age is irrelevant.
    maxShardAgeMs: 365 * 24 * 3600 * 1000,
    onShardFinished: (info) => {
      shards.push(info);
      opts.onShard?.(info);
    },
    onError: (err, context) => errors.push(`${context}: ${err.message}`),
  });
  const { records, skipped: unknown } = readRecords(opts.input, format);
  const report: OfflineHarvestReport = { records: 0, skipped: unknown, truncated: 0, rows: 0, completionRows: 0, shards, stats: writer.stats(), seconds: 0 };
  const source = path.basename(opts.input);
  try {
    for (const record of records.slice(0, opts.limit ?? records.length)) {
      const tokens = tokenizeRecord(base, record, format);
      if (tokens.ids.length > maxTokens) report.truncated++;
      const ids = tokens.ids.slice(0, maxTokens);
      if (ids.length < 2) {
        report.skipped++;
        continue;
      }
      const rows = ids.length - 1;
      const hidden = await hiddenStates(base, ids, layers);
      const D = base.runner.config.hidden_size;
      const isCompletion = Uint8Array.from({ length: rows }, (_, p) => tokens.completion[p + 1]);
      writer.append({
        requestId: `offline:${source}#${record.index}`,
        tenantId: opts.tenantId ?? null,
        baseFingerprint: base.manifest.fingerprint,
        carryOnId: null,
        layers,
        hidden: hidden.map((h) => h.slice(0, rows * D)),
        hiddenSize: D,
        tokenIds: Int32Array.from(ids.slice(0, rows)),
        targetIds: Int32Array.from(ids.slice(1)),
        isCompletion,
        finishedAt: Date.now(),
      });
      report.records++;
      report.rows += rows;
      report.completionRows += isCompletion.reduce((a, b) => a + b, 0);
    }
    await writer.close();
    if (errors.length > 0) throw new Error(`harvest failed: ${errors.join('; ')}`);
  } finally {
    await base.runner.release();
  }
  report.stats = writer.stats();
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

/**
 * Token ids of a record and, per token, 1 if it belongs to an assistant turn (chat format only).
 * Chats (and, in chat format, prompt/answer pairs) go through the model's chat template, which writes
 * BOS itself; plain text gets BOS from the tokenizer.
 */
export function tokenizeRecord(base: HarvestBase, record: InputRecord, format: InputFormat): { ids: number[]; completion: Uint8Array } {
  const messages = record.messages;
  if (!messages || !(record.isChat || format === 'chat')) {
    const ids = base.tokenizer.encode(record.text, true);
    return { ids, completion: new Uint8Array(ids.length) };
  }
  const encode = (msgs: ChatMessage[]) => base.tokenizer.encode(base.template.render(msgs), false);
  const ids = encode(messages);
  const completion = new Uint8Array(ids.length);
  if (format === 'chat') {
    // An assistant turn spans from where the prompt before it (ending in the generation prompt)
    // stops matching the full rendering to where the conversation through it stops matching.
    messages.forEach((m, i) => {
      if (m.role !== 'assistant') return;
      const start = commonPrefix(ids, encode(messages.slice(0, i)));
      const end = commonPrefix(ids, encode(messages.slice(0, i + 1)));
      completion.fill(1, start, end);
    });
  }
  return { ids, completion };
}

function commonPrefix(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
