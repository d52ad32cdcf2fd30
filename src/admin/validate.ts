import type { z } from 'zod';
import { ApiError } from '../core/errors.js';
import { parseRequest } from '../core/parse-request.js';

/**
 * Validates an admin request part with the same 400s as the OpenAI surface, plus a named
 * `unknown_parameter` for a field the strict schemas do not know (a typo must not be ignored).
 */
export function parseAdmin<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const result = schema.safeParse(value ?? {});
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (issue.code === 'unrecognized_keys') {
    const key = [...issue.path.map(String), issue.keys[0]].join('.');
    throw new ApiError('unknown_parameter', `Unrecognized request argument supplied: ${key}.`, { param: key });
  }
  return parseRequest(schema, value ?? {});
}
