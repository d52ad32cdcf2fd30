import { z } from 'zod';
import { MAX_ALPHA } from '../carryon/manifest.js';

/**
 * The OpenAI surface's request schemas, in one place. Unknown fields are ignored (SDKs add new ones
 * often); fields we cannot honour are refused by name in the serving modules, never silently dropped.
 */
const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();
const penalty = z.number().min(-2).max(2).nullish();

const sampling = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** Not in OpenAI's API; vLLM's name, reachable through the SDK's extra_body. -1 or 0 disables it. */
  top_k: z.number().int().min(-1).nullish(),
  n: z.number().int().min(1).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  stop,
  max_tokens: z.number().int().min(1).nullish(),
  presence_penalty: penalty,
  frequency_penalty: penalty,
  seed: z.number().int().nullish(),
  user: z.string().nullish(),
  logit_bias: z.record(z.string(), z.number()).nullish(),
  /** Extension: α of x + α · g ⊙ Δx for a carry-on model (default: the carry-on's manifest). Ignored for the base. */
  carry_on_alpha: z.number().min(0).max(MAX_ALPHA).nullish(),
  /** Extension: false keeps this request out of hidden-state harvesting even when the key opted in. */
  carry_on_harvest: z.boolean().nullish(),
};

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const contentPart = z.union([textPart, z.object({ type: z.string() }).passthrough()]);

/** An assistant turn's call, as OpenAI sends it back: `arguments` a JSON string. */
const messageToolCall = z.object({
  id: z.string(),
  type: z.literal('function'),
  function: z.object({ name: z.string(), arguments: z.string() }),
});

export const ChatMessageSchema = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
    content: z.union([z.string(), z.array(contentPart)]).nullish(),
    name: z.string().nullish(),
    tool_calls: z.array(messageToolCall).nullish(),
    tool_call_id: z.string().nullish(),
  })
  // As OpenAI: only an assistant turn (one that called tools) may leave its content out.
  .refine((m) => m.role === 'assistant' || m.content != null, {
    message: 'content is required for this role (a string or an array of content parts)',
    path: ['content'],
  });

/**
 * A function tool. Other fields (e.g. `strict`) pass through to the chat template as the client gave
 * them, as transformers' apply_chat_template passes its `tools`.
 */
export const ChatTool = z
  .object({
    type: z.literal('function'),
    function: z
      .object({
        name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, 'function names are 1–64 characters of a–z, A–Z, 0–9, _ or -'),
        description: z.string().nullish(),
        parameters: z.record(z.string(), z.unknown()).nullish(),
        strict: z.boolean().nullish(),
      })
      .passthrough(),
  })
  .passthrough();
export type ChatTool = z.infer<typeof ChatTool>;

export const ToolChoice = z.union([
  z.enum(['none', 'auto', 'required']),
  z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) }),
]);
export type ToolChoice = z.infer<typeof ToolChoice>;

export const ChatCompletionRequest = z.object({
  ...sampling,
  messages: z.array(ChatMessageSchema).min(1),
  max_completion_tokens: z.number().int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  tools: z.array(ChatTool).max(128).nullish(),
  tool_choice: ToolChoice.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: z.object({ type: z.string() }).passthrough().nullish(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

const tokenIds = z.array(z.number().int().min(0));

export const CompletionRequest = z.object({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string()).min(1), tokenIds.min(1), z.array(tokenIds.min(1)).min(1)]),
  echo: z.boolean().nullish(),
  /** Not in OpenAI's legacy completions; vLLM accepts it there too, as chat's (see response-format.ts). */
  response_format: z.object({ type: z.string() }).passthrough().nullish(),
  logprobs: z.number().int().min(0).max(5).nullish(),
  suffix: z.string().nullish(),
  best_of: z.number().int().min(1).nullish(),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

export const EmbeddingRequest = z.object({
  model: z.string().min(1),
  input: z.union([z.string(), z.array(z.string()).min(1), tokenIds.min(1), z.array(tokenIds.min(1)).min(1)]),
  encoding_format: z.enum(['float', 'base64']).nullish(),
  dimensions: z.number().int().min(1).nullish(),
  user: z.string().nullish(),
});
export type EmbeddingRequest = z.infer<typeof EmbeddingRequest>;

export const ModelParams = z.object({ model: z.string().min(1) });
