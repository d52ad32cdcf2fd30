import { z } from 'zod';
import { ChatCompletionRequest, ChatTool } from './schemas.js';

/**
 * The request schema of `POST /v1/responses` (OpenAI's Responses API): text and function tools. As on
 * the other OpenAI routes unknown fields are ignored, and the fields that would change behaviour but
 * are not served (hosted tools, previous_response_id, reasoning, …) are refused by name in
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

/** An earlier call of the model's, sent back (as it came in `output`, or written by the client). */
export const ResponsesFunctionCallItem = z.object({
  type: z.literal('function_call'),
  call_id: z.string().min(1),
  name: z.string(),
  arguments: z.string(),
});
export type ResponsesFunctionCallItem = z.infer<typeof ResponsesFunctionCallItem>;

/** A call's result: a string, or content parts (text only here). */
export const ResponsesFunctionCallOutputItem = z.object({
  type: z.literal('function_call_output'),
  call_id: z.string().min(1),
  output: z.union([z.string(), z.array(contentPart)]),
});
export type ResponsesFunctionCallOutputItem = z.infer<typeof ResponsesFunctionCallOutputItem>;

const SERVED_ITEMS = new Set(['message', 'function_call', 'function_call_output']);
/** Any other input item (reasoning, item_reference, hosted tools' calls, …): refused by its type. */
const otherItem = z.object({ type: z.string().refine((t) => !SERVED_ITEMS.has(t)) }).passthrough();

/** A function tool, flat (chat nests the same fields under `function`); its name and schema checked as chat's. */
const functionFields = ChatTool.shape.function.shape;
export const ResponsesFunctionTool = z
  .object({ type: z.literal('function'), name: functionFields.name, description: functionFields.description, parameters: functionFields.parameters, strict: functionFields.strict })
  .passthrough();
export type ResponsesFunctionTool = z.infer<typeof ResponsesFunctionTool>;
/** Hosted and custom tools (web_search, file_search, mcp, custom, …): refused by their type. */
const otherTool = z.object({ type: z.string().refine((t) => t !== 'function') }).passthrough();

/** `auto`, `none`, `required` or a named function `{type: "function", name}`; other choices (allowed_tools, hosted tools) are refused. */
const toolChoice = z.union([z.enum(['none', 'auto', 'required']), z.object({ type: z.literal('function'), name: z.string() }), z.object({ type: z.string() }).passthrough()]);

export const ResponsesRequest = z.object({
  model,
  input: z.union([z.string(), z.array(z.union([ResponsesMessageItem, ResponsesFunctionCallItem, ResponsesFunctionCallOutputItem, otherItem])).min(1)]),
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
  tools: z.array(z.union([ResponsesFunctionTool, otherTool])).max(128).nullish(),
  tool_choice: toolChoice.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  /** The most calls a reply keeps (OpenAI counts all of a response's tool calls; here, one reply's). */
  max_tool_calls: z.number().int().min(1).nullish(),
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
