import fs from 'node:fs';
import { sha256File } from '../core/file-digest.js';
import path from 'node:path';
import { CARRYON_FILES } from '../carryon/manifest.js';
import { configFromManifest, parameterCountOf } from '../carryon/weights.js';
import type { Multipart } from '@fastify/multipart';
import { ApiError, diskFullError } from '../core/errors.js';
import { LATEST } from '../store/carry-ons.js';
import type { Store } from '../store/store.js';
import { managedTenant } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { BaseModelSource } from './base-model.js';
import type { CarryOnFiles } from './carry-on-files.js';
import type { CarryOnBuilder } from './carry-on-build.js';
import { checkAgainstBase, checkSecondaryBases, checkWeightsDigest, parseUploadedManifest, storedManifest } from './manifest-checks.js';
import { AliasName, UploadTenantField, type CarryOnObject, type CarryOnVersionObject, type DeletedObject, type List, type UploadManifest } from './schemas.js';
import { MAX_MANIFEST_BYTES, receiveCarryOnUpload, WEIGHTS_PART } from './upload-receive.js';
import { view } from './views.js';

export interface CarryOnAdminOptions {
  baseModel: BaseModelSource;
  /** CARRYON_MAX_CARRYON_BYTES: the largest weights file. */
  maxWeightsBytes: number;
  /** Builds the graph from checked weights, in a separate process. */
  builder: CarryOnBuilder;
  /** Why the disk counts as full, or null: uploads are refused (507) while it is. */
  diskFull?: () => string | null;
}

/** Multipart boundaries and part headers on top of the parts themselves. */
const FORM_OVERHEAD_BYTES = 64 * 1024;

export interface UploadRequest {
  /** The request's Content-Length, to refuse an oversized upload before reading it. */
  contentLength: number | undefined;
  parts: () => AsyncIterableIterator<Multipart>;
  /** Called once the whole body is read (the build may take a while after; the client is not idle then). */
  onReceived?: () => void;
}

/** Weights of a carry-on, received or found on disk, with their digest. */
interface WeightsFile {
  path: string;
  sha256: string;
  bytes: number;
}

export class CarryOnAdmin {
  constructor(
    private readonly store: Store,
    private readonly files: CarryOnFiles,
    private readonly opts: CarryOnAdminOptions,
  ) {}

