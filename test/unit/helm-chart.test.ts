import fs from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { z } from 'zod';
import { ConfigSchema, loadConfig } from '../../src/app/config.js';
import { REPO_ROOT as ROOT } from '../helpers/paths.js';

/**
 * The Helm chart without helm: its files parse, its values validate against its schema, its
 * ConfigMap names exactly the gateway's options with defaults the gateway accepts, and its
 * Deployment agrees with the image and the server (ports, probe routes, /data, uid, grace period).
 * `helm lint`, `helm template` and kubeconform are not run here (README, "Kubernetes (Helm)").
 */

const CHART = path.join(ROOT, 'charts/carry-on-gateway');
const read = (p: string) => fs.readFileSync(path.join(CHART, p), 'utf8');
const template = (name: string) => read(`templates/${name}`);

type Json = Record<string, unknown>;
const isMap = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The parts of a values file these tests read (values.schema.json is the whole contract). */
interface Values extends Json {
  containerPort: number;
  config: Json & { drainTimeoutMs: number; executionProvider: string };
  gpu: { enabled: boolean; resourceName: string };
  shutdown: { preStopSleepSeconds: number; marginSeconds: number; terminationGracePeriodSeconds: number | null };
  replicaCount: number;
  autoscaling: { enabled: boolean };
  persistence: Json;
  podSecurityContext: Json;
  securityContext: Json;
  metrics: { serviceMonitor: { enabled: boolean; path: string } };
}

/** The parts of values.schema.json these tests read. */
interface SchemaProp {
  type?: string;
  enum?: unknown[];
  oneOf?: SchemaProp[];
  minimum?: number;
  maximum?: number;
}
interface ValuesSchema extends Json {
  additionalProperties: boolean;
  properties: { config: { properties: Record<string, SchemaProp> } };
}

const parseMap = (text: string): Json => {
  const v: unknown = parse(text);
  if (!isMap(v)) throw new Error('expected a YAML map');
  return v;
};
const defaults = parseMap(read('values.yaml')) as Values;
const schema = JSON.parse(read('values.schema.json')) as ValuesSchema;
const exampleFiles = fs.readdirSync(path.join(CHART, 'ci')).filter((f) => f.endsWith('-values.yaml'));

/** Helm's merge of a values file onto the defaults: maps merge key by key, anything else replaces. */
function merge<T extends Json>(base: T, over: Json): T {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = base[k];
    out[k] = isMap(v) && isMap(b) ? merge(b, v) : v;
  }
  return out as T;
}
const valueSets: [string, Values][] = [
  ['values.yaml', defaults],
  ...exampleFiles.map((f): [string, Values] => [`ci/${f}`, merge(defaults, parseMap(read(`ci/${f}`)))]),
];

/** Secrets the Deployment maps from the Secret (never the ConfigMap), and what the chart fixes. */
const FROM_SECRET = ['CARRYON_ADMIN_KEY', 'CARRYON_API_KEYS', 'CARRYON_DATABASE_URL'];
const FIXED_BY_CHART = ['HOST', 'PORT', 'CARRYON_DATA_DIR'];

const camel = (env: string) => env.replace(/^CARRYON_/, '').toLowerCase().replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

interface ConfigLine {
  env: string;
  literal?: string;
  valuesPath?: string[];
}

/** The ConfigMap's data lines; each must be a literal or the one envValue include (see the template). */
function configMapLines(): ConfigLine[] {
  const data = template('configmap.yaml').split('\ndata:\n')[1];
  return data
    .split('\n')
    .filter((l) => l.trim())
    .map((line) => {
      const literal = /^ {2}([A-Z_]+): "([^"{}]*)"$/.exec(line);
      if (literal) return { env: literal[1], literal: literal[2] };
      const ref = /^ {2}([A-Z_]+): \{\{ include "carryon-gateway\.envValue" \.Values\.([\w.]+) \}\}$/.exec(line);
      if (!ref) throw new Error(`configmap.yaml line not in the checked form: ${line}`);
      return { env: ref[1], valuesPath: ref[2].split('.') };
    });
}

