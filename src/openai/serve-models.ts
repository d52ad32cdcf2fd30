import type { Caller } from '../serving/model-routing.js';
import type { Gateway } from '../serving/gateway.js';

interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  root: string;
  parent: string | null;
  /** The context length in tokens (vLLM's field), once the model is loaded. */
  max_model_len?: number;
}

/** The base, then the caller's own carry-ons (never another tenant's), each with the base as parent and root. */
export async function listModels(gw: Gateway, caller: Caller): Promise<{ object: 'list'; data: ModelCard[] }> {
  const base = baseCard(gw);
  const own =
    caller.tenantId && gw.catalog
      ? (await gw.catalog.listForTenant(caller.tenantId)).map((c) => carryOnCard(gw, c.id, caller.tenantId!, Date.parse(c.createdAt)))
      : [];
  return { object: 'list', data: [base, ...own] };
}

export async function retrieveModel(gw: Gateway, model: string, caller: Caller): Promise<ModelCard> {
  const record = await gw.router.route(model, { ...caller, defaultCarryOn: null });
  return record ? carryOnCard(gw, model, record.tenantId, Date.parse(record.manifest.created_at)) : { ...baseCard(gw), id: model };
}

function baseCard(gw: Gateway): ModelCard {
  return { id: gw.modelName, object: 'model', created: gw.created, owned_by: 'carry-on-gateway', root: gw.modelName, parent: null, ...contextOf(gw) };
}

function carryOnCard(gw: Gateway, id: string, tenant: string, createdMs: number): ModelCard {
  return { id, object: 'model', created: Math.floor(createdMs / 1000) || gw.created, owned_by: tenant, root: gw.modelName, parent: gw.modelName, ...contextOf(gw) };
}

/** A carry-on reads the base's hidden states, so it has the base's context. */
function contextOf(gw: Gateway): { max_model_len?: number } {
  return gw.status === 'ready' ? { max_model_len: gw.model().contextLength } : {};
}
