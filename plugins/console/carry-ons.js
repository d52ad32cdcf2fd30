// Carry-ons: upload (manifest.json + weights.safetensors, by file pickers or drag and drop) with
// the server's validation errors next to the field they name; versions, aliases, delete; and a
// playground comparing the base with a carry-on on one prompt, streamed, with an α slider.
import { html, useState } from './vendor/htm-preact.js';
import { call, fmtBytes, fmtTime, get, streamCompletion } from './api.js';
import { ConfirmButton, ErrorLine, guarded, useTenantLoad } from './ui.js';

const FIELDS = ['tenant', 'manifest', 'weights'];

/** The form field an upload error is about: the first segment of its `param` (`manifest.base_fingerprint` → manifest). */
export function fieldOf(param) {
  if (!param) return null;
  const head = param.split('.')[0];
  if (FIELDS.includes(head)) return head;
  // An ONNX part ('model'/'graph') is refused as the wrong kind of weights file.
  if (head === 'model' || head === 'graph') return 'weights';
  return null;
}

function FieldError({ errors, field }) {
  const e = errors[field];
  return e ? html`<p class="error field-error" id=${`error-${field}`} data-param=${e.param}>${e.message} <code>(${e.param})</code></p>` : null;
}

function Upload({ tenant, onUploaded }) {
  const [files, setFiles] = useState({ manifest: null, weights: null });
  const [errors, setErrors] = useState({});
  const [general, setGeneral] = useState(null);
  const [done, setDone] = useState(null);
  const [busy, setBusy] = useState(false);
  const [over, setOver] = useState(false);
  const pick = (field) => (e) => setFiles({ ...files, [field]: e.target.files[0] || null });
  const drop = (e) => {
    e.preventDefault();
    setOver(false);
    const next = { ...files };
    const errs = {};
    for (const f of e.dataTransfer.files) {
      if (f.name.endsWith('.json')) next.manifest = f;
      else if (f.name.endsWith('.safetensors')) next.weights = f;
      else errs.weights = { message: `${f.name}: drop the package's manifest.json and weights.safetensors (the gateway builds the graph itself)`, param: 'weights' };
    }
    setFiles(next);
    setErrors(errs);
  };
  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    setGeneral(null);
    setDone(null);
    setBusy(true);
    try {
      // The tenant first: the server checks it before it reads the weights.
      const form = new FormData();
      form.append('tenant', tenant);
      form.append('manifest', files.manifest, files.manifest.name);
      form.append('weights', files.weights, files.weights.name);
      const v = await call('POST', 'admin/carry-ons', { form });
      setDone(v);
      onUploaded(v);
    } catch (err) {
      const field = fieldOf(err.param);
      if (field) setErrors({ [field]: { message: err.message, param: err.param } });
      else setGeneral(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<form id="upload-form" class=${`upload ${over ? 'over' : ''}`} onSubmit=${submit}
      onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragLeave=${() => setOver(false)} onDrop=${drop}>
    <h3>Upload a version to ${tenant}</h3>
    <p class="hint">Drop the package's <code>manifest.json</code> and <code>weights.safetensors</code> here, or pick them. The gateway checks them against the served base and builds the graph.</p>
    <div class="field"><label>tenant <input readonly value=${tenant} /></label><${FieldError} errors=${errors} field="tenant" /></div>
    <div class="field">
      <label>manifest.json <input id="upload-manifest" type="file" accept=".json,application/json" onChange=${pick('manifest')} /></label>
      ${files.manifest && html`<span class="hint">${files.manifest.name}</span>`}
      <${FieldError} errors=${errors} field="manifest" />
    </div>
    <div class="field">
      <label>weights.safetensors <input id="upload-weights" type="file" accept=".safetensors" onChange=${pick('weights')} /></label>
      ${files.weights && html`<span class="hint">${files.weights.name} (${fmtBytes(files.weights.size)})</span>`}
      <${FieldError} errors=${errors} field="weights" />
    </div>
    <button type="submit" id="upload-submit" disabled=${busy || !files.manifest || !files.weights}>${busy ? 'Uploading…' : 'Upload'}</button>
    <${ErrorLine} error=${general} id="upload-error" />
    ${done && html`<p class="ok" id="upload-done">Stored ${done.carry_on} version ${done.version} (${fmtBytes(done.bytes)}, ${done.manifest.parameter_count} parameters).</p>`}
  </form>`;
}

function AliasForm({ c, onChange, setError }) {
  const [alias, setAlias] = useState('');
  const [version, setVersion] = useState(String(c.latest_version));
  const submit = guarded(setError, async (e) => {
    e.preventDefault();
    onChange(await call('PUT', `admin/tenants/${encodeURIComponent(c.tenant)}/carry-ons/${encodeURIComponent(c.id)}/aliases/${encodeURIComponent(alias.trim())}`, { json: { version: Number(version) } }));
    setAlias('');
  });
  return html`<form class="inline" id=${`alias-form-${c.id}`} onSubmit=${submit}>
    <label>alias <input name="alias" required value=${alias} placeholder="stable" onInput=${(e) => setAlias(e.target.value)} /></label>
    <label>→ version <select name="version" value=${version} onChange=${(e) => setVersion(e.target.value)}>
      ${c.versions.map((v) => html`<option value=${v.version}>${v.version}</option>`)}
    </select></label>
    <button type="submit">Set / move alias</button>
  </form>`;
}

function CarryOnCard({ c, reload, setError }) {
  const base = `admin/tenants/${encodeURIComponent(c.tenant)}/carry-ons/${encodeURIComponent(c.id)}`;
  const act = (fn) =>
    guarded(setError, async () => {
      await fn();
      await reload();
    });
  return html`<div class="card-block" data-carry-on=${c.id}>
    <h3>${c.id} <small>latest v${c.latest_version}, created ${fmtTime(c.created_at)}</small></h3>
    <p>aliases: ${Object.keys(c.aliases).length === 0 ? html`<span class="hint">none</span>` : ''}
      ${Object.entries(c.aliases).map(([a, v]) => html`<span class="tag" data-alias=${a}>${a} → v${v}
        <button class="link" title="remove alias" onClick=${act(() => call('DELETE', `${base}/aliases/${encodeURIComponent(a)}`))}>×</button></span> `)}
    </p>
    <${AliasForm} c=${c} onChange=${() => reload()} setError=${setError} />
    <table class="versions">
      <thead><tr><th>version</th><th>sha256</th><th>bytes</th><th>parameters</th><th>inputs</th><th>α default</th><th>created</th><th></th></tr></thead>
      <tbody>${c.versions.map((v) => html`<tr data-version=${v.version}>
        <td>${v.version}</td><td><code title=${v.sha256}>${v.sha256.slice(0, 12)}</code></td><td>${fmtBytes(v.bytes)}</td>
        <td>${v.manifest.parameter_count}</td><td>${(v.manifest.input_layers || []).join(', ')}</td><td>${v.manifest.default_alpha}</td><td>${fmtTime(v.created_at)}</td>
        <td><${ConfirmButton} id=${`delete-${c.id}-v${v.version}`} label="Delete" confirm="Delete version" onConfirm=${act(() => call('DELETE', `${base}/versions/${v.version}`))} /></td>
      </tr>`)}</tbody>
    </table>
    <${ConfirmButton} id=${`delete-${c.id}`} label=${`Delete ${c.id}`} confirm="Delete every version and alias" onConfirm=${act(() => call('DELETE', base))} />
  </div>`;
}

function Playground({ me, tenant, carryOns }) {
  const choices = carryOns.flatMap((c) => [...c.versions.map((v) => `${c.id}@${v.version}`), ...Object.keys(c.aliases).map((a) => `${c.id}@${a}`)]);
  const [model, setModel] = useState('');
  const [prompt, setPrompt] = useState('Once upon a time');
  const [maxTokens, setMaxTokens] = useState(40);
  const [alpha, setAlpha] = useState(1);
  const [out, setOut] = useState({ base: '', carry: '' });
  const [status, setStatus] = useState('idle');
  const [error, setError] = useState(null);
  const chosen = model || choices[0] || '';
  const run = async (e) => {
    e.preventDefault();
    setError(null);
    setOut({ base: '', carry: '' });
    setStatus('running');
    try {
      // A global admin key belongs to no tenant on /v1: it acts for the page's tenant by header.
      const opts = me.global ? { tenant } : {};
      const models = await get('v1/models', opts);
      const baseName = models.data.find((m) => m.parent === null).id;
      const common = { prompt, max_tokens: Number(maxTokens), temperature: 0 };
      await Promise.all([
        streamCompletion({ ...common, model: `${baseName}:base` }, opts, (t) => setOut((o) => ({ ...o, base: t }))),
        streamCompletion({ ...common, model: `${baseName}:${chosen}`, carry_on_alpha: Number(alpha) }, opts, (t) => setOut((o) => ({ ...o, carry: t }))),
      ]);
      setStatus('done');
    } catch (err) {
      setError(err);
      setStatus('failed');
    }
  };
  return html`<section id="playground">
    <h2>Playground</h2>
    <form id="playground-form" class="inline" onSubmit=${run}>
      <label>carry-on <select id="playground-model" value=${chosen} onChange=${(e) => setModel(e.target.value)}>
        ${choices.map((m) => html`<option value=${m}>${m}</option>`)}
      </select></label>
      <label>max tokens <input type="number" min="1" max="512" value=${maxTokens} onInput=${(e) => setMaxTokens(e.target.value)} /></label>
      <label>α <input id="alpha" type="range" min="0" max="4" step="0.05" value=${alpha} onInput=${(e) => setAlpha(e.target.value)} /> <output id="alpha-value">${Number(alpha).toFixed(2)}</output></label>
      <button type="submit" id="playground-run" disabled=${!chosen || status === 'running'}>Run</button>
      <span class="hint" id="playground-status" data-status=${status}>${status}</span>
    </form>
    <textarea id="playground-prompt" rows="3" value=${prompt} onInput=${(e) => setPrompt(e.target.value)}></textarea>
    <${ErrorLine} error=${error} id="playground-error" />
    <div class="side-by-side">
      <div><h4>base</h4><pre id="out-base">${out.base}</pre></div>
      <div><h4>${chosen || 'carry-on'} at α = ${Number(alpha).toFixed(2)}</h4><pre id="out-carry-on">${out.carry}</pre></div>
    </div>
  </section>`;
}

export function CarryOnsPage({ me, tenant }) {
  const [carryOns, setCarryOns] = useState([]);
  const [error, setError] = useState(null);
  const reload = useTenantLoad(tenant, setError, async () => setCarryOns((await get(`admin/tenants/${encodeURIComponent(tenant)}/carry-ons`)).data));
  if (!tenant) return html`<p class="note">Create a tenant first.</p>`;
  return html`<section id="carry-ons-page">
    <h2>Carry-ons of ${tenant}</h2>
    <${ErrorLine} error=${error} id="carry-ons-error" />
    <${Upload} tenant=${tenant} onUploaded=${() => reload()} />
    <div id="carry-on-list">
      ${carryOns.length === 0 && html`<p class="hint">No carry-ons yet.</p>`}
      ${carryOns.map((c) => html`<${CarryOnCard} key=${c.id} c=${c} reload=${reload} setError=${setError} />`)}
    </div>
    <${Playground} me=${me} tenant=${tenant} carryOns=${carryOns} />
  </section>`;
}
