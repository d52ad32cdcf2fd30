import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { REPO_ROOT } from '../helpers/paths.js';

/**
 * The chart rendered for real: test/helm-render (Go's text/template with the Sprig functions, the
 * engine Helm is built on, plus Helm's include, fail, toYaml and lookup) renders every value set,
 * and the manifests are read as a cluster would get them: the default single-replica install, the
 * scaled-out one over PostgreSQL and a bucket (HPA, Ingress by key, training workers), and the
 * combinations the chart must refuse. Needs Go and Debian's golang-github-masterminds-sprig-dev
 * (.ci/run installs them); skipped without, unless CARRYON_HELM_RENDER_REQUIRED=1 (CI).
 */
const CHART = path.join(REPO_ROOT, 'charts/carry-on-gateway');
const GOPATH = '/usr/share/gocode';
const haveGo = spawnSync('go', ['version']).status === 0 && fs.existsSync(path.join(GOPATH, 'src/github.com/Masterminds/sprig'));
if (!haveGo && process.env.CARRYON_HELM_RENDER_REQUIRED === '1') throw new Error('helm-render: needs go and golang-github-masterminds-sprig-dev (see .ci/run)');

/** The fields these tests read, whichever kind has them. */
interface Container {
  args?: string[];
  image: string;
  env: Array<{ name: string; valueFrom?: { secretKeyRef: { name: string } } }>;
  envFrom?: unknown[];
}
interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; annotations?: Record<string, string> };
  data?: Record<string, string>;
  spec: {
    replicas?: number;
    strategy: { type: string };
    /** A Service's labels, or a Deployment's / PDB's { matchLabels }. */
    selector: Record<string, unknown>;
    template: { metadata: { labels: Record<string, string> }; spec: { containers: Container[]; volumes: Array<{ name: string }> } };
    accessModes: string[];
    ingressClassName: string;
    rules: Array<{ http: { paths: Array<{ backend: unknown }> } }>;
    ports: Array<{ name: string }>;
  };
}
const labelsOf = (selector: Record<string, unknown>) => (selector.matchLabels ?? selector) as Record<string, string>;