/** A scalar as a string, null and undefined as ''; the ConfigMap has no place for anything else. */
function scalar(v: unknown, what: string): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new Error(`${what}: not a scalar`);
}

/** What the chart puts in the environment for a value set, as envValue renders it. */
function envFor(values: Values): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of configMapLines()) {
    const v = line.valuesPath ? line.valuesPath.reduce<unknown>((o, k) => (isMap(o) ? o[k] : undefined), values) : line.literal;
    env[line.env] = scalar(v, line.env);
  }
  env.CARRYON_ADMIN_KEY = 'sk-admin-from-the-secret';
  return env;
}

interface Probe {
  httpGet: { path: string; port: string };
}
interface Container {
  ports: { name: string }[];
  startupProbe: Probe;
  livenessProbe: Probe;
  readinessProbe: Probe;
  volumeMounts: { name: string; mountPath: string }[];
  envFrom: unknown[];
  env: { name: string; valueFrom: { secretKeyRef: { key: string; optional?: boolean } } }[];
  lifecycle: { preStop: { exec: { command: string[] } } };
}
/** The fields these tests read from the chart's objects, whichever kind has them. */
interface K8sObject {
  apiVersion: string;
  kind: string;
  data: Record<string, string>; // Secret
  spec: {
    template: { spec: { containers: Container[]; volumes: { name: string }[]; automountServiceAccountToken: boolean } }; // Deployment
    ports: unknown[]; // Service
    scaleTargetRef: unknown; // HorizontalPodAutoscaler
    endpoints: { port: string }[]; // ServiceMonitor
  };
}

/**
 * A template's YAML skeleton: lines holding only template actions dropped, inline actions replaced
 * by a placeholder. Both branches of an if/else survive, hence uniqueKeys off.
 */
function skeleton(name: string): K8sObject[] {
  const text = template(name)
    .replace(/\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g, '')
    .split('\n')
    .filter((l) => !/^\s*(\{\{.*?\}\}\s*)+$/.test(l))
    .map((l) => l.replace(/\{\{-?.*?-?\}\}/g, 'TPL'))
    .join('\n');
  const docs = parseAllDocuments(text, { uniqueKeys: false });
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) expect(d.errors, `${name}: ${d.errors.join('; ')}`).toEqual([]);
  return list.map((d) => d.toJS() as K8sObject);
}

function dockerfile(): { expose: string[]; volumes: string[]; user: string; env: Record<string, string> } {
  const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n\s*/g, ' ');
  const runtime = text.slice(text.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const m of runtime.matchAll(/^ENV (.+)$/gm)) for (const kv of m[1].matchAll(/(\w+)=(\S+)/g)) env[kv[1]] = kv[2];
  return {
    expose: [...runtime.matchAll(/^EXPOSE (\d+)$/gm)].map((m) => m[1]),
    volumes: [...runtime.matchAll(/^VOLUME \[(.+)\]$/gm)].flatMap((m) => z.array(z.string()).parse(JSON.parse(`[${m[1]}]`))),
    user: /^USER (\S+)$/m.exec(runtime)?.[1] ?? '',
    env,
  };
}

