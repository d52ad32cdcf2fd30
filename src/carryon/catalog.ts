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
  latestVersion: number;
  createdAt: string;
}

export interface CarryOnChange {
  tenantId: string;
  carryOnId: string;
  kind: 'version-added' | 'deleted' | 'alias-changed';
}

/** Where carry-ons are looked up (the metadata store implements it). */
export interface CarryOnCatalog {
  /** Latest live version when `versionOrAlias` is absent; null when the tenant has no such carry-on. */
  resolve(tenantId: string, carryOnId: string, versionOrAlias?: string): CarryOnVersionRecord | null;
  listForTenant(tenantId: string): CarryOnSummary[];
  onChange(listener: (e: CarryOnChange) => void): void;
}

export function carryOnKey(r: Pick<CarryOnVersionRecord, 'tenantId' | 'carryOnId' | 'version'>): string {
  return `${r.tenantId}/${r.carryOnId}@${r.version}`;
}
