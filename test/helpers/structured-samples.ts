import { Ajv } from 'ajv';
import type OpenAI from 'openai';
import { expect } from 'vitest';

const ajv = new Ajv({ strict: false });

/**
 * A schema whose every field is bounded (enums, integers, arrays with maxItems, strings with
 * maxLength), so that a model with no wish to write JSON (a story model, random weights) is still
 * made to finish within a few dozen tokens: every sample must then parse and validate.
 */
export const BOUNDED_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 20 },
    age: { type: 'integer' },
    mood: { enum: ['happy', 'sad', 'sleepy'] },
    friends: {
      type: 'array',
      items: { type: 'object', properties: { name: { type: 'string', maxLength: 12 }, kind: { enum: ['cat', 'dog'] } }, required: ['name', 'kind'], additionalProperties: false },
      maxItems: 2,
    },
    home: { anyOf: [{ type: 'null' }, { type: 'object', properties: { town: { type: 'string', maxLength: 16 } }, required: ['town'], additionalProperties: false }] },
  },
  required: ['name', 'age', 'mood', 'friends', 'home'],
  additionalProperties: false,
};

/**
 * `requests` × 8 seeded samples at temperature 1 under `schema`: every one must finish (not be cut
 * by max_tokens), parse and validate. Returns how many there were.
 */
export async function expectAllValid(client: OpenAI, model: string, schema: object, opts: { requests?: number; maxTokens?: number; extra?: object } = {}): Promise<number> {
  const { requests = 25, maxTokens = 256, extra = {} } = opts;
  const validate = ajv.compile(schema);
  const format = { type: 'json_schema' as const, json_schema: { name: 'sample', schema: schema as Record<string, unknown>, strict: true } };
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Once upon a time there was a girl named Lily.' }];
  let valid = 0;
  // Five requests at a time: batched as a busy server would batch them.
  for (let k = 0; k < requests; k += 5) {
    const batch = Array.from({ length: Math.min(5, requests - k) }, (_, d) =>
      client.chat.completions.create({ model, messages, response_format: format, temperature: 1, seed: k + d + 1, n: 8, max_tokens: maxTokens, ...extra }),
    );
    for (const r of await Promise.all(batch)) {
      for (const choice of r.choices) {
        const text = choice.message.content ?? '';
        expect(choice.finish_reason, text).toBe('stop');
        expect(validate(JSON.parse(text)), `${text}: ${JSON.stringify(validate.errors)}`).toBe(true);
        valid++;
      }
    }
  }
  return valid;
}
