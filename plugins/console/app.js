// The console's shell: sign-in, who the key is, navigation between the pages (hash routes, so the
// page works under any path prefix), and the tenant the tenant-level pages look at.
import { html, render, useEffect, useState } from './vendor/htm-preact.js';
import { ApiError, get, session } from './api.js';
import { CarryOnsPage } from './carry-ons.js';
import { HarvestPage } from './harvest.js';
import { OverviewPage } from './overview.js';
import { TenantsPage } from './tenants.js';
import { TrainingPage } from './training.js';

const PAGES = [
  { id: 'overview', title: 'Overview', component: OverviewPage },
  { id: 'tenants', title: 'Tenants & keys', component: TenantsPage },
  { id: 'carry-ons', title: 'Carry-ons', component: CarryOnsPage },
  { id: 'harvest', title: 'Harvest', component: HarvestPage },
  { id: 'training', title: 'Training', component: TrainingPage },
];

/**
 * Who a key is, from documented routes only: GET admin/keys lists the keys it manages, its own
 * among them, recognisable by its displayed prefix (the key's first 8 characters). A global admin
 * key is one without a tenant; a tenant's admin key sees and manages that tenant only.
 */
export async function whoami(key) {
  const keys = await get('admin/keys', { key });
  const mine = keys.data.filter((k) => k.prefix === key.slice(0, 8) && k.scope === 'admin' && !k.revoked_at);
  const tenants = new Set(mine.map((k) => k.tenant));
  if (tenants.size === 1 && !tenants.has(null)) return { global: false, tenant: [...tenants][0] };
  if (tenants.has(null)) return { global: true, tenant: null };
  // Not found (should not happen): the tenants it manages tell.
  const list = await get('admin/tenants', { key });
  return list.data.length === 1 ? { global: false, tenant: list.data[0].id } : { global: true, tenant: null };
}

function route() {
  const m = /^#\/([\w-]+)/.exec(location.hash);
  return m && PAGES.some((p) => p.id === m[1]) ? m[1] : 'overview';
}

function Login({ onLogin }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const me = await whoami(key.trim());
      session.set(key.trim());
      onLogin(me);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 403 ? 'This key is not an admin key.' : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <h1>Carry-On Gateway</h1>
    <form id="login-form" onSubmit=${submit}>
      <label for="key-input">Admin key</label>
      <input id="key-input" type="password" autocomplete="off" spellcheck="false" value=${key} onInput=${(e) => setKey(e.target.value)} placeholder="sk-…" />
      <button type="submit" disabled=${busy || !key.trim()}>Sign in</button>
      ${error && html`<p class="error" id="login-error">${error}</p>`}
      <p class="hint">The key stays in this tab (sessionStorage) and is sent only as the Authorization header.</p>
    </form>
  </main>`;
}

function Shell({ me, onLogout }) {
  const [page, setPage] = useState(route());
  const [tenants, setTenants] = useState([]);
  const [tenant, setTenant] = useState(me.tenant);
  const [error, setError] = useState(null);
  const refreshTenants = async () => {
    try {
      const list = await get('admin/tenants');
      setTenants(list.data);
      if (!tenant && list.data.length) setTenant(list.data[0].id);
    } catch (err) {
      setError(err.message);
    }
  };
  useEffect(() => {
    const onHash = () => setPage(route());
    window.addEventListener('hashchange', onHash);
    void refreshTenants();
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  const Page = PAGES.find((p) => p.id === page).component;
  return html`<div class="shell">
    <header>
      <strong class="brand">Carry-On Gateway</strong>
      <nav>
        ${PAGES.map((p) => html`<a href=${`#/${p.id}`} class=${p.id === page ? 'active' : ''} id=${`nav-${p.id}`}>${p.title}</a>`)}
      </nav>
      <label class="tenant-pick">
        Tenant
        ${me.global
          ? html`<select id="tenant-select" value=${tenant || ''} onChange=${(e) => setTenant(e.target.value)}>
              ${tenants.map((t) => html`<option value=${t.id}>${t.id}</option>`)}
            </select>`
          : html`<span id="tenant-fixed">${me.tenant}</span>`}
      </label>
      <span class="who" id="who">${me.global ? 'global admin' : `admin of ${me.tenant}`}</span>
      <button id="logout" class="secondary" onClick=${onLogout}>Sign out</button>
    </header>
    ${error && html`<p class="error">${error}</p>`}
    <main>
      <${Page} me=${me} tenant=${tenant} tenants=${tenants} refreshTenants=${refreshTenants} setTenant=${setTenant} />
    </main>
  </div>`;
}

function App() {
  const [me, setMe] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.key));
  useEffect(() => {
    // A reload in the same tab keeps the session: check the stored key again.
    if (!session.key) return;
    whoami(session.key)
      .then(setMe)
      .catch(() => session.clear())
      .finally(() => setChecking(false));
  }, []);
  if (checking) return html`<p class="loading">Checking the key…</p>`;
  if (!me) return html`<${Login} onLogin=${setMe} />`;
  return html`<${Shell}
    me=${me}
    onLogout=${() => {
      session.clear();
      setMe(null);
    }}
  />`;
}

const root = document.getElementById('app');
// Preact diffs against what is there: drop the "Loading…" placeholder first.
root.textContent = '';
render(html`<${App} />`, root);
