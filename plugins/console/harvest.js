// Harvest: a tenant's shards (rows and bytes over time, the σ codec, downloads), and for a global
// admin the harvest writer's counters.
import { html, useState } from './vendor/htm-preact.js';
import { call, fmtBytes, fmtTime, get, q } from './api.js';
import { Plot } from './plot.js';
import { ConfirmButton, ErrorLine, guarded, useTenantLoad } from './ui.js';

/**
 * A shard download needs the key as a header, which a plain link cannot send: fetch it, then hand
 * the bytes to the browser as a file.
 */
async function download(shard) {
  const res = await call('GET', `admin/harvest/shards/${encodeURIComponent(shard.id)}`, { raw: true });
  const blob = await res.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `${shard.id}.carryon-shard`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function fmtDuration(ms) {
  const h = ms / 3_600_000;
  return h >= 48 ? `${(h / 24).toFixed(1)} days` : h >= 1 ? `${h.toFixed(1)} h` : `${Math.round(ms / 60_000)} min`;
}

/** Cumulative rows and bytes (MiB) at each shard's creation time, oldest first. */
function cumulative(shards) {
  let rows = 0;
  let bytes = 0;
  const xs = [];
  const r = [];
  const b = [];
  for (const s of shards) {
    rows += s.rows;
    bytes += s.bytes;
    xs.push(Date.parse(s.created_at) / 1000);
    r.push(rows);
    b.push(bytes / 2 ** 20);
  }
  return { rows: [xs, r], bytes: [xs, b] };
}

export function HarvestPage({ me, tenant }) {
  const [shards, setShards] = useState([]);
  const [stats, setStats] = useState(null);
  const [error, setError] = useState(null);
  const reload = useTenantLoad(tenant, setError, async () => {
    setShards((await get(`admin/harvest/shards${q({ tenant })}`)).data);
    if (me.global) setStats(await get('admin/harvest/stats'));
  });
  const act = (fn) => guarded(setError, fn);
  const c = cumulative(shards);
  const total = shards.reduce((a, s) => ({ rows: a.rows + s.rows, bytes: a.bytes + s.bytes, sequences: a.sequences + s.sequences }), { rows: 0, bytes: 0, sequences: 0 });
  return html`<section id="harvest-page">
    <h2>Harvest of ${tenant || '…'} <button class="secondary" onClick=${() => reload()}>Refresh</button></h2>
    <${ErrorLine} error=${error} id="harvest-error" />
    <div class="cards">
      <div class="card"><span>shards</span><b id="harvest-shards">${shards.length}</b></div>
      <div class="card"><span>sequences</span><b>${total.sequences}</b></div>
      <div class="card"><span>rows</span><b id="harvest-rows">${total.rows}</b></div>
      <div class="card"><span>bytes</span><b>${fmtBytes(total.bytes)}</b></div>
    </div>
    <div class="plots">
      <${Plot} id="harvest-rows" title="Rows harvested (cumulative)" series=${['rows']} data=${c.rows} />
      <${Plot} id="harvest-bytes" title="Shard bytes (MiB, cumulative)" series=${['MiB']} data=${c.bytes} />
    </div>
    <h3>Shards, newest first</h3>
    <table id="shards-table">
      <thead><tr><th>id</th><th>created</th><th>sequences</th><th>rows</th><th>bytes</th><th>codec</th><th>layers</th><th></th></tr></thead>
      <tbody>${[...shards].reverse().slice(0, 100).map((s) => html`<tr data-shard=${s.id}>
        <td><code>${s.id}</code></td><td>${fmtTime(s.created_at)}</td><td>${s.sequences}</td><td>${s.rows}</td><td>${fmtBytes(s.bytes)}</td>
        <td>${s.metadata.dtype}${s.metadata.sigma ? ` σ=${JSON.stringify(s.metadata.sigma)}` : ''}</td><td>${s.metadata.layers.join(', ')}</td>
        <td><button class="secondary" onClick=${act(() => download(s))}>Download</button>
          <${ConfirmButton} label="Delete" confirm="Delete shard" onConfirm=${act(async () => { await call('DELETE', `admin/harvest/shards/${encodeURIComponent(s.id)}`); await reload(); })} /></td>
      </tr>`)}</tbody>
    </table>
    ${me.global && stats &&
    html`<h3>Writer and retention (all tenants)</h3>
      <table id="harvest-stats"><tbody>
        <tr><th>retention: total bytes</th><td id="retention-max-bytes">${stats.retention.max_bytes === null ? 'not limited' : fmtBytes(stats.retention.max_bytes)}</td></tr>
        <tr><th>retention: age</th><td id="retention-max-age">${stats.retention.max_age_ms === null ? 'not limited' : fmtDuration(stats.retention.max_age_ms)}</td></tr>
        <tr><th>deleted by retention since start</th><td id="retention-deleted">${stats.retention_deleted}</td></tr>
        <tr><th>enabled</th><td>${String(stats.enabled)}</td></tr>
        ${Object.entries(stats.writer).map(([k, v]) => html`<tr><th>${k}</th><td>${v}</td></tr>`)}
        <tr><th>index</th><td>${stats.index.shards} shards, ${stats.index.rows} rows, ${fmtBytes(stats.index.bytes)}</td></tr>
        <tr><th>push</th><td>${stats.push ? `${stats.push.pushed} pushed, ${stats.push.pending} pending, ${stats.push.failed_attempts} failed attempts` : 'no push URL'}</td></tr>
      </tbody></table>`}
  </section>`;
}
