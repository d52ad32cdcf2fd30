// Overview: the gateway's own metrics (GET admin/metrics, cumulative counters) sampled every
// couple of seconds; rates and latency quantiles are taken over each interval between samples.
import { html, useEffect, useRef, useState } from './vendor/htm-preact.js';
import { fmtBytes, get } from './api.js';
import { Plot } from './plot.js';

const INTERVAL_MS = 2000;
const WINDOW = 300; // samples kept: 10 minutes at 2 s

/** The q-quantile of the observations between two cumulative histogram samples (linear in a bucket). */
export function windowQuantile(prev, cur, q) {
  const total = cur.count - prev.count;
  if (total <= 0) return null;
  const target = q * total;
  let lowerLe = 0;
  let below = 0;
  for (let i = 0; i < cur.buckets.length; i++) {
    const b = cur.buckets[i];
    const upto = b.count - (prev.buckets[i] ? prev.buckets[i].count : 0);
    if (upto >= target) {
      if (b.le === null) return lowerLe;
      const inBucket = upto - below;
      return inBucket > 0 ? lowerLe + ((b.le - lowerLe) * (target - below)) / inBucket : b.le;
    }
    if (b.le !== null) lowerLe = b.le;
    below = upto;
  }
  return null;
}

/** One plotted point per pair of consecutive samples. */
function point(prev, cur) {
  const dt = (Date.parse(cur.time) - Date.parse(prev.time)) / 1000 || 1;
  const rate = (f) => Math.max(0, f(cur) - f(prev)) / dt;
  const delta = (f) => Math.max(0, f(cur) - f(prev));
  const batchSteps = cur.decode_batch_rows.count - prev.decode_batch_rows.count;
  const p = (q) => {
    const v = windowQuantile(prev.time_to_first_token_seconds, cur.time_to_first_token_seconds, q);
    return v === null ? null : v * 1000;
  };
  return {
    t: Date.parse(cur.time) / 1000,
    genTps: rate((s) => s.tokens.generation),
    promptTps: rate((s) => s.tokens.prompt),
    reqPs: rate((s) => s.requests.finished),
    running: cur.requests.running,
    waiting: cur.requests.waiting,
    ttft50: p(0.5),
    ttft99: p(0.99),
    batch: batchSteps > 0 ? (cur.decode_batch_rows.sum - prev.decode_batch_rows.sum) / batchSteps : null,
    kvMiB: cur.kv_cache_bytes / 2 ** 20,
    residentMiB: cur.carry_ons.resident_bytes / 2 ** 20,
    loads: delta((s) => s.carry_ons.loads),
    evictions: delta((s) => s.carry_ons.evictions),
    harvested: delta((s) => s.harvest.accepted),
    dropped: delta((s) => s.harvest.dropped),
  };
}

const col = (points, ...keys) => [points.map((p) => p.t), ...keys.map((k) => points.map((p) => p[k]))];

export function OverviewPage({ me }) {
  const [points, setPoints] = useState([]);
  const [latest, setLatest] = useState(null);
  const [error, setError] = useState(null);
  const prev = useRef(null);
  useEffect(() => {
    if (!me.global) return undefined;
    let stopped = false;
    const sample = async () => {
      try {
        const cur = await get('admin/metrics');
        if (stopped) return;
        setLatest(cur);
        setError(null);
        if (prev.current) {
          const pt = point(prev.current, cur);
          setPoints((ps) => [...ps.slice(-(WINDOW - 1)), pt]);
        }
        prev.current = cur;
      } catch (err) {
        if (!stopped) setError(err.message);
      }
    };
    void sample();
    const timer = setInterval(sample, INTERVAL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [me.global]);
  if (!me.global) {
    return html`<section><h2>Overview</h2>
      <p class="note" id="overview-needs-global">The gateway's metrics name every tenant's carry-ons, so the overview needs a global admin key. Use the other pages for ${me.tenant}.</p>
    </section>`;
  }
  const hot = latest ? Object.entries(latest.generation_tokens_by_carry_on).sort((a, b) => b[1] - a[1]) : [];
  return html`<section id="overview">
    <h2>Overview <small>last ${Math.round((points.length * INTERVAL_MS) / 1000)} s, a sample every ${INTERVAL_MS / 1000} s</small></h2>
    ${error && html`<p class="error">${error}</p>`}
    ${latest &&
    html`<div class="cards">
      <div class="card"><span>requests finished</span><b id="stat-requests">${latest.requests.finished}</b></div>
      <div class="card"><span>tokens generated</span><b id="stat-tokens">${latest.tokens.generation}</b></div>
      <div class="card"><span>KV cache</span><b>${fmtBytes(latest.kv_cache_bytes)}</b></div>
      <div class="card"><span>carry-ons resident</span><b>${fmtBytes(latest.carry_ons.resident_bytes)}</b></div>
      <div class="card"><span>harvest dropped</span><b>${latest.harvest.dropped}</b></div>
    </div>`}
    <div class="plots">
      <${Plot} id="tokens" title="Tokens / s" series=${['generated', 'prompt']} data=${col(points, 'genTps', 'promptTps')} />
      <${Plot} id="requests" title="Requests" series=${['finished / s', 'running', 'waiting']} data=${col(points, 'reqPs', 'running', 'waiting')} />
      <${Plot} id="ttft" title="Time to first token (ms)" series=${['p50', 'p99']} data=${col(points, 'ttft50', 'ttft99')} />
      <${Plot} id="batch" title="Decode batch rows (mean per step)" series=${['rows']} data=${col(points, 'batch')} />
      <${Plot} id="memory" title="Memory (MiB)" series=${['KV cache', 'carry-ons resident']} data=${col(points, 'kvMiB', 'residentMiB')} />
      <${Plot} id="carry-on-cache" title="Carry-on loads / evictions" series=${['loads', 'evictions']} data=${col(points, 'loads', 'evictions')} />
      <${Plot} id="harvest" title="Harvest sequences" series=${['accepted', 'dropped (queue full)']} data=${col(points, 'harvested', 'dropped')} />
    </div>
    <h3>Hot carry-ons (tokens generated since start)</h3>
    <table id="hot-carry-ons">
      <thead><tr><th>carry-on</th><th>tokens</th></tr></thead>
      <tbody>${hot.map(([id, n]) => html`<tr><td>${id}</td><td>${n}</td></tr>`)}</tbody>
    </table>
  </section>`;
}
