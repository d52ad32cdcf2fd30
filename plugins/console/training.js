// Training jobs: start one from the tenant's harvested shards, follow its loss curve while it runs
// (the trainer's loss log, read again twice a second), its held-out evaluation with the α sweep and
// its log tail; cancel; a finished job links to the carry-on version it registered.
import { html, useEffect, useState } from './vendor/htm-preact.js';
import { call, fmtTime, get, q } from './api.js';
import { Plot } from './plot.js';
import { ErrorLine, guarded } from './ui.js';

const ACTIVE = ['queued', 'running', 'registering'];
const POLL_MS = 500;

function StartForm({ tenant, onStarted }) {
  const [f, setF] = useState({ carry_on: '', alias: '', description: '', steps: 300, batch_size: 16, seq_len: 0, lr: 0.003, alpha: 1, width: 64, layers: 2, loss_rows: 'auto' });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const submit = guarded(setError, async (e) => {
    e.preventDefault();
    setError(null);
    const body = {
      tenant,
      carry_on: f.carry_on.trim(),
      ...(f.alias.trim() ? { alias: f.alias.trim() } : {}),
      ...(f.description.trim() ? { description: f.description.trim() } : {}),
      architecture: { width: Number(f.width), layers: Number(f.layers) },
      training: { steps: Number(f.steps), batch_size: Number(f.batch_size), seq_len: Number(f.seq_len), lr: Number(f.lr), alpha: Number(f.alpha), loss_rows: f.loss_rows },
    };
    onStarted(await call('POST', 'admin/training-jobs', { json: body }));
  });
  return html`<form id="training-form" class="inline" onSubmit=${submit}>
    <label>carry-on <input name="carry_on" required value=${f.carry_on} placeholder="id" onInput=${set('carry_on')} /></label>
    <label>alias <input name="alias" value=${f.alias} placeholder="optional" onInput=${set('alias')} /></label>
    <label>description <input name="description" value=${f.description} onInput=${set('description')} /></label>
    <label>steps <input name="steps" type="number" min="1" value=${f.steps} onInput=${set('steps')} /></label>
    <label>batch <input name="batch_size" type="number" min="1" value=${f.batch_size} onInput=${set('batch_size')} /></label>
    <label>sequence <input name="seq_len" type="number" min="0" title="0: the base's context" value=${f.seq_len} onInput=${set('seq_len')} /></label>
    <label>lr <input name="lr" type="number" step="any" min="0" value=${f.lr} onInput=${set('lr')} /></label>
    <label>α <input name="alpha" type="number" step="0.05" min="0" max="4" value=${f.alpha} onInput=${set('alpha')} /></label>
    <label>width <input name="width" type="number" min="8" value=${f.width} onInput=${set('width')} /></label>
    <label>layers <input name="layers" type="number" min="1" max="16" value=${f.layers} onInput=${set('layers')} /></label>
    <label>loss rows <select name="loss_rows" value=${f.loss_rows} onChange=${set('loss_rows')}>
      <option value="auto">auto</option><option value="all">all</option><option value="completion">completion</option>
    </select></label>
    <button type="submit" id="training-start">Start training</button>
    <${ErrorLine} error=${error} id="training-error" />
  </form>`;
}

