import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY, freshDataDir, startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

let gw: TestGateway;
const METRICS_PORT = 18000 + Math.floor(Math.random() * 1000);

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_DATA_DIR: freshDataDir(), CARRYON_METRICS_PORT: String(METRICS_PORT) });
});
afterAll(async () => gw?.close());

async function scrape(url = `${gw.url}/metrics`, key: string | null = ADMIN_KEY): Promise<{ status: number; text: string }> {
  const res = await request(url, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  return { status: res.statusCode, text: await res.body.text() };
}

/** A sample's value from Prometheus text format, e.g. value(text, 'carryon:generation_tokens_total{carry_on="base"}'). */
function value(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

describe('Prometheus metrics', () => {
  it('needs an admin key on the main port; the separate metrics port needs none', async () => {
    expect((await scrape(undefined, null)).status).toBe(401);
    expect((await scrape(undefined, USER_KEY)).status).toBe(403);
    const ok = await scrape();
    expect(ok.status).toBe(200);
    expect(ok.text).toContain('carryon:num_requests_running');
    const side = await scrape(`http://127.0.0.1:${METRICS_PORT}/metrics`, null);
    expect(side.status).toBe(200);
    expect(side.text).toContain('carryon:time_to_first_token_seconds_count');
    expect(side.text).toContain('carryon_process_nodejs_eventloop_lag_seconds');
  });

  it('move as requests flow: TTFT count, token counters, finish reasons, latency histograms', async () => {
    const before = (await scrape()).text;
    const client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 7, temperature: 0 });
    const stream = await client.chat.completions.create({
      model: 'stories260K',
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 5,
      stream: true,
    });
    let during: string | null = null;
    for await (const _ of stream) during ??= (await scrape()).text; // while the sequence holds KV rows
    const after = (await scrape()).text;
    const delta = (s: string) => value(after, s) - value(before, s);
    expect(delta('carryon:time_to_first_token_seconds_count')).toBe(2);
    expect(delta('carryon:generation_tokens_total{carry_on="base"}')).toBe(12);
    expect(delta('carryon:prompt_tokens_total{carry_on="base"}')).toBe(10);
    expect(delta('carryon:request_success_total{finished_reason="length",carry_on="base"}')).toBe(2);
    expect(delta('carryon:inter_token_latency_seconds_count')).toBe(12 - 2);
    expect(delta('carryon:e2e_request_latency_seconds_count')).toBe(2);
    expect(delta('carryon:request_queue_time_seconds_count')).toBe(2);
    // Engine steps that produced tokens: each of the 12 tokens came from one (one sequence at a time here).
    expect(delta('carryon:engine_decode_batch_rows_count')).toBe(12);
    expect(delta('carryon:engine_decode_batch_rows_sum')).toBe(12 - 2); // the first token of each comes from a prefill step
    // The KV gauge is there and counts the live sequence's rows (a missing series would read 0 and fail).
    expect(value(during!, 'carryon:kv_cache_bytes')).toBeGreaterThan(0);
  });
});