  async list(ctx: AdminContext, tenant: string): Promise<List<CarryOnObject>> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    return view.list((await this.store.carryOns.listForTenant(tenant)).map((c) => view.carryOn(tenant, c)));
  }

  /** `GET /admin/carry-ons`: one tenant's (named, or the admin key's own), or every tenant's for a global admin. */
  async listManaged(ctx: AdminContext, tenant: string | undefined): Promise<List<CarryOnObject>> {
    const scope = tenant ?? ctx.principal.tenantId;
    if (scope !== null) return this.list(ctx, scope);
    const all: CarryOnObject[] = [];
    for (const t of await this.store.tenants.list()) {
      for (const c of await this.store.carryOns.listForTenant(t.id)) all.push(view.carryOn(t.id, c));
    }
    return view.list(all);
  }

  /**
   * The tenant an `/admin/carry-ons/{id}` request acts on: `?tenant=`, else the admin key's own.
   * A global admin key implies none, so it must name one (400); a tenant it may not manage is a 404.
   */
  async tenantFor(ctx: AdminContext, tenant: string | undefined): Promise<string> {
    const resolved = tenant ?? ctx.principal.tenantId;
    if (resolved === null) {
      throw new ApiError('missing_required_parameter', "This admin key manages every tenant: say which one with '?tenant=<tenant>'.", { param: 'tenant' });
    }
    await managedTenant(ctx.principal, this.store.tenants, resolved);
    return resolved;
  }

  async get(ctx: AdminContext, tenant: string, id: string): Promise<CarryOnObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    return view.carryOn(tenant, await this.summary(tenant, id));
  }

  /**
   * Accepts a new version: receive the weights (size-limited, hashed while streaming), check the
   * manifest against the served base and the architecture's limits, then check the weights and
   * build the graph in a separate process, install the graph's blob and record it under the next
   * version number. Any failure leaves nothing behind.
   *
   * `pathTenant` is the tenant of `/admin/tenants/{tenant}/carry-ons`; `POST /admin/carry-ons`
   * passes null and the form's `tenant` field, the manifest's `tenant` or the admin key's own
   * tenant says which (they must agree).
   */
  async upload(ctx: AdminContext, pathTenant: string | null, req: UploadRequest): Promise<CarryOnVersionObject> {
    if (pathTenant !== null) await managedTenant(ctx.principal, this.store.tenants, pathTenant);
    this.opts.baseModel();
    if (this.opts.diskFull?.()) {
      throw diskFullError();
    }
    if (req.contentLength !== undefined && req.contentLength > this.opts.maxWeightsBytes + MAX_MANIFEST_BYTES + FORM_OVERHEAD_BYTES) {
      throw new ApiError('request_too_large', `A carry-on's weights may be at most ${this.opts.maxWeightsBytes} bytes.`, { param: WEIGHTS_PART });
    }
    const staging = this.files.createStagingDir();
    try {
      const received = await receiveCarryOnUpload(
        req.parts(),
        staging,
        { maxWeightsBytes: this.opts.maxWeightsBytes, maxManifestBytes: MAX_MANIFEST_BYTES },
        // A tenant the key may not upload for is refused before weights sent after it are read.
        { onTenant: async (field) => void (await this.uploadTenant(ctx, pathTenant, field, undefined)) },
      );
      req.onReceived?.();
      const manifest = parseUploadedManifest(received.manifestText);
      const tenant = await this.uploadTenant(ctx, pathTenant, received.tenant, manifest.tenant);
      const weights = { path: received.weightsPath, sha256: received.sha256, bytes: received.bytes };
      return await this.install(ctx, tenant, manifest, weights, staging, 'carry_on.upload');
    } finally {
      this.files.discardStaging(staging);
    }
  }

  /**
   * Registers a carry-on package on local disk (a finished training job's output) as the tenant's
   * next version, through the same checks and build as an upload: its weights and manifest only.
   */
  async installPackage(ctx: AdminContext, tenant: string, packageDir: string): Promise<CarryOnVersionObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    const manifest = parseUploadedManifest(fs.readFileSync(path.join(packageDir, CARRYON_FILES.manifest), 'utf8'));
    if (manifest.tenant !== undefined && manifest.tenant !== tenant) {
      throw new ApiError('invalid_value', `The manifest names tenant '${manifest.tenant}', but the package is for tenant '${tenant}'.`, { param: 'manifest.tenant' });
    }
    const weightsPath = path.join(packageDir, CARRYON_FILES.weights);
    const bytes = fs.statSync(weightsPath).size;
    if (bytes > this.opts.maxWeightsBytes) {
      throw new ApiError('request_too_large', `A carry-on's weights may be at most ${this.opts.maxWeightsBytes} bytes.`, { param: WEIGHTS_PART });
    }
    const sha256 = await sha256File(weightsPath);
    const staging = this.files.createStagingDir();
    try {
      return await this.install(ctx, tenant, manifest, { path: weightsPath, sha256, bytes }, staging, 'carry_on.train');
    } finally {
      this.files.discardStaging(staging);
    }
  }

  /**
   * The manifest against the served base and the architecture's limits, the weights checked and
   * the graph built in a separate process, then its blob installed and recorded under the next
   * version number. Any failure leaves nothing behind.
   */
  private async install(
    ctx: AdminContext,
    tenant: string,
    manifest: UploadManifest,
    weights: WeightsFile,
    staging: string,
    action: 'carry_on.upload' | 'carry_on.train',
  ): Promise<CarryOnVersionObject> {
    const base = this.opts.baseModel(manifest.base_fingerprint);
    checkAgainstBase(manifest, base);
    checkSecondaryBases(manifest, base, this.opts.baseModel);
    checkWeightsDigest(manifest, weights.sha256);
    const config = configFromManifest(manifest, base.vocabSize);
    const paramBytes = parameterCountOf(config) * 4;
    if (paramBytes > this.opts.maxWeightsBytes) {
      throw new ApiError(
        'invalid_value',
        `This architecture has ${paramBytes} bytes of weights; a carry-on may have at most ${this.opts.maxWeightsBytes} (CARRYON_MAX_CARRYON_BYTES).`,
        { param: 'manifest.architecture' },
      );
    }
    if (weights.bytes < paramBytes) {
      throw new ApiError('invalid_value', `The weights file is smaller than this architecture's ${paramBytes} bytes of weights.`, { param: WEIGHTS_PART });
    }
    const graphPath = this.files.stagedGraphPath(staging);
    const built = await this.opts.builder.build({ weightsPath: weights.path, graphPath, config });
    if (!built.ok) throw new ApiError('invalid_value', `The carry-on's weights were refused: ${built.problem}.`, { param: built.param });
    // Into the shared bucket first (when there is one), outside the store's write lock: a bucket
    // that is down refuses the upload here with a 503, before anything is recorded.
    await this.files.publishGraph(graphPath, built.sha256);
    let recorded = false;
    try {
      // The blob is made durable inside the write transaction, before the row that points at it.
      const record = await this.store.carryOns.addVersion(tenant, manifest.id, async (version) => {
        const stored = storedManifest(manifest, version, { sha256: built.sha256, parameterCount: built.parameterCount, weightsSha256: weights.sha256 });
        const blob = await this.files.installGraph(graphPath, built.sha256, built.bytes);
        return { graphPath: blob, manifest: stored, sha256: built.sha256, bytes: built.bytes };
      });
      if (!record) throw new ApiError('not_found', `The tenant '${tenant}' was deleted meanwhile.`, { param: 'tenant' });
      recorded = true;
      audit(ctx, { action, tenant, target: `${record.carryOnId}@${record.version}` });
      return view.carryOnVersion(tenant, record.carryOnId, record);
    } finally {
      // The row did not commit: the blob (and object) published for it go too, unless a live
      // version shares them (checked under the write lock).
      if (!recorded) await this.removeFiles(ctx, [this.files.blobPath(built.sha256)]);
    }
  }

  /** The tenant an upload is stored under; every place that names one must name the same. */
  private async uploadTenant(ctx: AdminContext, pathTenant: string | null, field: string | null, manifestTenant: string | undefined): Promise<string> {
    if (field !== null) {
      const parsed = UploadTenantField.safeParse(field);
      if (!parsed.success) throw new ApiError('invalid_value', `Invalid 'tenant': ${parsed.error.issues[0].message}.`, { param: 'tenant' });
    }
    const named = pathTenant ?? field;
    if (pathTenant !== null && field !== null && field !== pathTenant) {
      throw new ApiError('invalid_value', `The form names tenant '${field}', but the upload is for tenant '${pathTenant}'.`, { param: 'tenant' });
    }
    if (named !== null && manifestTenant !== undefined && manifestTenant !== named) {
      throw new ApiError('invalid_value', `The manifest names tenant '${manifestTenant}', but the upload is for tenant '${named}'.`, { param: 'manifest.tenant' });
    }
    const tenant = named ?? manifestTenant ?? ctx.principal.tenantId;
    if (tenant === null) {
      throw new ApiError(
        'missing_required_parameter',
        "This admin key manages every tenant: say which one the carry-on is for, with a 'tenant' form field or a 'tenant' property in the manifest.",
        { param: 'tenant' },
      );
    }
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    return tenant;
  }

  async setAlias(ctx: AdminContext, tenant: string, id: string, alias: string, version: number): Promise<CarryOnObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    await this.summary(tenant, id);
    if (alias === LATEST) throw new ApiError('invalid_value', `'${LATEST}' always means the newest version; it cannot be set.`, { param: 'alias' });
    const name = AliasName.safeParse(alias);
    if (!name.success) throw new ApiError('invalid_value', `Invalid alias '${alias}': ${name.error.issues[0].message}.`, { param: 'alias' });
    if (!(await this.store.carryOns.setAlias(tenant, id, alias, version))) {
      throw new ApiError('invalid_value', `The carry-on '${id}' has no version ${version}.`, { param: 'version' });
    }
    audit(ctx, { action: 'carry_on.alias.set', tenant, target: `${id}@${alias}` });
    return view.carryOn(tenant, await this.summary(tenant, id));
  }

  async removeAlias(ctx: AdminContext, tenant: string, id: string, alias: string): Promise<DeletedObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    await this.summary(tenant, id);
    if (!(await this.store.carryOns.removeAlias(tenant, id, alias))) {
      throw new ApiError('not_found', `The carry-on '${id}' has no alias '${alias}'.`, { param: 'alias' });
    }
    audit(ctx, { action: 'carry_on.alias.delete', tenant, target: `${id}@${alias}` });
    return view.deleted('carry_on.alias', alias);
  }

  async deleteCarryOn(ctx: AdminContext, tenant: string, id: string): Promise<DeletedObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    const dirs = await this.store.carryOns.deleteCarryOn(tenant, id);
    if (!dirs) throw this.notFound(id);
    await this.removeFiles(ctx, dirs);
    audit(ctx, { action: 'carry_on.delete', tenant, target: id });
    return view.deleted('carry_on', id);
  }

  async deleteVersion(ctx: AdminContext, tenant: string, id: string, versionParam: string): Promise<DeletedObject> {
    await managedTenant(ctx.principal, this.store.tenants, tenant);
    const version = /^[1-9][0-9]{0,14}$/.test(versionParam) ? Number(versionParam) : null;
    const result = version === null ? ({ status: 'not-found' } as const) : await this.store.carryOns.deleteVersion(tenant, id, version);
    switch (result.status) {
      case 'not-found':
        throw new ApiError('not_found', `The carry-on '${id}' has no version '${versionParam}'.`, { param: 'version' });
      case 'aliased':
        throw new ApiError(
          'conflict',
          `Version ${versionParam} of '${id}' is still the target of alias(es) ${result.aliases.join(', ')}; point them elsewhere first.`,
          { param: 'version' },
        );
      case 'deleted':
        await this.removeFiles(ctx, [result.files]);
        audit(ctx, { action: 'carry_on.version.delete', tenant, target: `${id}@${versionParam}` });
        return view.deleted('carry_on.version', `${id}@${versionParam}`);
    }
  }

  private async summary(tenant: string, id: string) {
    const c = await this.store.carryOns.get(tenant, id);
    if (!c) throw this.notFound(id);
    return c;
  }

  private notFound(id: string): ApiError {
    return new ApiError('not_found', `The carry-on '${id}' does not exist.`, { param: 'id' });
  }

  /**
   * The rows are already gone, so a file that cannot be removed is only wasted disk: log it, do not
   * fail. Blobs another live version shares stay.
   */
  private async removeFiles(ctx: AdminContext, files: string[]): Promise<void> {
    const failed = await this.files.remove(files);
    if (failed.length > 0) ctx.log.warn({ files: failed }, 'could not remove deleted carry-on files');
  }
}