function JobDetail({ job, onCancel }) {
  const [log, setLog] = useState('');
  const [curve, setCurve] = useState([]);
  useEffect(() => {
    let stopped = false;
    const id = encodeURIComponent(job.id);
    const tail = async () => {
      try {
        const loss = await get(`admin/training-jobs/${id}/loss`);
        const res = await call('GET', `admin/training-jobs/${id}/logs${q({ bytes: 8192 })}`, { raw: true });
        const text = await res.text();
        if (stopped) return;
        setCurve(loss.data);
        setLog(text);
      } catch {
        // Gone between two polls (the page's job list shows why): keep what is drawn.
      }
    };
    void tail();
    if (!ACTIVE.includes(job.status)) return () => { stopped = true; };
    const timer = setInterval(tail, POLL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [job.id, job.status]);
  const ev = job.eval;
  // Held-out loss against α (α = 0 is the base), as the trainer swept it.
  const sweep = ev ? ev.sweep : [];
  const v = job.carry_on_version;
  return html`<div class="card-block" id="job-detail" data-job=${job.id} data-status=${job.status}>
    <h3>${job.id} <small>${job.carry_on}, ${job.shards} shards</small></h3>
    <p>status <b id="job-status">${job.status}</b> · step ${job.progress.step} / ${job.progress.steps}
      ${job.progress.loss !== null ? html` · loss <b>${job.progress.loss.toFixed(4)}</b>` : ''}
      ${ACTIVE.includes(job.status) && html` <button class="danger" id="job-cancel" onClick=${onCancel}>Cancel</button>`}</p>
    ${job.error && html`<p class="error" id="job-failure">${job.error}</p>`}
    <div class="plots">
      <${Plot} id="loss" title="Training loss" time=${false} series=${['loss']} data=${[curve.map((p) => p.step), curve.map((p) => p.loss)]} />
      ${sweep.length > 0 && html`<${Plot} id="alpha-sweep" title="Held-out loss by α" time=${false} series=${['loss']} data=${[sweep.map((p) => p.alpha), sweep.map((p) => p.loss)]} />`}
    </div>
    ${ev && html`<table id="job-eval"><tbody>
      <tr><th>held-out loss, base</th><td>${ev.base_loss.toFixed(4)}</td></tr>
      <tr><th>held-out loss, carry-on at the trained α${ev.trained_alpha === null ? '' : ` (${ev.trained_alpha})`}</th><td>${ev.carry_on_loss.toFixed(4)}</td></tr>
      <tr><th>best α</th><td>${ev.best_alpha} (${ev.best_alpha_loss.toFixed(4)})</td></tr>
      ${ev.parity_max_abs_diff !== null && html`<tr><th>export parity (max |Δ|)</th><td>${ev.parity_max_abs_diff}</td></tr>`}
    </tbody></table>`}
    ${v && html`<p class="ok" id="job-version">Registered <a href="#/carry-ons" id="job-version-link">${v.carry_on} version ${v.version}</a> (default α ${v.manifest.default_alpha}).</p>`}
    <h4>Log (end)</h4>
    <pre class="log" id="job-log">${log}</pre>
  </div>`;
}

export function TrainingPage({ tenant }) {
  const [jobs, setJobs] = useState([]);
  const [selected, setSelected] = useState(null);
  const [error, setError] = useState(null);
  const reload = async () => {
    if (!tenant) return;
    try {
      setJobs((await get(`admin/training-jobs${q({ tenant })}`)).data);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => {
    setSelected(null);
    void reload();
  }, [tenant]);
  const anyActive = jobs.some((j) => ACTIVE.includes(j.status));
  useEffect(() => {
    if (!anyActive) return undefined;
    const timer = setInterval(() => void reload(), POLL_MS);
    return () => clearInterval(timer);
  }, [anyActive, tenant]);
  const job = jobs.find((j) => j.id === selected) || null;
  const cancel = guarded(setError, async () => {
    await call('POST', `admin/training-jobs/${encodeURIComponent(job.id)}/cancel`);
    await reload();
  });
  return html`<section id="training-page">
    <h2>Training jobs of ${tenant || '…'}</h2>
    <p class="hint">A job trains on every shard of ${tenant} harvested from the served base, and registers the result as the carry-on's next version.</p>
    <${StartForm} tenant=${tenant} onStarted=${async (j) => { setSelected(j.id); await reload(); }} />
    <${ErrorLine} error=${error} id="jobs-error" />
    <table id="jobs-table">
      <thead><tr><th>id</th><th>carry-on</th><th>status</th><th>progress</th><th>created</th><th>finished</th></tr></thead>
      <tbody>${jobs.map((j) => html`<tr data-job=${j.id} class=${j.id === selected ? 'selected' : ''}>
        <td><a href="#/training" onClick=${() => setSelected(j.id)}>${j.id}</a></td><td>${j.carry_on}</td><td class="status">${j.status}</td>
        <td>${j.progress.step}/${j.progress.steps}</td><td>${fmtTime(j.created_at)}</td><td>${fmtTime(j.finished_at)}</td>
      </tr>`)}</tbody>
    </table>
    ${job && html`<${JobDetail} key=${job.id} job=${job} onCancel=${cancel} />`}
  </section>`;
}
