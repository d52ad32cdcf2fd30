import type { CarryOnManifest } from './manifest.js';

/** One stored carry-on version, as the engine side needs it. */
export interface CarryOnVersionRecord {
  tenantId: string;
  carryOnId: string;
  version: number;
  /** The version's ONNX graph (content-addressed: versions with identical bytes share one file). */
  graphPath: string;
  manifest: CarryOnManifest;
  sha256: string;
  bytes: number;
}

export interface CarryOnSummary {
  id: string;
  createdAt: string;
  /** Newest live version (a listed carry-on always has one: deleting the last version deletes it). */
  latestVersion: number;
}

export type CarryOnChangeKind = 'version-added' | 'deleted' | 'alias-changed';

export interface CarryOnChange {
  tenantId: string;
  carryOnId: string;
  kind: CarryOnChangeKind;
  /** version-added: the new version; deleted: the deleted version, absent when the whole carry-on went. */
  version?: number;
  /** alias-changed: the alias that was set or removed. */
  alias?: string;
}

/** Where carry-ons are looked up (the metadata store implements it: a query per call). */
export interface CarryOnCatalog {
  /** Latest live version when `versionOrAlias` is absent; null when the tenant has no such carry-on. */
  resolve(tenantId: string, carryOnId: string, versionOrAlias?: string): Promise<CarryOnVersionRecord | null>;
  listForTenant(tenantId: string): Promise<CarryOnSummary[]>;
  onChange(listener: (e: CarryOnChange) => void): void;
  /** Changes made elsewhere may have been missed (the change feed reconnected): whatever was derived from them must be re-checked. */
  onResync?(listener: () => void): void;
}

export function carryOnKey(r: Pick<CarryOnVersionRecord, 'tenantId' | 'carryOnId' | 'version'>): string {
  return `${r.tenantId}/${r.carryOnId}@${r.version}`;
}
