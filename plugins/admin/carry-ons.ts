import multipart from '@fastify/multipart';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import {
  AliasParams,
  CarryOnIdParams,
  CarryOnParams,
  CarryOnTenantQuery,
  SetAliasBody,
  TenantParams,
  VersionParams,
} from '../../src/admin/schemas.js';
import type { AdminServices } from '../../src/admin/services.js';
import { MAX_MANIFEST_BYTES } from '../../src/admin/upload-receive.js';
import { parseAdmin } from '../../src/admin/validate.js';
import { ApiError } from '../../src/core/errors.js';
import { receiveDone } from '../../src/http/receive-timeout.js';
import type { AdminPluginOptions } from './index.js';

const carryOnRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin, maxCarryOnBytes }) => {
  // Parts are streamed by the upload service; these limits only stop a malformed form early.
  await app.register(multipart, {
    limits: { fileSize: maxCarryOnBytes + 1, files: 2, fields: 3, parts: 5, fieldSize: MAX_MANIFEST_BYTES, headerPairs: 64 },
  });

  // The tenant comes from the query (the form's `tenant` field or the manifest's for an upload) or the admin key.
  app.post('/carry-ons', async (request, reply) => upload(admin, request, reply, null));
  app.get('/carry-ons', async (request) => {
    const { tenant } = parseAdmin(CarryOnTenantQuery, request.query);
    return admin.carryOns.listManaged(adminContext(request), tenant);
  });
  app.get('/carry-ons/:id', async (request) => {
    const { id } = parseAdmin(CarryOnIdParams, request.params);
    const ctx = adminContext(request);
    return admin.carryOns.get(ctx, await admin.carryOns.tenantFor(ctx, parseAdmin(CarryOnTenantQuery, request.query).tenant), id);
  });
  app.delete('/carry-ons/:id', async (request) => {
    const { id } = parseAdmin(CarryOnIdParams, request.params);
    const ctx = adminContext(request);
    return admin.carryOns.deleteCarryOn(ctx, await admin.carryOns.tenantFor(ctx, parseAdmin(CarryOnTenantQuery, request.query).tenant), id);
  });

  // Tenant-scoped routes: the tenant is in the path.
  app.post('/tenants/:tenant/carry-ons', async (request, reply) => upload(admin, request, reply, parseAdmin(TenantParams, request.params).tenant));
  app.get('/tenants/:tenant/carry-ons', async (request) => {
    const { tenant } = parseAdmin(TenantParams, request.params);
    return admin.carryOns.list(adminContext(request), tenant);
  });
  app.get('/tenants/:tenant/carry-ons/:id', async (request) => {
    const { tenant, id } = parseAdmin(CarryOnParams, request.params);
    return admin.carryOns.get(adminContext(request), tenant, id);
  });
  app.delete('/tenants/:tenant/carry-ons/:id', async (request) => {
    const { tenant, id } = parseAdmin(CarryOnParams, request.params);
    return admin.carryOns.deleteCarryOn(adminContext(request), tenant, id);
  });
  app.delete('/tenants/:tenant/carry-ons/:id/versions/:version', async (request) => {
    const { tenant, id, version } = parseAdmin(VersionParams, request.params);
    return admin.carryOns.deleteVersion(adminContext(request), tenant, id, version);
  });
  app.put('/tenants/:tenant/carry-ons/:id/aliases/:alias', async (request) => {
    const { tenant, id, alias } = parseAdmin(AliasParams, request.params);
    const { version } = parseAdmin(SetAliasBody, request.body);
    return admin.carryOns.setAlias(adminContext(request), tenant, id, alias, version);
  });
  app.delete('/tenants/:tenant/carry-ons/:id/aliases/:alias', async (request) => {
    const { tenant, id, alias } = parseAdmin(AliasParams, request.params);
    return admin.carryOns.removeAlias(adminContext(request), tenant, id, alias);
  });
};

async function upload(admin: AdminServices, request: FastifyRequest, reply: FastifyReply, tenant: string | null): Promise<FastifyReply> {
  if (!request.isMultipart()) {
    throw new ApiError('unsupported_media_type', "Upload a carry-on as 'multipart/form-data' with a 'manifest' field and a 'model' file.");
  }
  const length = Number(request.headers['content-length']);
  try {
    const created = await admin.carryOns.upload(adminContext(request), tenant, {
      contentLength: Number.isFinite(length) ? length : undefined,
      parts: () => request.parts(),
      onReceived: () => receiveDone(request.raw),
    });
    return await reply.code(201).send(created);
  } catch (err) {
    // A refusal can come mid-body. Read and drop the rest, as Node does for a body nobody read:
    // the multipart parser stopped reading, and the connection would stall until a timeout.
    request.raw.unpipe();
    request.raw.resume();
    throw err;
  }
}

export default carryOnRoutes;
