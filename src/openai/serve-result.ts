import type { ChoiceDelta, TokenDetail } from '../serving/generation.js';
import type { FinishReason } from '../engine/worker-messages.js';

/**
 * What a serving module hands its route: one JSON body, or chunks for Server-Sent Events. With
 * `events` (the Responses API) each chunk's `type` is sent as the SSE `event:` name and no `[DONE]` follows.
 */
export type ServeResult =
  | { kind: 'json'; body: object }
  | { kind: 'stream'; chunks: AsyncIterable<object>; cancel: () => void; events?: boolean };

export interface CollectedChoice {
  text: string;
  tokens: TokenDetail[];
  finishReason: FinishReason | null;
}

/** Gathers a whole generation for a non-streaming response. */
export async function collect(deltas: AsyncIterable<ChoiceDelta>, n: number): Promise<CollectedChoice[]> {
  const choices: CollectedChoice[] = Array.from({ length: n }, () => ({ text: '', tokens: [], finishReason: null }));
  for await (const d of deltas) {
    const c = choices[d.index];
    c.text += d.text;
    c.tokens.push(...d.tokens);
    if (d.finishReason) c.finishReason = d.finishReason;
  }
  return choices;
}

/** Interleaves several runs' deltas in arrival order (a request with several prompts). */
export async function* mergeDeltas(sources: Array<AsyncIterable<ChoiceDelta>>): AsyncGenerator<ChoiceDelta> {
  const iterators = sources.map((s) => s[Symbol.asyncIterator]());
  const next = (i: number) => iterators[i].next().then((result) => ({ i, result }));
  const pending = new Map(iterators.map((_, i) => [i, next(i)] as const));
  while (pending.size > 0) {
    const { i, result } = await Promise.race(pending.values());
    if (result.done) {
      pending.delete(i);
      continue;
    }
    pending.set(i, next(i));
    yield result.value;
  }
}
