/** `carryon harvest`: argument parsing and the summary line for the offline harvest. */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tokenizerDigest } from '../model/tokenizer-digest.js';
import { harvestOffline } from '../harvest/offline.js';
import type { InputFormat } from '../harvest/records.js';
import type { LayerId } from '../harvest/shard-format.js';
import { SIGMA_CODECS, type SigmaCodec } from '../harvest/sigma.js';

export const HARVEST_USAGE = `  carryon harvest --model MODEL_DIR [--model MODEL_DIR ...] --input FILE --out DIR [--sigma f16|int8|none] [--projection FILE]
      [--layers final,3] [--max-tokens 512] [--format text|jsonl|chat] [--tenant ID] [--limit N]
      [--max-shard-bytes N] [--threads N]
      Run the base over a text file (blank-line-separated paragraphs) or JSON Lines ({"text"},
      {"question","answer"}, {"messages"}, {"conversations"}, ...) and write harvest shards to DIR,
      as the gateway does from live traffic. In chat format, rows predicting assistant tokens are
      marked is_completion = 1. Several --model (bases with one tokenizer, for a mixture carry-on):
      each base's shards go to DIR/<its folder name>, aligned row by row.`;

export async function harvestCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', multiple: true },
      input: { type: 'string' },
      out: { type: 'string' },
      sigma: { type: 'string', default: 'f16' },
      projection: { type: 'string' },
      layers: { type: 'string', default: 'final' },
      'max-tokens': { type: 'string', default: '512' },
      format: { type: 'string' },
      tenant: { type: 'string' },
      limit: { type: 'string' },
      'max-shard-bytes': { type: 'string' },
      threads: { type: 'string', default: '1' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(`usage:\n${HARVEST_USAGE}`);
    return 0;
  }
  if (!values.model?.length || !values.input || !values.out) {
    console.error(`usage:\n${HARVEST_USAGE}`);
    return 2;
  }
  if (!SIGMA_CODECS.includes(values.sigma as SigmaCodec)) throw new Error(`--sigma must be one of ${SIGMA_CODECS.join(', ')}`);
  if (values.format !== undefined && !['text', 'jsonl', 'chat'].includes(values.format)) {
    throw new Error('--format must be text, jsonl or chat');
  }
  const models = values.model;
  const outs = models.length === 1 ? [values.out] : mixtureOutputs(models, values.out);
  for (const [i, modelDir] of models.entries()) {
    if (models.length > 1) console.log(`base ${modelDir} -> ${outs[i]}`);
    await harvestOne(values, modelDir, values.input, outs[i]);
  }
  return 0;
}

/**
 * One folder per base under OUT, named after the base's package folder; refused unless every base
 * has the first one's tokenizer: the same text must be the same ids, row for row, in every set.
 */
function mixtureOutputs(models: string[], out: string): string[] {
  const digest = tokenizerDigest(models[0]);
  const names = models.map((m) => path.basename(path.resolve(m)));
  models.forEach((m, i) => {
    if (i > 0 && tokenizerDigest(m) !== digest) throw new Error(`--model ${m} does not have ${models[0]}'s tokenizer: a mixture's bases must read the same ids`);
    if (names.indexOf(names[i]) !== i) throw new Error(`two --model folders are named '${names[i]}': their shards would share DIR/${names[i]}`);
  });
  return names.map((n) => path.join(out, n));
}

type HarvestArgs = { sigma: string; projection?: string; layers: string; 'max-tokens': string; format?: string; tenant?: string; limit?: string; 'max-shard-bytes'?: string; threads: string };

async function harvestOne(values: HarvestArgs, modelDir: string, input: string, out: string): Promise<void> {
  const report = await harvestOffline({
    modelDir,
    input,
    out,
    sigma: values.sigma as SigmaCodec,
    projectionPath: values.projection,
    layers: values.layers.split(',').map((s): LayerId => (s.trim() === 'final' ? 'final' : positiveInt('layers', s.trim(), 0))),
    maxTokens: positiveInt('max-tokens', values['max-tokens'], 2),
    format: values.format as InputFormat | undefined,
    tenantId: values.tenant ?? null,
    limit: values.limit === undefined ? undefined : positiveInt('limit', values.limit, 1),
    maxShardBytes: values['max-shard-bytes'] === undefined ? undefined : positiveInt('max-shard-bytes', values['max-shard-bytes'], 1),
    threads: positiveInt('threads', values.threads, 1),
    onShard: (info) => console.log(`shard ${info.path}: ${info.sequences} sequences, ${info.rows} rows, ${info.bytes} bytes`),
  });
  console.log(
    `harvested ${report.records} records (${report.skipped} skipped, ${report.truncated} truncated): ` +
      `${report.rows} rows (${report.completionRows} completion) in ${report.shards.length} shards, ` +
      `${report.stats.bytesWritten} bytes, ${report.seconds.toFixed(1)} s`,
  );
}

function positiveInt(name: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got '${value}'`);
  return n;
}
