import client from 'prom-client';

/** What an engine step reports (the engine's StepStats; core cannot import the engine). */
export interface EngineStepFigures {
  decodeRows: number;
  prefillRows: number;
  prefillTokens: number;
  kvBytes: number;
  prefixCache: { bytes: number; blocks: number; queries: number; hits: number; evictions: number } | null;
}

/**
 * Prometheus metrics, named after vLLM's (`vllm:num_requests_running` → `carryon:num_requests_running`)
 * so existing dashboards translate. Labels only ever take values from bounded sets: finish reasons,
 * and carry-on ids capped at `maxCarryOnLabels` distinct values (the rest report as "other").
 */
export class Metrics {
  readonly registry = new client.Registry();
  private readonly carryOnLabels = new Set<string>();
  /** Read at scrape time: gauges whose truth lives elsewhere (scheduler queue, harvest stats). */
  private readonly collectors: Array<() => void> = [];

  readonly requestsRunning: client.Gauge;
  readonly requestsWaiting: client.Gauge;
  readonly timeToFirstToken: client.Histogram;
  readonly interTokenLatency: client.Histogram;
  readonly e2eLatency: client.Histogram;
  readonly queueTime: client.Histogram;
  readonly promptTokens: client.Counter<'carry_on'>;
  readonly generationTokens: client.Counter<'carry_on'>;
  readonly requestsFinished: client.Counter<'finished_reason' | 'carry_on'>;
  readonly carryOnLoads: client.Counter;
  readonly carryOnLoadSeconds: client.Histogram;
  readonly carryOnEvictions: client.Counter;
  readonly carryOnResidentBytes: client.Gauge;
  readonly engineDecodeBatch: client.Histogram;
  readonly enginePrefillRows: client.Histogram;
  readonly kvCacheBytes: client.Gauge;
  readonly basePrefillTokens: client.Counter;
  readonly prefixCacheQueries: client.Counter;
  readonly prefixCacheHits: client.Counter;
  readonly prefixCacheBytes: client.Gauge;
  readonly prefixCacheBlocks: client.Gauge;
  readonly prefixCacheEvictions: client.Counter;
  readonly harvestBytesWritten: client.Gauge;
  readonly harvestSequencesDropped: client.Gauge;
  readonly harvestSequencesAccepted: client.Gauge;
  readonly harvestReplays: client.Gauge<'outcome'>;