describe('Helm chart files', () => {
  it('Chart.yaml is a v2 application chart whose appVersion is the package version (the default image tag)', () => {
    const chart = parseMap(read('Chart.yaml'));
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(chart).toMatchObject({ apiVersion: 'v2', name: 'carry-on-gateway', type: 'application', appVersion: pkg.version });
    expect(chart.version).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('every template is YAML once its template actions are set aside, of a current API version', () => {
    const kinds: Record<string, string> = {
      'deployment.yaml': 'apps/v1 Deployment',
      'service.yaml': 'v1 Service',
      'configmap.yaml': 'v1 ConfigMap',
      'secret.yaml': 'v1 Secret',
      'pvc.yaml': 'v1 PersistentVolumeClaim',
      'serviceaccount.yaml': 'v1 ServiceAccount',
      'pdb.yaml': 'policy/v1 PodDisruptionBudget',
      'hpa.yaml': 'autoscaling/v2 HorizontalPodAutoscaler',
      'servicemonitor.yaml': 'monitoring.coreos.com/v1 ServiceMonitor',
      'ingress.yaml': 'networking.k8s.io/v1 Ingress',
      'training-worker.yaml': 'apps/v1 Deployment',
    };
    const files = fs.readdirSync(path.join(CHART, 'templates')).filter((f) => f.endsWith('.yaml'));
    expect(files.sort()).toEqual(Object.keys(kinds).sort());
    for (const f of files) {
      const docs = skeleton(f);
      expect(docs, f).toHaveLength(1);
      expect(`${docs[0].apiVersion} ${docs[0].kind}`, f).toBe(kinds[f]);
    }
    expect(template('_helpers.tpl')).toContain('define "carryon-gateway.fullname"');
    expect(fs.existsSync(path.join(CHART, 'templates/NOTES.txt'))).toBe(true);
  });
});

describe('values', () => {
  const ajv = new Ajv({ strict: true, allowUnionTypes: true, allErrors: true });
  const validate = ajv.compile(schema);

  it.each(valueSets)('%s validates against values.schema.json', (_name, values) => {
    expect(validate(values), ajv.errorsText(validate.errors)).toBe(true);
  });

  it('the schema is strict: unknown keys, wrong types and unknown enum values are errors', () => {
    expect(schema.additionalProperties).toBe(false);
    expect(validate({ ...defaults, replicas: 2 })).toBe(false);
    expect(validate(merge(defaults, { config: { requestTimeout: 5 } }))).toBe(false);
    expect(validate(merge(defaults, { config: { maxN: '8' } }))).toBe(false);
    expect(validate(merge(defaults, { config: { logLevel: 'verbose' } }))).toBe(false);
    expect(validate(merge(defaults, { config: { threads: 0 } }))).toBe(false);
    // Helm adds `global` to a subchart's values.
    expect(validate({ ...defaults, global: { imageRegistry: 'x' } })).toBe(true);
  });

  it('the schema bounds each option exactly as src/app/config.ts does', () => {
    const props = schema.properties.config.properties;
    for (const [env, field] of Object.entries(ConfigSchema.shape)) {
      if (FROM_SECRET.includes(env) || FIXED_BY_CHART.includes(env)) continue;
      const inner = field.unwrap();
      const prop = props[camel(env)];
      expect(prop, env).toBeDefined();
      if (inner instanceof z.ZodEnum) expect(prop.enum, env).toEqual(inner.options);
      if (inner instanceof z.ZodNumber) {
        const int = prop.oneOf ? prop.oneOf.find((p) => p.type === 'integer') : prop;
        expect([int?.minimum, int?.maximum], env).toEqual([inner.minValue, inner.maxValue]);
      }
    }
  });
});

describe('ConfigMap ⇄ src/app/config.ts', () => {
  const lines = configMapLines();
  const envs = lines.map((l) => l.env);
  const options = Object.keys(ConfigSchema.shape);

  it('every ConfigMap key is a gateway option, and every option is in the ConfigMap or the Secret', () => {
    expect(new Set(envs).size).toBe(envs.length);
    for (const env of envs) expect(options, `${env} is not in ConfigSchema`).toContain(env);
    const missing = options.filter((o) => !envs.includes(o) && !FROM_SECRET.includes(o));
    expect(missing, 'options missing from charts/carry-on-gateway (configmap.yaml, values.yaml, values.schema.json)').toEqual([]);
    const deployment = template('deployment.yaml');
    for (const env of FROM_SECRET) expect(deployment).toMatch(new RegExp(`- name: ${env}\\n\\s+valueFrom:\\n\\s+secretKeyRef:`));
  });

  it('options come from values.config under their camelCase names; the chart fixes HOST, PORT and the data dir', () => {
    const configKeys = Object.keys(defaults.config);
    for (const l of lines) {
      if (FIXED_BY_CHART.includes(l.env)) continue;
      expect(l.valuesPath, l.env).toEqual(['config', camel(l.env)]);
    }
    expect(configKeys.sort()).toEqual(lines.filter((l) => l.valuesPath?.[0] === 'config').map((l) => l.valuesPath![1]).sort());
    expect(configKeys.sort()).toEqual(Object.keys(schema.properties.config.properties).sort());
    expect(lines.find((l) => l.env === 'HOST')?.literal).toBe('0.0.0.0');
    expect(lines.find((l) => l.env === 'PORT')?.valuesPath).toEqual(['containerPort']);
  });

  it.each(valueSets)('the environment %s renders is accepted by the gateway, value for value', (_name, values) => {
    const env = envFor(values);
    const config = loadConfig(env, '/');
    for (const l of lines) {
      if (!l.valuesPath || env[l.env] === '') continue;
      const got: unknown = config[l.env as keyof typeof config];
      expect(String(got), l.env).toBe(typeof got === 'boolean' ? String(env[l.env] === 'true') : env[l.env]);
    }
    expect(config.dataDir).toBe('/data');
    expect(config.PORT).toBe(values.containerPort);
  });

  it("the chart's defaults are the gateway's defaults (empty strings leave them to the gateway)", () => {
    const env = envFor(defaults);
    const gatewayDefaults = loadConfig({}, '/');
    for (const l of lines) {
      if (!l.valuesPath || FIXED_BY_CHART.includes(l.env) || env[l.env] === '') continue;
      expect(env[l.env], l.env).toBe(scalar(gatewayDefaults[l.env as keyof typeof gatewayDefaults], l.env));
    }
  });

  it('numbers reach the ConfigMap as integers: envValue converts Helm float64 values through int64', () => {
    const helper = template('_helpers.tpl');
    expect(helper).toMatch(/define "carryon-gateway\.envValue"[\s\S]*kindIs "float64" \.[\s\S]*int64 \. \| toString \| quote/);
  });
});

describe('Deployment', () => {
  const [deployment] = skeleton('deployment.yaml');
  const pod = deployment.spec.template.spec;
  const [container] = pod.containers;
  const image = dockerfile();

  it('probes the server on its health routes through the named port, which the Service targets', () => {
    expect(container.startupProbe.httpGet).toEqual({ path: '/health/live', port: 'http' });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/health/live', port: 'http' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/health/ready', port: 'http' });
    expect(container.ports.map((p) => p.name)).toEqual(['http', 'metrics']);
    const [service] = skeleton('service.yaml');
    expect(service.spec.ports).toEqual([
      expect.objectContaining({ name: 'http', targetPort: 'http' }),
      expect.objectContaining({ name: 'metrics', targetPort: 'metrics' }),
    ]);
    // The metrics port exists only when config.metricsPort > 0.
    expect(template('deployment.yaml')).toMatch(/\{\{- if gt \(int \.Values\.config\.metricsPort\) 0 \}\}\n\s+- name: metrics/);
    // The routes exist and are public (probes send no key).
    const health = fs.readFileSync(path.join(ROOT, 'plugins/health.ts'), 'utf8');
    for (const route of ['/health/live', '/health/ready']) expect(health).toMatch(new RegExp(`app\\.get\\('${route}', \\{ config: \\{ public: true \\} \\}`));
  });

  it('ports, data dir and uid agree with the image', () => {
    expect(template('deployment.yaml')).toContain('containerPort: {{ .Values.containerPort }}');
    expect(image.expose).toEqual([String(defaults.containerPort)]);
    expect(image.env.PORT).toBe(String(defaults.containerPort));
    expect(image.volumes).toEqual(['/data']);
    expect(image.env.CARRYON_DATA_DIR).toBe('/data');
    expect(configMapLines().find((l) => l.env === 'CARRYON_DATA_DIR')?.literal).toBe('/data');
    expect(container.volumeMounts).toEqual(expect.arrayContaining([{ name: 'data', mountPath: '/data' }]));
    const [uid, gid] = image.user.split(':').map(Number);
    expect(uid).toBeGreaterThan(0);
    expect(defaults.podSecurityContext).toMatchObject({ runAsNonRoot: true, runAsUser: uid, runAsGroup: gid, fsGroup: gid });
  });

  it('runs locked down: read-only root with a writable /tmp, no privilege escalation, no capabilities, no API token', () => {
    expect(defaults.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(container.volumeMounts).toEqual(expect.arrayContaining([{ name: 'tmp', mountPath: '/tmp' }]));
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.volumes.map((v) => v.name)).toEqual(expect.arrayContaining(['data', 'tmp']));
  });

  it('takes the admin key from the Secret (the chart keys match), the rest of the environment from the ConfigMap', () => {
    expect(container.envFrom).toEqual([{ configMapRef: { name: 'TPL' } }]);
    const refs = container.env.map((e) => [e.name, e.valueFrom.secretKeyRef.key, e.valueFrom.secretKeyRef.optional ?? false]);
    expect(refs).toEqual([
      ['CARRYON_ADMIN_KEY', 'admin-key', false],
      ['CARRYON_API_KEYS', 'api-keys', true],
      // Only with database.existingSecret (the skeleton keeps the `if`'s body): the URL holds a password.
      ['CARRYON_DATABASE_URL', 'TPL', false],
      // Only with objectStore.existingSecret: the bucket's credentials, under the AWS SDK's own names.
      ['AWS_ACCESS_KEY_ID', 'AWS_ACCESS_KEY_ID', false],
      ['AWS_SECRET_ACCESS_KEY', 'AWS_SECRET_ACCESS_KEY', false],
    ]);
    const text = template('deployment.yaml');
    expect(text).toMatch(
      /\{\{- if \.Values\.database\.existingSecret \}\}\n\s+- name: CARRYON_DATABASE_URL\n\s+valueFrom:\n\s+secretKeyRef:\n\s+name: \{\{ \.Values\.database\.existingSecret \| quote \}\}\n\s+key: \{\{ \.Values\.database\.urlKey \| quote \}\}/,
    );
    expect(defaults.database).toEqual({ existingSecret: '', urlKey: 'database-url' });
    expect(text).toMatch(/\{\{- if \.Values\.objectStore\.existingSecret \}\}\n\s+- name: AWS_ACCESS_KEY_ID\n/);
    expect(defaults.objectStore).toEqual({ existingSecret: '' });
    const [secret] = skeleton('secret.yaml');
    expect(Object.keys(secret.data)).toEqual(['admin-key', 'api-keys']);
  });

  it('generates the admin key only without an existing secret or a given key, and keeps the live one on upgrade', () => {
    const text = template('secret.yaml');
    expect(text.startsWith('{{- if not .Values.auth.existingSecret }}')).toBe(true);
    const lookup = text.indexOf('lookup "v1" "Secret"');
    const generate = text.indexOf('randAlphaNum');
    expect(text.indexOf('{{- if not $adminKey }}')).toBeGreaterThan(0);
    expect(lookup).toBeGreaterThan(text.indexOf('{{- if not $adminKey }}'));
    expect(generate).toBeGreaterThan(lookup);
  });

  it('asks for a GPU only when gpu.enabled, and then the cuda provider and image', () => {
    const text = template('deployment.yaml');
    expect(text).toMatch(/\{\{- if \.Values\.gpu\.enabled \}\}\n\{\{- \$limits := get \$resources "limits"/);
    expect(defaults.gpu).toMatchObject({ enabled: false, resourceName: 'nvidia.com/gpu' });
    expect(template('_helpers.tpl')).toContain('ternary "-cuda" "" .Values.gpu.enabled');
    expect(template('_helpers.tpl')).toContain('fail "gpu.enabled requests a GPU, but config.executionProvider is cpu');
    for (const [name, values] of valueSets) if (values.gpu.enabled) expect(values.config.executionProvider, name).toBe('cuda');
  });

  it('grace period: preStop pause + drain deadline (config.drainTimeoutMs) + margin, enforced by a fail', () => {
    const helper = template('_helpers.tpl');
    expect(helper).toMatch(/\$drain := divf \.Values\.config\.drainTimeoutMs 1000 \| ceil \| int/);
    expect(helper).toMatch(/\$min := add \.Values\.shutdown\.preStopSleepSeconds \$drain \.Values\.shutdown\.marginSeconds/);
    expect(helper).toMatch(/if lt \$grace \$min \}\}\n\{\{- fail/);
    expect(template('deployment.yaml')).toContain('terminationGracePeriodSeconds: {{ $grace }}');
    expect(container.lifecycle.preStop.exec.command).toEqual(['/bin/sleep', 'TPL']);
    expect(template('deployment.yaml')).toContain('command: ["/bin/sleep", "{{ .Values.shutdown.preStopSleepSeconds }}"]');
    for (const [name, values] of valueSets) {
      const { preStopSleepSeconds, marginSeconds, terminationGracePeriodSeconds } = values.shutdown;
      const min = preStopSleepSeconds + Math.ceil(values.config.drainTimeoutMs / 1000) + marginSeconds;
      expect(preStopSleepSeconds, name).toBeGreaterThan(0);
      expect(marginSeconds, name).toBeGreaterThan(0);
      if (terminationGracePeriodSeconds !== null) expect(terminationGracePeriodSeconds, name).toBeGreaterThanOrEqual(min);
    }
  });

  it('one replica on a ReadWriteOnce volume, replaced with Recreate', () => {
    expect(defaults.replicaCount).toBe(1);
    expect(defaults.persistence).toMatchObject({ enabled: true, accessMode: 'ReadWriteOnce' });
    expect(defaults.autoscaling.enabled).toBe(false);
    expect(template('deployment.yaml')).toMatch(/eq \.Values\.persistence\.accessMode "ReadWriteOnce" "ReadWriteOncePod"\) \}\}\n.*\n\s+type: Recreate/);
  });

  it('scaling out needs PostgreSQL, the bucket and a /data every pod mounts; the multi-replica example has all three', () => {
    const helpers = template('_helpers.tpl');
    expect(helpers).toContain('{{- $scaled := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}');
    expect(helpers).toMatch(/if and \$scaled \(not \(and \.Values\.database\.existingSecret \.Values\.config\.objectStoreUrl\)\) \}\}\n\{\{- fail/);
    expect(helpers).toMatch(/if and \$scaled \$rwo \}\}\n\{\{- fail/);
    // The same rule, read off each value set: which ones the chart renders with more than one pod.
    const scalesOut = (v: Values) => v.replicaCount > 1 || v.autoscaling.enabled;
    const allowed = (v: Values) => {
      const rwo = v.persistence.enabled === true && ['ReadWriteOnce', 'ReadWriteOncePod'].includes(v.persistence.accessMode as string);
      return !scalesOut(v) || (Boolean((v.database as Json).existingSecret) && Boolean(v.config.objectStoreUrl) && !rwo);
    };
    for (const [name, v] of valueSets) expect(allowed(v), name).toBe(true);
    const multi = valueSets.find(([n]) => n === 'ci/multi-replica-values.yaml')![1];
    expect(scalesOut(multi)).toBe(true);
    expect(allowed({ ...multi, persistence: { ...multi.persistence, enabled: true } })).toBe(false);
    expect(allowed({ ...multi, config: { ...multi.config, objectStoreUrl: '' } })).toBe(false);
  });

  it('the Ingress routes by API key (ingress-nginx upstream-hash-by on Authorization) to the Service’s http port', () => {
    const ingress = template('ingress.yaml');
    expect(ingress).toContain('{{- if .Values.ingress.hashByKey }}');
    expect(ingress).toContain('set $annotations "nginx.ingress.kubernetes.io/upstream-hash-by" "$http_authorization"');
    expect(ingress).toContain('name: {{ include "carryon-gateway.fullname" $ }}');
    expect(ingress).toMatch(/port:\n\s+name: http\n/);
    expect(skeleton('service.yaml')[0].spec.ports).toContainEqual(expect.objectContaining({ name: 'http' }));
  });
});

