import { createHash } from 'node:crypto';
import { ApiError } from '../core/errors.js';
import type { Grammar } from '../engine/structured/grammar.js';
import type { ResponseFormatSpec } from '../engine/structured/token-mask.js';

/**
 * `response_format` (chat, completions) and `text.format` (responses) → the grammar the engine
 * constrains sampling with. Supported: `text`, `json_object` (any JSON object), and `json_schema`
 * with the subset of JSON Schema OpenAI documents for strict mode (see docs/api.md): type (one or a
 * list), properties, required, additionalProperties, enum, const, items, minItems, maxItems,
 * minLength, maxLength, anyOf,
 * $ref into $defs/definitions (not recursive), and annotations. Anything else is refused with a
 * 400 naming its path, never ignored: an ignored keyword would be output the schema does not allow.
 */

/** Bounds on one schema, so a request cannot make the compile (or the automaton) unbounded. */
export const SCHEMA_LIMITS = { depth: 10, nodes: 5000, enumValues: 1000, maxItems: 1000, maxLength: 100_000, bytes: 64 * 1024 };

/** Keywords that describe without constraining. */
const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']);
const TYPES = new Set(['object', 'array', 'string', 'number', 'integer', 'boolean', 'null']);

interface Ctx {
  strict: boolean;
  defs: Record<string, unknown>;
  nodes: number;
  /** $refs being expanded: a ref inside its own expansion is recursion, which is refused. */
  expanding: Set<string>;
}

const compiled = new Map<string, ResponseFormatSpec>();
const MAX_COMPILED = 256;

/**
 * The engine's format for a request's response format, or null for plain text. `param` is where the
 * format sits in the request (`response_format`, or `text.format` whose fields are flattened).
 * Compiled once per distinct schema (least recently used out).
 */
export function responseFormatOf(format: { type: string; [k: string]: unknown } | null | undefined, param: string, flat = false): ResponseFormatSpec | null {
  if (!format || format.type === 'text') return null;
  if (format.type === 'json_object') return { key: 'json_object', grammar: { t: 'anyobj' } };
  if (format.type !== 'json_schema') {
    throw new ApiError('invalid_value', `${param}.type must be one of 'text', 'json_object' or 'json_schema'; got '${format.type}'.`, { param: `${param}.type` });
  }
  const at = flat ? param : `${param}.json_schema`;
  const js = flat ? format : format.json_schema;
  if (!isObject(js)) throw new ApiError('missing_required_parameter', `${at} is required for type 'json_schema'.`, { param: at });
  if (typeof js.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) {
    throw new ApiError('invalid_value', `${at}.name must be 1–64 characters of a–z, A–Z, 0–9, '_' or '-'.`, { param: `${at}.name` });
  }
  if (js.strict != null && typeof js.strict !== 'boolean') throw new ApiError('invalid_type', `${at}.strict must be a boolean.`, { param: `${at}.strict` });
  return schemaFormat(js.schema ?? {}, js.strict === true, `${at}.schema`);
}

/**
 * A JSON Schema → the engine's format (its grammar and a key naming it), compiled once per distinct
 * schema (least recently used out). `at` is where the schema sits in the request; errors name paths below it.
 * Tool calling builds on this for a tool's `parameters`.
 */
export function schemaFormat(schema: unknown, strict: boolean, at: string): ResponseFormatSpec {
  // Before anything recursive (hashing stringifies it): a body may nest far deeper than a stack.
  if (nestedDeeper(schema, 4 * SCHEMA_LIMITS.depth + 8)) {
    throw new ApiError('invalid_value', `${at} nests too deeply (schemas may nest at most ${SCHEMA_LIMITS.depth} levels).`, { param: at });
  }
  const text = JSON.stringify(schema);
  if (text.length > SCHEMA_LIMITS.bytes) {
    throw new ApiError('invalid_value', `${at} is over ${SCHEMA_LIMITS.bytes} bytes.`, { param: at });
  }
  const key = createHash('sha256').update(`${strict}\n${text}`).digest('hex');
  const hit = compiled.get(key);
  if (hit) {
    compiled.delete(key);
    compiled.set(key, hit);
    return hit;
  }
  if (!isObject(schema)) throw new ApiError('invalid_type', `${at} must be an object.`, { param: at });
  const defs = { ...(isObject(schema.definitions) ? schema.definitions : {}), ...(isObject(schema.$defs) ? schema.$defs : {}) };
  const spec = { key, grammar: compile(schema, at, 0, { strict, defs, nodes: 0, expanding: new Set() }) };
  compiled.set(key, spec);
  if (compiled.size > MAX_COMPILED) compiled.delete(compiled.keys().next().value!);
  return spec;
}