  constructor(private readonly maxCarryOnLabels = 100) {
    const r = [this.registry];
    const latency = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
    this.requestsRunning = new client.Gauge({ name: 'carryon:num_requests_running', help: 'Sequences decoding in the engine.', registers: r });
    this.requestsWaiting = new client.Gauge({ name: 'carryon:num_requests_waiting', help: 'Requests queued for a slot.', registers: r });
    this.timeToFirstToken = new client.Histogram({ name: 'carryon:time_to_first_token_seconds', help: 'Time to first token.', buckets: latency, registers: r });
    this.interTokenLatency = new client.Histogram({
      name: 'carryon:inter_token_latency_seconds',
      help: 'Time between consecutive output tokens of a sequence.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: r,
    });
    this.e2eLatency = new client.Histogram({ name: 'carryon:e2e_request_latency_seconds', help: 'Request latency, admission to last token.', buckets: latency, registers: r });
    this.queueTime = new client.Histogram({ name: 'carryon:request_queue_time_seconds', help: 'Time spent waiting for a slot.', buckets: latency, registers: r });
    this.promptTokens = new client.Counter({ name: 'carryon:prompt_tokens_total', help: 'Prompt tokens processed.', labelNames: ['carry_on'], registers: r });
    this.generationTokens = new client.Counter({ name: 'carryon:generation_tokens_total', help: 'Tokens generated.', labelNames: ['carry_on'], registers: r });
    this.requestsFinished = new client.Counter({
      name: 'carryon:request_success_total',
      help: 'Finished sequences by finish reason.',
      labelNames: ['finished_reason', 'carry_on'],
      registers: r,
    });
    this.carryOnLoads = new client.Counter({ name: 'carryon:carry_on_loads_total', help: 'Carry-on sessions loaded.', registers: r });
    this.carryOnLoadSeconds = new client.Histogram({ name: 'carryon:carry_on_load_seconds', help: 'Carry-on load time.', buckets: latency, registers: r });
    this.carryOnEvictions = new client.Counter({ name: 'carryon:carry_on_evictions_total', help: 'Carry-on sessions evicted for space.', registers: r });
    this.carryOnResidentBytes = new client.Gauge({ name: 'carryon:carry_on_resident_bytes', help: 'Bytes of resident carry-on graphs.', registers: r });
    const rows = [1, 2, 4, 8, 16, 32, 64, 128, 256];
    this.engineDecodeBatch = new client.Histogram({ name: 'carryon:engine_decode_batch_rows', help: 'Sequences decoded together per engine step.', buckets: rows, registers: r });
    this.enginePrefillRows = new client.Histogram({ name: 'carryon:engine_prefill_rows', help: 'Sequences reading a prompt chunk per engine step.', buckets: rows, registers: r });
    this.kvCacheBytes = new client.Gauge({ name: 'carryon:kv_cache_bytes', help: 'Bytes held by the base model KV pool.', registers: r });
    this.basePrefillTokens = new client.Counter({
      name: 'carryon:base_prefill_tokens_total',
      help: 'Prompt tokens the base model computed (those served by the prefix cache are not).',
      registers: r,
    });
    this.prefixCacheQueries = new client.Counter({ name: 'carryon:prefix_cache_queries_total', help: 'Prompt tokens looked up in the prefix cache.', registers: r });
    this.prefixCacheHits = new client.Counter({ name: 'carryon:prefix_cache_hits_total', help: 'Prompt tokens served from the prefix cache.', registers: r });
    this.prefixCacheBytes = new client.Gauge({ name: 'carryon:prefix_cache_bytes', help: 'Bytes held by the prefix cache.', registers: r });
    this.prefixCacheBlocks = new client.Gauge({ name: 'carryon:prefix_cache_blocks', help: 'Blocks held by the prefix cache.', registers: r });
    this.prefixCacheEvictions = new client.Counter({ name: 'carryon:prefix_cache_evictions_total', help: 'Prefix-cache blocks evicted for space.', registers: r });
    this.harvestBytesWritten = new client.Gauge({ name: 'carryon:harvest_bytes_written_total', help: 'Harvest shard bytes written.', registers: r });
    this.harvestSequencesDropped = new client.Gauge({ name: 'carryon:harvest_sequences_dropped_total', help: 'Harvested sequences dropped (queue full).', registers: r });
    this.harvestSequencesAccepted = new client.Gauge({ name: 'carryon:harvest_sequences_accepted_total', help: 'Harvested sequences accepted.', registers: r });
    this.harvestReplays = new client.Gauge({
      name: 'carryon:harvest_replays_total',
      help: "Sampled sequences replayed on a policy's other bases, by outcome (replayed, dropped, skipped, failed).",
      labelNames: ['outcome'],
      registers: r,
    });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'carryon_process_', eventLoopMonitoringPrecision: 10 });
  }

  /** One engine step's report (batching, KV and prefix-cache figures). */
  observeStep(step: EngineStepFigures): void {
    this.engineDecodeBatch.observe(step.decodeRows);
    this.enginePrefillRows.observe(step.prefillRows);
    this.kvCacheBytes.set(step.kvBytes);
    this.basePrefillTokens.inc(step.prefillTokens);
    const cache = step.prefixCache;
    if (!cache) return;
    this.prefixCacheQueries.inc(cache.queries);
    this.prefixCacheHits.inc(cache.hits);
    this.prefixCacheEvictions.inc(cache.evictions);
    this.prefixCacheBytes.set(cache.bytes);
    this.prefixCacheBlocks.set(cache.blocks);
  }

  /** A carry-on label value from a bounded set: `base`, known ids up to the cap, then `other`. */
  carryOnLabel(carryOnId: string | null): string {
    if (!carryOnId) return 'base';
    if (this.carryOnLabels.has(carryOnId)) return carryOnId;
    if (this.carryOnLabels.size >= this.maxCarryOnLabels) return 'other';
    this.carryOnLabels.add(carryOnId);
    return carryOnId;
  }

  /** Registers a function that refreshes gauges just before each scrape. */
  onScrape(collect: () => void): void {
    this.collectors.push(collect);
  }

  render(): Promise<string> {
    for (const c of this.collectors) c();
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
