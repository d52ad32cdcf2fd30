import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, USER_KEY, type TestGateway } from '../helpers/gateway.js';

let gw: TestGateway;
const headers = { authorization: `Bearer ${USER_KEY}`, 'content-type': 'application/json' };

beforeAll(async () => {
  gw = await startTestGateway({ CARRYON_MAX_LIVE_SEQUENCES: '2', CARRYON_MAX_WAITING: '1' });
});
afterAll(async () => gw?.close());

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A long stream: the empty prompt with a high max_tokens and a sampled, never-stopping distribution. */
const longStream = (extra: object = {}) =>
  JSON.stringify({ model: 'stories260K', prompt: '', max_tokens: 500, temperature: 1.5, seed: 7, stream: true, ...extra });

describe('client disconnect and admission', () => {
  it('a client that goes away mid-stream stops its sequence and frees its slot', async () => {
    const { engine } = gw.gateway.model();
    const ac = new AbortController();
    const res = await request(`${gw.url}/v1/completions`, { method: 'POST', headers, body: longStream(), signal: ac.signal });
    const reader = res.body[Symbol.asyncIterator]();
    await reader.next(); // at least one chunk is out: the sequence is live
    expect(engine.liveSequences).toBe(1);
    ac.abort();
    await until(() => engine.liveSequences === 0 && gw.gateway.scheduler.runningSequences === 0);
  });

  it('queues within the bound and refuses beyond it with 429 and Retry-After', async () => {
    const open = [0, 1].map(() => new AbortController());
    const streams = await Promise.all(
      open.map(async (ac) => {
        const r = await request(`${gw.url}/v1/completions`, { method: 'POST', headers, body: longStream(), signal: ac.signal });
        await r.body[Symbol.asyncIterator]().next();
        return r;
      }),
    );
    expect(streams.map((s) => s.statusCode)).toEqual([200, 200]);
    // Two sequences run (the bound); one request may wait; the next is refused at once.
    const waiting = request(`${gw.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 }) });
    await until(() => gw.gateway.scheduler.waitingRequests === 1);
    const refused = await request(`${gw.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 }) });
    expect(refused.statusCode).toBe(429);
    expect(refused.headers['retry-after']).toBe('1');
    expect(((await refused.body.json()) as { error: { code: string } }).error.code).toBe('server_overloaded');
    for (const ac of open) ac.abort();
    const served = await waiting;
    expect(served.statusCode).toBe(200);
    await served.body.dump();
    await until(() => gw.gateway.scheduler.runningSequences === 0 && gw.gateway.model().engine.liveSequences === 0);
  });

  it('a non-streaming request whose client disconnects is cancelled too', async () => {
    const ac = new AbortController();
    const pending = request(`${gw.url}/v1/completions`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ model: 'stories260K', prompt: '', max_tokens: 500, temperature: 1.5, seed: 3 }),
      signal: ac.signal,
    }).catch((e: Error) => e);
    await until(() => gw.gateway.model().engine.liveSequences === 1);
    ac.abort();
    expect(await pending).toBeInstanceOf(Error);
    await until(() => gw.gateway.model().engine.liveSequences === 0 && gw.gateway.scheduler.runningSequences === 0);
  });
});
