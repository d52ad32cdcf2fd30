// Tenants and keys: create a tenant (global admin), create a key (shown once), set a key's default
// carry-on and harvest policy, revoke.
import { html, useEffect, useState } from './vendor/htm-preact.js';
import { call, fmtTime, get, q } from './api.js';
import { ConfirmButton, ErrorLine, guarded, useTenantLoad } from './ui.js';

// The tenant id slug (docs/admin.md); `\-`: input patterns are compiled with the v flag, where a bare `-` in a class is an error.
const TENANT_PATTERN = '[a-z0-9][a-z0-9_\\-]{0,62}';

function harvestText(h) {
  if (!h) return 'off';
  return `${h.sample_rate * 100}%${h.keep ? `, ${h.keep}` : ''}${h.layers ? `, layers ${h.layers.join(' ')}` : ''}${h.bases ? `, bases ${h.bases.join(' ')}` : ''}`;
}

/**
 * The harvest policy fields → the API's `harvest` object, or null (off) when the rate is blank.
 * The fields this form does not edit (layers, bases) are kept from the key's policy: a PATCH replaces it whole.
 */
function harvestBody(rate, keep, previous = null) {
  if (rate === '') return null;
  const kept = {};
  if (previous && previous.layers) kept.layers = previous.layers;
  if (previous && previous.bases) kept.bases = previous.bases;
  return { ...kept, sample_rate: Number(rate), ...(keep ? { keep } : {}) };
}

function NewKey({ created, onDone }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied(true);
    } catch {
      // No clipboard permission (an insecure origin): select it for a manual copy instead.
      document.getElementById('new-key').select();
    }
  };
  return html`<div class="new-key" id="new-key-box">
    <p class="warning"><b>Copy this key now.</b> It is shown only once: the gateway keeps only its hash.</p>
    <div class="row">
      <input id="new-key" readonly value=${created.key} onFocus=${(e) => e.target.select()} />
      <button id="copy-key" onClick=${copy}>${copied ? 'Copied' : 'Copy'}</button>
      <button class="secondary" id="new-key-done" onClick=${onDone}>Done</button>
    </div>
    <p class="hint">${created.id} · ${created.scope} · tenant ${created.tenant || '(global)'}</p>
  </div>`;
}

function KeyEditor({ k, onSaved, onCancel }) {
  const [defaultCarryOn, setDefault] = useState(k.default_carry_on || '');
  const [rate, setRate] = useState(k.harvest ? String(k.harvest.sample_rate) : '');
  const [keep, setKeep] = useState(k.harvest && k.harvest.keep ? k.harvest.keep : '');
  const [error, setError] = useState(null);
  const save = guarded(setError, async (e) => {
    e.preventDefault();
    const body = { default_carry_on: defaultCarryOn.trim() || null, harvest: harvestBody(rate.trim(), keep, k.harvest) };
    onSaved(await call('PATCH', `admin/keys/${encodeURIComponent(k.id)}`, { json: body }));
  });
  return html`<form class="inline" id=${`edit-${k.id}`} onSubmit=${save}>
    <label>default carry-on <input name="default_carry_on" value=${defaultCarryOn} placeholder="id or id@alias" onInput=${(e) => setDefault(e.target.value)} /></label>
    <label>harvest rate <input name="sample_rate" type="number" min="0" max="1" step="0.01" value=${rate} placeholder="off" onInput=${(e) => setRate(e.target.value)} /></label>
    <label>keep <select name="keep" value=${keep} onChange=${(e) => setKeep(e.target.value)}>
      <option value="">both (default)</option><option value="prompt">prompt</option><option value="completion">completion</option><option value="both">both</option>
    </select></label>
    <button type="submit">Save</button>
    <button type="button" class="secondary" onClick=${onCancel}>Cancel</button>
    <${ErrorLine} error=${error} id=${`edit-error-${k.id}`} />
  </form>`;
}

