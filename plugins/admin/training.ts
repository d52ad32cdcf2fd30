import type { FastifyPluginAsync } from 'fastify';
import { adminContext } from '../../src/admin/context.js';
import { CreateTrainingJobBody, ListTrainingJobsQuery, TrainingJobParams, TrainingLogQuery } from '../../src/admin/schemas.js';
import { parseAdmin } from '../../src/admin/validate.js';
import type { AdminPluginOptions } from './index.js';

const trainingRoutes: FastifyPluginAsync<AdminPluginOptions> = async (app, { admin }) => {
  app.post('/training-jobs', async (request, reply) => {
    const body = parseAdmin(CreateTrainingJobBody, request.body);
    return reply.code(202).send(await admin.training.create(adminContext(request), body));
  });
  app.get('/training-jobs', async (request) => {
    const { tenant } = parseAdmin(ListTrainingJobsQuery, request.query);
    return admin.training.list(adminContext(request), tenant);
  });
  app.get('/training-jobs/:id', async (request) => {
    const { id } = parseAdmin(TrainingJobParams, request.params);
    return admin.training.get(adminContext(request), id);
  });
  app.get('/training-jobs/:id/logs', async (request, reply) => {
    const { id } = parseAdmin(TrainingJobParams, request.params);
    const { bytes } = parseAdmin(TrainingLogQuery, request.query);
    return reply.type('text/plain; charset=utf-8').send(await admin.training.logs(adminContext(request), id, bytes));
  });
  app.get('/training-jobs/:id/loss', async (request) => {
    const { id } = parseAdmin(TrainingJobParams, request.params);
    return admin.training.loss(adminContext(request), id);
  });
  app.post('/training-jobs/:id/cancel', async (request) => {
    const { id } = parseAdmin(TrainingJobParams, request.params);
    return admin.training.cancel(adminContext(request), id);
  });
};

export default trainingRoutes;
