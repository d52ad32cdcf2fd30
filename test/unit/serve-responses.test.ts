import { describe, expect, it } from 'vitest';
import type { ChatMessage } from '../../src/model/chat-template.js';
import { ResponsesRequest } from '../../src/openai/responses-schemas.js';
import { serveResponses } from '../../src/openai/serve-responses.js';
import type { Gateway } from '../../src/serving/gateway.js';
import type { ChoiceDelta } from '../../src/serving/generation.js';
import type { GenerateRequest } from '../../src/serving/inference.js';

/**
 * The Responses translation over a scripted generation that ends by itself (finish "stop"), which
 * stories260K never does: test/integration/responses-api.test.ts covers the rest on the real model.
 */
function fakeGateway(deltas: ChoiceDelta[], seen: { messages?: ChatMessage[]; req?: GenerateRequest; cancelled?: boolean }): Gateway {
  const model = {
    chatTemplate: { render: (m: ChatMessage[]) => ((seen.messages = m), m.map((x) => x.content).join('\n')) },
    encoder: { encode: (text: string) => Promise.resolve(text.split(' ').map((_, i) => i)) },
    inference: {
      generate: (req: GenerateRequest) => {
        seen.req = req;
        const usage = { prompt_tokens: req.promptIds.length, completion_tokens: deltas.length, total_tokens: req.promptIds.length + deltas.length };
        return Promise.resolve({
          usage,
          cancel: () => (seen.cancelled = true),
          async *deltas() {
            for (const d of deltas) yield await Promise.resolve(d);
          },
        });
      },
    },
  };
  return { model: () => model } as unknown as Gateway;
}

const caller = { tenantId: null, keyId: 'k', harvest: null } as never;
const stops: ChoiceDelta[] = [
  { index: 0, text: 'The', tokens: [] },
  { index: 0, text: ' end.', tokens: [] },
  { index: 0, text: '', tokens: [], finishReason: 'stop' },
];
const parse = (body: object) => ResponsesRequest.parse({ model: 'm', ...body });

describe('serveResponses', () => {
  it('answers a generation that stops with status completed, store false, instructions first', async () => {
    const seen: Parameters<typeof fakeGateway>[1] = {};
    const out = await serveResponses(fakeGateway(stops, seen), parse({ input: 'Hi there', instructions: 'Be brief.', store: true }), caller, new AbortController().signal);
    expect(seen.messages).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi there' },
    ]);
    expect(seen.req).toMatchObject({ promptParam: 'input', maxTokens: null, maxTokensParam: 'max_output_tokens', n: 1 });
    if (out.kind !== 'json') throw new Error('expected json');
    expect(out.body).toMatchObject({
      object: 'response',
      status: 'completed',
      incomplete_details: null,
      store: false,
      instructions: 'Be brief.',
      output: [{ type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'The end.', annotations: [] }] }],
      usage: { input_tokens: 3, output_tokens: 3, total_tokens: 6, input_tokens_details: { cached_tokens: 0 }, output_tokens_details: { reasoning_tokens: 0 } },
    });
  });

  it('streams it ending with response.completed, numbered events, and cancels the run on close', async () => {
    const seen: Parameters<typeof fakeGateway>[1] = {};
    const out = await serveResponses(fakeGateway(stops, seen), parse({ input: [{ role: 'user', content: 'Hi' }], stream: true }), caller, new AbortController().signal);
    if (out.kind !== 'stream') throw new Error('expected a stream');
    expect(out.events).toBe(true);
    const events: Array<{ type: string; sequence_number: number; delta?: string; response?: { status: string } }> = [];
    for await (const e of out.chunks) events.push(e as (typeof events)[number]);
    expect(events.map((e) => e.type)).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.delta',
      'response.output_text.delta',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    expect(events.at(-1)!.response!.status).toBe('completed');
    out.cancel();
    expect(seen.cancelled).toBe(true);
  });
});
