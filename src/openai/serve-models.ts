import { isPending, type Caller } from '../serving/model-routing.js';
import type { BaseModelState, Gateway } from '../serving/gateway.js';

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

/**
 * Every served base, then the caller's own carry-ons (never another tenant's), each with the base
 * it was trained on as parent and root. A carry-on for a base this gateway does not serve is left
 * out (it cannot answer here); while bases load, one whose base is not known yet shows the default.
 */
export async function listModels(gw: Gateway, caller: Caller): Promise<{ object: 'list'; data: ModelCard[] }> {
  const bases = gw.bases.map((b) => baseCard(gw, b));
  const loading = gw.bases.some(isPending);
  const own =
    caller.tenantId && gw.catalog
      ? (
          await Promise.all(
            (await gw.catalog.listForTenant(caller.tenantId)).map(async (c) => {
              const latest = await gw.catalog!.resolve(caller.tenantId!, c.id);
              const base = latest ? gw.router.baseNameOf(latest) : null;
              if (base === null && !loading) return [];
              return [carryOnCard(gw, gw.base(base ?? gw.modelName), c.id, caller.tenantId!, Date.parse(c.createdAt))];
            }),
          )
        ).flat()
      : [];
  return { object: 'list', data: [...bases, ...own] };
}

export async function retrieveModel(gw: Gateway, model: string, caller: Caller): Promise<ModelCard> {
  const { base, record } = await gw.router.resolve(model, { ...caller, defaultCarryOn: null });
  const state = gw.base(base);
  return record ? carryOnCard(gw, state, model, record.tenantId, Date.parse(record.manifest.created_at)) : { ...baseCard(gw, state), id: model };
}

function baseCard(gw: Gateway, base: BaseModelState): ModelCard {
  return { id: base.name, object: 'model', created: gw.created, owned_by: 'carry-on-gateway', root: base.name, parent: null, ...contextOf(base) };
}

function carryOnCard(gw: Gateway, base: BaseModelState, id: string, tenant: string, createdMs: number): ModelCard {
  return { id, object: 'model', created: Math.floor(createdMs / 1000) || gw.created, owned_by: tenant, root: base.name, parent: base.name, ...contextOf(base) };
}

/** A carry-on reads its base's hidden states, so it has that base's context. */
function contextOf(base: BaseModelState): { max_model_len?: number } {
  return base.status === 'ready' && base.services ? { max_model_len: base.services.contextLength } : {};
}
