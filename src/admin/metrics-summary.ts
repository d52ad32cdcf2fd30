import type { Metrics } from '../core/metrics.js';

/** One cumulative histogram: counts per upper bound (`le`, null for +Inf), as Prometheus keeps them. */
export interface HistogramSummary {
  count: number;
  sum: number;
  buckets: Array<{ le: number | null; count: number }>;
}

/**
 * GET /admin/metrics: the gateway's own counters and gauges as one JSON object, so a browser (the
 * console's overview) can plot them without parsing the Prometheus text format. Values are
 * cumulative since start, exactly as /metrics reports them: a client takes two samples and divides
 * the differences by the time between them (rates, and quantiles over that window).
 */
export interface MetricsSummary {
  object: 'metrics.summary';
  /** When the sample was taken (ISO 8601). */
  time: string;
  requests: { running: number; waiting: number; finished: number };
  tokens: { prompt: number; generation: number };
  /** Generated tokens per carry-on label (`base`, carry-on ids, `other` past the label cap). */
  generation_tokens_by_carry_on: Record<string, number>;
  time_to_first_token_seconds: HistogramSummary;
  decode_batch_rows: HistogramSummary;
  kv_cache_bytes: number;
  carry_ons: { loads: number; evictions: number; resident_bytes: number };
  harvest: { accepted: number; dropped: number; bytes_written: number };
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

export async function metricsSummary(metrics: Metrics, now = new Date()): Promise<MetricsSummary> {
  // render() runs the scrape-time collectors (scheduler queue, harvest counters) before reading.
  await metrics.render();
  const all = await metrics.registry.getMetricsAsJSON();
  const byName = new Map(all.map((m) => [m.name, m.values as MetricValue[]]));
  const values = (name: string): MetricValue[] => byName.get(`carryon:${name}`) ?? [];
  const total = (name: string): number => values(name).reduce((s, v) => s + v.value, 0);
  const histogram = (name: string): HistogramSummary => {
    const vs = values(name);
    const pick = (suffix: string) => vs.find((v) => v.metricName === `carryon:${name}_${suffix}`)?.value ?? 0;
    return {
      count: pick('count'),
      sum: pick('sum'),
      buckets: vs
        .filter((v) => v.metricName === `carryon:${name}_bucket`)
        .map((v) => ({ le: v.labels.le === '+Inf' ? null : Number(v.labels.le), count: v.value })),
    };
  };
  const byCarryOn: Record<string, number> = {};
  for (const v of values('generation_tokens_total')) {
    const label = String(v.labels.carry_on ?? 'base');
    byCarryOn[label] = (byCarryOn[label] ?? 0) + v.value;
  }
  return {
    object: 'metrics.summary',
    time: now.toISOString(),
    requests: { running: total('num_requests_running'), waiting: total('num_requests_waiting'), finished: total('request_success_total') },
    tokens: { prompt: total('prompt_tokens_total'), generation: total('generation_tokens_total') },
    generation_tokens_by_carry_on: byCarryOn,
    time_to_first_token_seconds: histogram('time_to_first_token_seconds'),
    decode_batch_rows: histogram('engine_decode_batch_rows'),
    kv_cache_bytes: total('kv_cache_bytes'),
    carry_ons: { loads: total('carry_on_loads_total'), evictions: total('carry_on_evictions_total'), resident_bytes: total('carry_on_resident_bytes') },
    harvest: {
      accepted: total('harvest_sequences_accepted_total'),
      dropped: total('harvest_sequences_dropped_total'),
      bytes_written: total('harvest_bytes_written_total'),
    },
  };
}