describe.runIf(haveGo)('the Helm chart, rendered', () => {
  let tmp: string;
  let bin: string;

  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'carryon-helm-'));
    bin = path.join(tmp, 'helm-render');
    execFileSync('go', ['build', '-o', bin, '.'], {
      cwd: path.join(REPO_ROOT, 'test/helm-render'),
      env: { ...process.env, GOPATH, GO111MODULE: 'off', GOCACHE: path.join(tmp, 'gocache'), GOFLAGS: '' },
      stdio: 'pipe',
    });
  }, 120_000);
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  /** The manifests for the values files given (on top of values.yaml), or the render's error. */
  function render(...overrides: Array<string | object>): { objects: Obj[]; error: string | null } {
    const files = overrides.map((o, i) => {
      if (typeof o === 'string') return path.join(CHART, o);
      const f = path.join(tmp, `values-${i}-${Math.random().toString(36).slice(2)}.yaml`);
      fs.writeFileSync(f, JSON.stringify(o)); // JSON is YAML
      return f;
    });
    const r = spawnSync(bin, [CHART, 'gw', ...files], { encoding: 'utf8' });
    if (r.status !== 0) return { objects: [], error: r.stderr };
    const docs = parseAllDocuments(r.stdout);
    for (const d of docs) expect(d.errors, r.stdout).toEqual([]);
    return { objects: docs.map((d) => d.toJS() as Obj), error: null };
  }
  const find = (objects: Obj[], kind: string, name?: string) => objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));

  it('every example value set renders into named objects of known kinds', () => {
    const sets = [[], ...fs.readdirSync(path.join(CHART, 'ci')).filter((f) => f.endsWith('-values.yaml')).map((f) => [`ci/${f}`])];
    for (const set of sets) {
      const { objects, error } = render(...set);
      expect(error, set.join()).toBeNull();
      for (const o of objects) {
        expect(o.apiVersion, `${set}: ${o.kind}`).toMatch(/^(v1|apps\/v1|policy\/v1|autoscaling\/v2|networking\.k8s\.io\/v1|monitoring\.coreos\.com\/v1)$/);
        expect(o.metadata.name).toMatch(/^gw-carry-on-gateway/);
      }
    }
  });

  it('by default: one replica on its ReadWriteOnce claim, replaced with Recreate; no Ingress, HPA or workers', () => {
    const { objects } = render();
    const [gw] = find(objects, 'Deployment');
    expect(find(objects, 'Deployment')).toHaveLength(1);
    expect(gw.spec.replicas).toBe(1);
    expect(gw.spec.strategy.type).toBe('Recreate');
    expect(find(objects, 'PersistentVolumeClaim')[0].spec.accessModes).toEqual(['ReadWriteOnce']);
    expect(find(objects, 'Ingress')).toEqual([]);
    expect(find(objects, 'HorizontalPodAutoscaler')).toEqual([]);
  });

  it('scaled out (ci/multi-replica-values.yaml): the HPA owns the count, /data is per pod, the Ingress hashes by key, workers train apart', () => {
    const { objects, error } = render('ci/multi-replica-values.yaml');
    expect(error).toBeNull();
    const gw = find(objects, 'Deployment', 'gw-carry-on-gateway')[0];
    expect(gw.spec.replicas).toBeUndefined();
    expect(gw.spec.strategy.type).toBe('RollingUpdate');
    expect(gw.spec.template.spec.volumes.find((v) => v.name === 'data')).toEqual({ name: 'data', emptyDir: {} });
    expect(find(objects, 'PersistentVolumeClaim')).toEqual([]);
    const env = gw.spec.template.spec.containers[0].env;
    expect(env.find((e) => e.name === 'CARRYON_DATABASE_URL')?.valueFrom?.secretKeyRef.name).toBe('carry-on-gateway-database');
    expect(env.find((e) => e.name === 'AWS_ACCESS_KEY_ID')?.valueFrom?.secretKeyRef.name).toBe('carry-on-gateway-bucket');
    const config = find(objects, 'ConfigMap')[0].data!;
    expect(config).toMatchObject({ CARRYON_OBJECT_STORE_URL: 's3://carry-on/prod', CARRYON_TRAINING_WORKER: 'external' });
    expect(find(objects, 'HorizontalPodAutoscaler')[0].spec).toMatchObject({ minReplicas: 3, maxReplicas: 8, scaleTargetRef: { kind: 'Deployment', name: 'gw-carry-on-gateway' } });

    const service = find(objects, 'Service')[0];
    const [ingress] = find(objects, 'Ingress');
    expect(ingress.metadata.annotations).toMatchObject({ 'nginx.ingress.kubernetes.io/upstream-hash-by': '$http_authorization' });
    expect(ingress.spec.ingressClassName).toBe('nginx');
    expect(ingress.spec.rules[0].http.paths[0].backend).toEqual({ service: { name: service.metadata.name, port: { name: 'http' } } });
    expect(service.spec.ports.map((p) => p.name)).toContain('http');

    const worker = find(objects, 'Deployment', 'gw-carry-on-gateway-train-worker')[0];
    expect(worker.spec.replicas).toBe(2);
    const [c] = worker.spec.template.spec.containers;
    expect(c.args).toEqual(['node', 'bin/carryon.js', 'train-worker']);
    expect(c.image).toBe('carry-on-gateway:0.1.0-trainer');
    expect(c.envFrom).toEqual([{ configMapRef: { name: 'gw-carry-on-gateway' } }]);
    expect(c.env.map((e) => e.name)).toEqual(['CARRYON_DATABASE_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']);
    // The Service (and PDB) select the gateway's pods only, never the workers'.
    const podLabels = worker.spec.template.metadata.labels;
    const selects = (o: Obj) => Object.entries(labelsOf(o.spec.selector)).every(([k, v]) => podLabels[k] === v);
    expect(selects(service)).toBe(false);
    expect(selects(find(objects, 'PodDisruptionBudget')[0])).toBe(false);
    expect(selects(gw)).toBe(false);
    expect(selects(worker)).toBe(true);
  });

  it('refuses more than one replica without both shared stores, or on a ReadWriteOnce /data', () => {
    expect(render({ replicaCount: 2 }).error).toMatch(/need the shared stores: database\.existingSecret/);
    expect(render({ replicaCount: 2, database: { existingSecret: 'db' } }).error).toMatch(/need the shared stores/);
    expect(render({ autoscaling: { enabled: true }, config: { objectStoreUrl: 's3://b/p' } }).error).toMatch(/need the shared stores/);
    expect(render('ci/multi-replica-values.yaml', { persistence: { enabled: true } }).error).toMatch(/a \/data every pod can mount/);
    expect(render('ci/multi-replica-values.yaml', { persistence: { enabled: true, accessMode: 'ReadWriteMany' } }).error).toBeNull();
  });

  it('refuses training workers while the gateway pods still train, or without the shared stores', () => {
    expect(render('ci/multi-replica-values.yaml', { config: { trainingWorker: 'inline' } }).error).toMatch(/set config\.trainingWorker to external/);
    expect(render({ trainingWorker: { enabled: true }, config: { trainingWorker: 'external' } }).error).toMatch(/trainingWorker\.enabled needs the shared stores/);
  });

  it('keeps its older rules: a GPU needs the cuda provider; the grace period covers the drain', () => {
    expect(render({ gpu: { enabled: true } }).error).toMatch(/config\.executionProvider is cpu/);
    expect(render({ shutdown: { terminationGracePeriodSeconds: 10 } }).error).toMatch(/must be at least/);
  });
});
