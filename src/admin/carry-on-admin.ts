import type { Multipart } from '@fastify/multipart';
import { ApiError } from '../errors.js';
import { LATEST } from '../store/carry-ons.js';
import type { Store } from '../store/store.js';
import { managedTenant } from './access.js';
import { audit, type AdminContext } from './audit.js';
import type { BaseModelSource } from './base-model.js';
import type { CarryOnFiles } from './carry-on-files.js';
import { checkCarryOnGraph } from './graph-check.js';
import { checkAgainstBase, checkDigest, parseUploadedManifest, storedManifest } from './manifest-checks.js';
import { AliasName, type CarryOnObject, type CarryOnVersionObject, type DeletedObject, type List } from './protocol.js';
import { MAX_MANIFEST_BYTES, receiveCarryOnUpload } from './upload-receive.js';
import { view } from './views.js';

export interface CarryOnAdminOptions {
  baseModel: BaseModelSource;
  /** CARRYON_MAX_CARRYON_BYTES */
  maxGraphBytes: number;
  /** CARRYON_CARRYON_CHECK_TIMEOUT_MS */
  checkTimeoutMs: number;
}

/** Multipart boundaries and part headers on top of the parts themselves. */
const FORM_OVERHEAD_BYTES = 64 * 1024;

export interface UploadRequest {
  /** The request's Content-Length, to refuse an oversized upload before reading it. */
  contentLength: number | undefined;
  parts: () => AsyncIterableIterator<Multipart>;
}

export class CarryOnAdmin {
  constructor(
    private readonly store: Store,
    private readonly files: CarryOnFiles,
    private readonly opts: CarryOnAdminOptions,
  ) {}

  list(ctx: AdminContext, tenant: string): List<CarryOnObject> {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    return view.list(this.store.carryOns.listForTenant(tenant).map((c) => view.carryOn(tenant, c)));
  }

  get(ctx: AdminContext, tenant: string, id: string): CarryOnObject {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    return view.carryOn(tenant, this.summary(tenant, id));
  }

  /**
   * Accepts a new version: receive (size-limited, hashed while streaming), check the manifest
   * against the served base and the bytes, check and test-run the graph off the main thread,
   * then install it under the next version number. Any failure leaves nothing behind.
   */
  async upload(ctx: AdminContext, tenant: string, req: UploadRequest): Promise<CarryOnVersionObject> {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    const base = this.opts.baseModel();
    if (req.contentLength !== undefined && req.contentLength > this.opts.maxGraphBytes + MAX_MANIFEST_BYTES + FORM_OVERHEAD_BYTES) {
      throw new ApiError('request_too_large', `A carry-on graph may be at most ${this.opts.maxGraphBytes} bytes.`, { param: 'graph' });
    }
    const staging = this.files.createStagingDir();
    let installed = false;
    try {
      const received = await receiveCarryOnUpload(req.parts(), staging, { maxGraphBytes: this.opts.maxGraphBytes, maxManifestBytes: MAX_MANIFEST_BYTES });
      const manifest = parseUploadedManifest(received.manifestText);
      checkAgainstBase(manifest, base);
      checkDigest(manifest, received.sha256);
      const check = await checkCarryOnGraph(
        { graphPath: received.graphPath, manifest: storedManifest(manifest, 1), vocabSize: base.vocabSize },
        this.opts.checkTimeoutMs,
      );
      if (!check.ok) throw new ApiError('invalid_value', `The carry-on graph was refused: ${check.problem}.`, { param: 'graph' });
      const record = this.store.carryOns.addVersion(tenant, manifest.id, (version) => {
        const stored = storedManifest(manifest, version);
        const dir = this.files.install(staging, stored, tenant);
        installed = true;
        return { dir, manifest: stored, sha256: received.sha256, bytes: received.bytes };
      });
      if (!record) throw new ApiError('not_found', `The tenant '${tenant}' was deleted during the upload.`, { param: 'tenant' });
      audit(ctx, { action: 'carry_on.upload', tenant, target: `${record.carryOnId}@${record.version}` });
      return view.carryOnVersion(tenant, record.carryOnId, record);
    } finally {
      if (!installed) this.files.discardStaging(staging);
    }
  }

  setAlias(ctx: AdminContext, tenant: string, id: string, alias: string, version: number): CarryOnObject {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    this.summary(tenant, id);
    if (alias === LATEST) throw new ApiError('invalid_value', `'${LATEST}' always means the newest version; it cannot be set.`, { param: 'alias' });
    const name = AliasName.safeParse(alias);
    if (!name.success) throw new ApiError('invalid_value', `Invalid alias '${alias}': ${name.error.issues[0].message}.`, { param: 'alias' });
    if (!this.store.carryOns.setAlias(tenant, id, alias, version)) {
      throw new ApiError('invalid_value', `The carry-on '${id}' has no version ${version}.`, { param: 'version' });
    }
    audit(ctx, { action: 'carry_on.alias.set', tenant, target: `${id}@${alias}` });
    return view.carryOn(tenant, this.summary(tenant, id));
  }

  removeAlias(ctx: AdminContext, tenant: string, id: string, alias: string): DeletedObject {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    this.summary(tenant, id);
    if (!this.store.carryOns.removeAlias(tenant, id, alias)) {
      throw new ApiError('not_found', `The carry-on '${id}' has no alias '${alias}'.`, { param: 'alias' });
    }
    audit(ctx, { action: 'carry_on.alias.delete', tenant, target: `${id}@${alias}` });
    return view.deleted('carry_on.alias', alias);
  }

  deleteCarryOn(ctx: AdminContext, tenant: string, id: string): DeletedObject {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    const dirs = this.store.carryOns.deleteCarryOn(tenant, id);
    if (!dirs) throw this.notFound(id);
    this.removeFiles(ctx, dirs);
    audit(ctx, { action: 'carry_on.delete', tenant, target: id });
    return view.deleted('carry_on', id);
  }

  deleteVersion(ctx: AdminContext, tenant: string, id: string, versionParam: string): DeletedObject {
    managedTenant(ctx.principal, this.store.tenants, tenant);
    const version = /^[1-9][0-9]{0,14}$/.test(versionParam) ? Number(versionParam) : null;
    const result = version === null ? ({ status: 'not-found' } as const) : this.store.carryOns.deleteVersion(tenant, id, version);
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
        this.removeFiles(ctx, [result.dir]);
        audit(ctx, { action: 'carry_on.version.delete', tenant, target: `${id}@${versionParam}` });
        return view.deleted('carry_on.version', `${id}@${versionParam}`);
    }
  }

  private summary(tenant: string, id: string) {
    const c = this.store.carryOns.get(tenant, id);
    if (!c) throw this.notFound(id);
    return c;
  }

  private notFound(id: string): ApiError {
    return new ApiError('not_found', `The carry-on '${id}' does not exist.`, { param: 'id' });
  }

  /** The rows are already gone, so a file that cannot be removed is only wasted disk: log it, do not fail. */
  private removeFiles(ctx: AdminContext, dirs: string[]): void {
    const failed = this.files.remove(dirs);
    if (failed.length > 0) ctx.log.warn({ dirs: failed }, 'could not remove deleted carry-on files');
  }
}