/** Whether JSON value `v` nests more than `max` arrays/objects deep; iterative, so any depth is safe. */
function nestedDeeper(v: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[v, 0]];
  while (stack.length > 0) {
    const [x, d] = stack.pop()!;
    if (typeof x !== 'object' || x === null) continue;
    if (d >= max) return true;
    for (const child of Object.values(x)) stack.push([child, d + 1]);
  }
  return false;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function refuse(path: string, message: string): never {
  throw new ApiError('invalid_value', message, { param: path });
}

function compile(schema: unknown, path: string, depth: number, ctx: Ctx): Grammar {
  if (schema === true) return { t: 'any' };
  if (!isObject(schema)) refuse(path, `${path} must be a schema object.`);
  if (depth > SCHEMA_LIMITS.depth) refuse(path, `${path}: schemas may nest at most ${SCHEMA_LIMITS.depth} levels.`);
  if (++ctx.nodes > SCHEMA_LIMITS.nodes) refuse(path, `The schema has more than ${SCHEMA_LIMITS.nodes} subschemas (counting each $ref use).`);

  for (const k of Object.keys(schema)) {
    if (!KNOWN.has(k) && !ANNOTATIONS.has(k)) {
      throw new ApiError('unsupported_parameter', `${path}.${k}: the schema keyword '${k}' is not supported by this server's structured outputs.`, { param: `${path}.${k}` });
    }
  }
  if (typeof schema.$ref === 'string') return compileRef(schema.$ref, `${path}.$ref`, depth, ctx);
  if (schema.const !== undefined) return { t: 'lit', values: [JSON.stringify(schema.const)] };
  if (schema.enum !== undefined) {
    if (!Array.isArray(schema.enum) || schema.enum.length === 0) refuse(`${path}.enum`, `${path}.enum must be a non-empty array.`);
    if (schema.enum.length > SCHEMA_LIMITS.enumValues) refuse(`${path}.enum`, `${path}.enum has more than ${SCHEMA_LIMITS.enumValues} values.`);
    return { t: 'lit', values: [...new Set(schema.enum.map((v) => JSON.stringify(v)))] };
  }
  if (schema.anyOf !== undefined) {
    if (!Array.isArray(schema.anyOf) || schema.anyOf.length === 0) refuse(`${path}.anyOf`, `${path}.anyOf must be a non-empty array of schemas.`);
    if (schema.type !== undefined) refuse(`${path}.type`, `${path}: give 'type' inside each anyOf branch, not beside anyOf.`);
    return { t: 'or', options: schema.anyOf.map((s, i) => compile(s, `${path}.anyOf[${i}]`, depth + 1, ctx)) };
  }
  const types = schema.type === undefined ? [] : Array.isArray(schema.type) ? schema.type : [schema.type];
  for (const t of types) if (typeof t !== 'string' || !TYPES.has(t)) refuse(`${path}.type`, `${path}.type: '${String(t)}' is not a JSON Schema type.`);
  if (types.length === 0) {
    if (ctx.strict) refuse(`${path}.type`, `${path}: in strict mode every schema needs a 'type' (or enum, const, anyOf, $ref).`);
    if (schema.properties !== undefined) return compileObject(schema, path, depth, ctx);
    if (schema.items !== undefined) return compileArray(schema, path, depth, ctx);
    return { t: 'any' };
  }
  const options = (types as string[]).map((t): Grammar => {
    switch (t) {
      case 'object':
        return compileObject(schema, path, depth, ctx);
      case 'array':
        return compileArray(schema, path, depth, ctx);
      case 'string':
        return compileString(schema, path);
      case 'number':
      case 'integer':
        return { t: 'num', int: t === 'integer' };
      case 'boolean':
        return { t: 'lit', values: ['true', 'false'] };
      default:
        return { t: 'lit', values: ['null'] };
    }
  });
  return options.length === 1 ? options[0] : { t: 'or', options };
}

/** Keywords compiled here; each is checked where its type is. */
const KNOWN = new Set(['type', 'properties', 'required', 'additionalProperties', 'enum', 'const', 'items', 'minItems', 'maxItems', 'minLength', 'maxLength', 'anyOf', '$ref', '$defs', 'definitions']);