export function TenantsPage({ me, tenant, tenants, refreshTenants, setTenant }) {
  const [keys, setKeys] = useState([]);
  const [error, setError] = useState(null);
  const [created, setCreated] = useState(null);
  const [editing, setEditing] = useState(null);
  const [newTenant, setNewTenant] = useState({ id: '', name: '' });
  const [newKey, setNewKey] = useState({ name: '', scope: 'inference', default_carry_on: '', rate: '', keep: '' });
  const loadKeys = useTenantLoad(tenant, setError, async () => setKeys((await get(`admin/keys${q({ tenant })}`)).data));
  useEffect(() => setCreated(null), [tenant]);
  const createTenant = guarded(setError, async (e) => {
    e.preventDefault();
    setError(null);
    const t = await call('POST', 'admin/tenants', { json: { id: newTenant.id.trim(), ...(newTenant.name.trim() ? { name: newTenant.name.trim() } : {}) } });
    setNewTenant({ id: '', name: '' });
    await refreshTenants();
    setTenant(t.id);
  });
  const deleteTenant = guarded(setError, async (id) => {
    await call('DELETE', `admin/tenants/${encodeURIComponent(id)}`);
    await refreshTenants();
    if (id === tenant) setTenant(null);
  });
  const createKey = guarded(setError, async (e) => {
    e.preventDefault();
    setError(null);
    const body = { tenant, scope: newKey.scope };
    if (newKey.name.trim()) body.name = newKey.name.trim();
    if (newKey.default_carry_on.trim()) body.default_carry_on = newKey.default_carry_on.trim();
    const h = harvestBody(newKey.rate.trim(), newKey.keep);
    if (h) body.harvest = h;
    setCreated(await call('POST', 'admin/keys', { json: body }));
    setNewKey({ name: '', scope: 'inference', default_carry_on: '', rate: '', keep: '' });
    await loadKeys();
  });
  const revoke = guarded(setError, async (id) => {
    await call('DELETE', `admin/keys/${encodeURIComponent(id)}`);
    await loadKeys();
  });
  return html`<section id="tenants-page">
    <h2>Tenants</h2>
    <${ErrorLine} error=${error} id="tenants-error" />
    <table id="tenants-table">
      <thead><tr><th>id</th><th>name</th><th>created</th><th></th></tr></thead>
      <tbody>${tenants.map((t) => html`<tr class=${t.id === tenant ? 'selected' : ''} data-tenant=${t.id}>
        <td><a href="#/tenants" onClick=${() => setTenant(t.id)}>${t.id}</a></td><td>${t.name || ''}</td><td>${fmtTime(t.created_at)}</td>
        <td>${me.global && html`<${ConfirmButton} id=${`delete-tenant-${t.id}`} label="Delete" confirm="Delete tenant, its keys, carry-ons and harvest" onConfirm=${() => deleteTenant(t.id)} />`}</td>
      </tr>`)}</tbody>
    </table>
    ${me.global &&
    html`<form class="inline" id="create-tenant" onSubmit=${createTenant}>
      <label>id <input name="id" required pattern=${TENANT_PATTERN} value=${newTenant.id} onInput=${(e) => setNewTenant({ ...newTenant, id: e.target.value })} /></label>
      <label>name <input name="name" value=${newTenant.name} onInput=${(e) => setNewTenant({ ...newTenant, name: e.target.value })} /></label>
      <button type="submit">Create tenant</button>
    </form>`}

    <h2>Keys of ${tenant || '…'}</h2>
    ${created && html`<${NewKey} created=${created} onDone=${() => setCreated(null)} />`}
    <table id="keys-table">
      <thead><tr><th>id</th><th>name</th><th>scope</th><th>prefix</th><th>default carry-on</th><th>harvest</th><th>created</th><th>state</th><th></th></tr></thead>
      <tbody>${keys.map((k) => html`<tr data-key=${k.id} class=${k.revoked_at ? 'revoked' : ''}>
        <td><code>${k.id}</code></td><td>${k.name || ''}</td><td>${k.scope}</td><td><code>${k.prefix}…</code></td>
        <td class="default-carry-on">${k.default_carry_on || '–'}</td><td class="harvest">${harvestText(k.harvest)}</td><td>${fmtTime(k.created_at)}</td>
        <td class="state">${k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}` : 'active'}</td>
        <td>${!k.revoked_at && html`<button class="secondary" id=${`edit-key-${k.id}`} onClick=${() => setEditing(k.id)}>Edit</button>`}
          ${!k.revoked_at && k.origin === 'api' && html`<${ConfirmButton} id=${`revoke-${k.id}`} label="Revoke" confirm="Revoke now" onConfirm=${() => revoke(k.id)} />`}
          ${!k.revoked_at && k.origin !== 'api' && html`<span class="hint" title="revoked by changing the configuration">configured</span>`}</td>
      </tr>
      ${editing === k.id && html`<tr><td colspan="9"><${KeyEditor} k=${k} onCancel=${() => setEditing(null)} onSaved=${() => { setEditing(null); void loadKeys(); }} /></td></tr>`}`)}</tbody>
    </table>
    ${tenant &&
    html`<form class="inline" id="create-key" onSubmit=${createKey}>
      <label>name <input name="name" value=${newKey.name} onInput=${(e) => setNewKey({ ...newKey, name: e.target.value })} /></label>
      <label>scope <select name="scope" value=${newKey.scope} onChange=${(e) => setNewKey({ ...newKey, scope: e.target.value })}>
        <option value="inference">inference</option><option value="admin">admin (this tenant)</option>
      </select></label>
      <label>default carry-on <input name="default_carry_on" value=${newKey.default_carry_on} placeholder="optional" onInput=${(e) => setNewKey({ ...newKey, default_carry_on: e.target.value })} /></label>
      <label>harvest rate <input name="sample_rate" type="number" min="0" max="1" step="0.01" value=${newKey.rate} placeholder="off" onInput=${(e) => setNewKey({ ...newKey, rate: e.target.value })} /></label>
      <button type="submit">Create key</button>
    </form>`}
  </section>`;
}