describe('the training-worker Deployment', () => {
  const [worker] = skeleton('training-worker.yaml') as unknown as Array<{
    spec: { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: { containers: Array<Container & { args: string[] }> } } };
  }>;

  it('runs `carryon train-worker` from the CLI the image ships, with the gateway’s ConfigMap and the store credentials', () => {
    const [c] = worker.spec.template.spec.containers;
    expect(c.args).toEqual(['node', 'bin/carryon.js', 'train-worker']);
    expect(fs.existsSync(path.join(ROOT, 'bin/carryon.js'))).toBe(true);
    expect(fs.readFileSync(path.join(ROOT, 'src/cli/carryon.ts'), 'utf8')).toContain("'train-worker'");
    const text = template('training-worker.yaml');
    for (const env of ['CARRYON_DATABASE_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) expect(text).toContain(`- name: ${env}`);
    expect(text).toContain('name: {{ include "carryon-gateway.fullname" . }}\n');
    // The image with PyTorch: the Dockerfile's TRAINER=1 flavour, which copies the trainer in.
    expect(text).toContain('printf "%s:%s-trainer"');
    const docker = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    expect(docker).toContain('ARG TRAINER=0');
    expect(docker).toMatch(/COPY trainer\/carryon_train \.\/trainer\/carryon_train/);
  });

  it('its pods are not the gateway’s: the Service, PDB and HPA select by a name they do not carry', () => {
    const labels = worker.spec.template.metadata.labels;
    expect(worker.spec.selector.matchLabels['app.kubernetes.io/name']).toBe('TPL-train-worker');
    expect(labels['app.kubernetes.io/name']).toBe('TPL-train-worker');
    expect(template('training-worker.yaml')).not.toContain('carryon-gateway.selectorLabels');
  });

  it('needs external training in the gateway pods and the shared stores', () => {
    const helpers = template('_helpers.tpl');
    expect(helpers).toMatch(/if and \.Values\.trainingWorker\.enabled \(ne \.Values\.config\.trainingWorker "external"\) \}\}\n\{\{- fail/);
    expect(helpers).toMatch(/if and \.Values\.trainingWorker\.enabled \(not \(and \.Values\.database\.existingSecret \.Values\.config\.objectStoreUrl\)\) \}\}\n\{\{- fail/);
    const multi = valueSets.find(([n]) => n === 'ci/multi-replica-values.yaml')![1];
    expect(multi.trainingWorker).toMatchObject({ enabled: true });
    expect(multi.config.trainingWorker).toBe('external');
  });
});

describe('optional objects', () => {
  it('the PDB, HPA and ServiceMonitor select the Deployment’s pods', () => {
    for (const f of ['pdb.yaml', 'servicemonitor.yaml', 'service.yaml', 'deployment.yaml']) {
      expect(template(f), f).toContain('include "carryon-gateway.selectorLabels" .');
    }
    const [hpa] = skeleton('hpa.yaml');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: 'TPL' });
  });

  it('the ServiceMonitor scrapes /metrics on the key-less metrics port, and refuses to render without one', () => {
    const [monitor] = skeleton('servicemonitor.yaml');
    expect(monitor.spec.endpoints[0].port).toBe('metrics');
    expect(template('servicemonitor.yaml')).toMatch(/if eq \(int \.Values\.config\.metricsPort\) 0 \}\}\n\{\{- fail/);
    expect(defaults.metrics.serviceMonitor.path).toBe('/metrics');
    const sources = ['plugins', 'src/http'].flatMap((dir) =>
      fs.readdirSync(path.join(ROOT, dir), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => fs.readFileSync(path.join(ROOT, dir, f), 'utf8')),
    );
    const served = sources.some((s) => /['"`]\/metrics['"`]/.test(s));
    if (!served) expect(defaults.metrics.serviceMonitor.enabled).toBe(false);
  });
});
