// Small pieces every page uses: error display, a two-click button, and the error plumbing of
// actions and tenant-scoped loads.
import { html, useEffect, useState } from './vendor/htm-preact.js';

/** A button that asks for a second click before doing something that cannot be undone. */
export function ConfirmButton({ label, confirm, onConfirm, id }) {
  const [armed, setArmed] = useState(false);
  return armed
    ? html`<button class="danger" id=${id && `${id}-confirm`} onClick=${() => { setArmed(false); onConfirm(); }}>${confirm}</button>
        <button class="secondary" onClick=${() => setArmed(false)}>Cancel</button>`
    : html`<button class="secondary" id=${id} onClick=${() => setArmed(true)}>${label}</button>`;
}

/** A gateway error, with the field (`param`) it names. */
export function ErrorLine({ error, id }) {
  if (!error) return null;
  return html`<p class="error" id=${id}>${error.message}${error.param ? html` <code>(${error.param})</code>` : ''}</p>`;
}

/** `fn` as an event handler whose failure is shown (via `setError`) instead of thrown away. */
export function guarded(setError, fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (err) {
      setError(err);
    }
  };
}

/** Runs `load` whenever the page's tenant changes (and on demand: the returned reload). */
export function useTenantLoad(tenant, setError, load) {
  const reload = guarded(setError, async () => {
    if (tenant) await load();
  });
  useEffect(() => {
    setError(null);
    void reload();
  }, [tenant]);
  return reload;
}
