import fs from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { freshDataDir, startTestGateway, USER_KEY, type TestGateway } from './gateway.js';
import { writeHfFolder } from './hf-folder.js';
import { FAMILIES, randomFamilyWeights, type Family } from './model-families.js';
import { REPO_ROOT } from './paths.js';

/**
 * What the tool-calling tests share (test/integration/tool-calling.test.ts on chat,
 * responses-tools.test.ts on /v1/responses): two tools' schemas with their ajv validators, and
 * tiny random-weight models of the Qwen3 and Llama 3 architectures with their real tokenizers,
 * served by the real gateway: Qwen3 with its own template (Hermes-style `<tool_call>` syntax),
 * Llama 3 with Meta's Llama 3.1 template from test/fixtures/chat-templates (JSON syntax).
 */
export const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'chat-templates');

/** The 400 body for `tools` on a model whose chat template renders none (stories260K's). */
export const TOOLS_UNSUPPORTED = {
  message: "'tools' is not supported by this model: this model's chat template does not render tools.",
  type: 'invalid_request_error',
  param: 'tools',
  code: 'unsupported_parameter',
};

export const WEATHER = {
  type: 'object',
  properties: {
    city: { enum: ['Paris', 'Oslo', 'Lima'] },
    unit: { enum: ['celsius', 'fahrenheit'] },
    days: { type: 'integer' },
  },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
export const LOOKUP = {
  type: 'object',
  properties: {
    ids: { type: 'array', items: { type: 'integer' }, maxItems: 3 },
    exact: { type: 'boolean' },
    where: { type: 'object', properties: { shelf: { enum: ['a', 'b'] }, row: { anyOf: [{ type: 'integer' }, { type: 'null' }] } }, required: ['shelf'] },
  },
  required: ['ids', 'where'],
};
const ajv = new Ajv({ strict: false });
export const validators: Record<string, ReturnType<typeof ajv.compile>> = { get_weather: ajv.compile(WEATHER), lookup: ajv.compile(LOOKUP) };

export interface Served {
  gw: TestGateway;
  client: OpenAI;
  model: string;
}

/** A random-weight model of `family` with the real tokenizer, written under `tmp` and served from its HF folder. */
export async function serveFamily(tmp: string, family: Family, chatTemplateJinja?: string): Promise<Served> {
  const folder = path.join(tmp, `${family}-hf`);
  writeHfFolder(folder, randomFamilyWeights(family), {
    dtype: 'F32',
    shards: 1,
    tokenizerFrom: FAMILIES[family].tokenizerDir,
    ...(chatTemplateJinja !== undefined ? { chatTemplateJinja } : {}),
    ...(family === 'llama3' ? { generationConfig: { bos_token_id: 128000, eos_token_id: [128001, 128009] } } : {}),
  });
  const gw = await startTestGateway({ CARRYON_MODEL: folder, CARRYON_DATA_DIR: freshDataDir(`carryon-tools-${family}-`) });
  const client = new OpenAI({ apiKey: USER_KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  return { gw, client, model: (await client.models.list()).data[0].id };
}

/** Stops a served model and removes its data folder. */
export async function closeServed(s: Served | undefined): Promise<void> {
  await s?.gw.close();
  if (s) fs.rmSync(s.gw.dataDir, { recursive: true, force: true });
}

export const FAMILY_CASES: Array<{ label: string; family: Family; template?: string }> = [
  { label: 'Qwen3-shaped (its own template, <tool_call> syntax)', family: 'qwen3' },
  { label: 'Llama-3-shaped (the Llama 3.1 template, JSON syntax)', family: 'llama3', template: fs.readFileSync(path.join(FIXTURES, 'llama-3.1.jinja'), 'utf8') },
];