function compileRef(ref: string, path: string, depth: number, ctx: Ctx): Grammar {
  const m = /^#\/(\$defs|definitions)\/([^/]+)$/.exec(ref);
  if (!m) refuse(path, `${path}: only references into '#/$defs/…' or '#/definitions/…' are supported; got '${ref}'.`);
  const name = m[2].replace(/~1/g, '/').replace(/~0/g, '~');
  if (!(name in ctx.defs)) refuse(path, `${path}: '${ref}' is not defined.`);
  if (ctx.expanding.has(name)) refuse(path, `${path}: recursive schemas ('${ref}' refers to itself) are not supported.`);
  ctx.expanding.add(name);
  try {
    return compile(ctx.defs[name], path.replace(/\.\$ref$/, '') + `.${m[1]}.${name}`, depth + 1, ctx);
  } finally {
    ctx.expanding.delete(name);
  }
}

function compileObject(schema: Record<string, unknown>, path: string, depth: number, ctx: Ctx): Grammar {
  const props = schema.properties ?? {};
  if (!isObject(props)) refuse(`${path}.properties`, `${path}.properties must be an object.`);
  const required = schema.required ?? [];
  if (!Array.isArray(required) || required.some((r) => typeof r !== 'string')) refuse(`${path}.required`, `${path}.required must be an array of property names.`);
  for (const r of required as string[]) if (!(r in props)) refuse(`${path}.required`, `${path}.required names '${r}', which is not in properties.`);
  const extra = schema.additionalProperties;
  if (ctx.strict) {
    if (extra !== false) refuse(`${path}.additionalProperties`, `${path}: in strict mode 'additionalProperties' must be given, and false.`);
    const missing = Object.keys(props).filter((k) => !(required as string[]).includes(k));
    if (missing.length > 0) refuse(`${path}.required`, `${path}: in strict mode every property must be required; missing ${missing.map((k) => `'${k}'`).join(', ')}.`);
  } else if (extra !== undefined && typeof extra !== 'boolean') {
    throw new ApiError('unsupported_parameter', `${path}.additionalProperties: only true or false is supported.`, { param: `${path}.additionalProperties` });
  }
  // Without properties and not closed: any object. Otherwise only the declared keys are written
  // (valid whether or not others would be allowed).
  if (schema.properties === undefined && extra !== false) return { t: 'anyobj' };
  return {
    t: 'obj',
    props: Object.entries(props).map(([key, value]) => ({
      key,
      required: (required as string[]).includes(key),
      value: compile(value, `${path}.properties.${key}`, depth + 1, ctx),
    })),
  };
}

/** A bound of `k` (an integer from 0 to `limit`), or `dflt` when the schema gives none. */
function boundOf(schema: Record<string, unknown>, k: string, path: string, limit: number, dflt: number): number {
  const v = schema[k];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > limit) refuse(`${path}.${k}`, `${path}.${k} must be an integer from 0 to ${limit}.`);
  return v;
}

/** A string, its length in code points bounded by minLength/maxLength (JSON Schema's and ajv's count: an escaped surrogate pair is one). */
function compileString(schema: Record<string, unknown>, path: string): Grammar {
  const min = boundOf(schema, 'minLength', path, SCHEMA_LIMITS.maxLength, 0);
  const max = boundOf(schema, 'maxLength', path, SCHEMA_LIMITS.maxLength, -1);
  if (max >= 0 && max < min) refuse(`${path}.maxLength`, `${path}.maxLength is below minLength.`);
  return min === 0 && max < 0 ? { t: 'str' } : { t: 'str', min, max };
}

function compileArray(schema: Record<string, unknown>, path: string, depth: number, ctx: Ctx): Grammar {
  const min = boundOf(schema, 'minItems', path, SCHEMA_LIMITS.maxItems, 0);
  const max = boundOf(schema, 'maxItems', path, SCHEMA_LIMITS.maxItems, -1);
  if (max >= 0 && max < min) refuse(`${path}.maxItems`, `${path}.maxItems is below minItems.`);
  if (Array.isArray(schema.items)) throw new ApiError('unsupported_parameter', `${path}.items: tuple items (an array) are not supported.`, { param: `${path}.items` });
  const items = schema.items === undefined ? ({ t: 'any' } as Grammar) : compile(schema.items, `${path}.items`, depth + 1, ctx);
  return { t: 'arr', items, min, max };
}
