import { z } from 'zod';
import { ChatCompletionRequest } from './schemas.js';

/**
 * The request schema of `POST /v1/responses` (OpenAI's Responses API), text only. As on the other
 * OpenAI routes unknown fields are ignored, and the fields that would change behaviour but are not
 * served (tools, previous_response_id, non-text formats, reasoning, …) are refused by name in
 * `serve-responses.ts`, never silently dropped.
 */
const { model, temperature, top_p, stream, user, carry_on_alpha, carry_on_harvest } = ChatCompletionRequest.shape;

/** A text content part: `input_text`, or `output_text` when a client sends an earlier answer back. */
const textPart = z.object({ type: z.enum(['input_text', 'output_text']), text: z.string() });
const contentPart = z.union([textPart, z.object({ type: z.string() }).passthrough()]);

export const ResponsesMessageItem = z.object({
  type: z.literal('message').optional(),
  role: z.enum(['user', 'assistant', 'system', 'developer']),
  content: z.union([z.string(), z.array(contentPart)]),
});
export type ResponsesMessageItem = z.infer<typeof ResponsesMessageItem>;

/** Any other input item (function_call_output, reasoning, item_reference, …): refused by its type. */
const otherItem = z.object({ type: z.string().refine((t) => t !== 'message') }).passthrough();

export const ResponsesRequest = z.object({
  model,
  input: z.union([z.string(), z.array(z.union([ResponsesMessageItem, otherItem])).min(1)]),
  instructions: z.string().nullish(),
  max_output_tokens: z.number().int().min(1).nullish(),
  temperature,
  top_p,
  stream,
  /** Accepted; nothing is ever stored, so true is answered as false (as vLLM without its store). */
  store: z.boolean().nullish(),
  /** Echoed back on the response, as OpenAI: at most 16 pairs, keys up to 64 and values up to 512 characters. */
  metadata: z
    .record(z.string().max(64), z.string().max(512))
    .refine((m) => Object.keys(m).length <= 16, { message: 'at most 16 key-value pairs' })
    .nullish(),
  user,
  tools: z.array(z.unknown()).nullish(),
  tool_choice: z.unknown().optional(),
  previous_response_id: z.string().nullish(),
  conversation: z.unknown().optional(),
  prompt: z.unknown().optional(),
  background: z.boolean().nullish(),
  text: z.object({ format: z.object({ type: z.string() }).passthrough().nullish() }).passthrough().nullish(),
  reasoning: z.record(z.string(), z.unknown()).nullish(),
  carry_on_alpha,
  carry_on_harvest,
});
export type ResponsesRequest = z.infer<typeof ResponsesRequest>;
