import type { ModelTokenizer } from '../model/tokenizer.js';

/**
 * Turns one choice's token ids into text deltas. Decoding happens against a few prompt tokens of
 * context, because SentencePiece drops a leading space at the start of a decode; text ending in an
 * incomplete UTF-8 sequence is held back; and text that could be the start of a stop string is held
 * back until it is known not to be one, so a stop string is never emitted.
 */
export class TextAssembler {
  private readonly ids: number[] = [];
  private readonly prefixText: string;
  /** Characters of the decoded completion already handed out. */
  private emitted = 0;
  private stopped = false;

  constructor(
    private readonly tokenizer: ModelTokenizer,
    private readonly context: number[],
    private readonly stops: string[],
  ) {
    this.prefixText = tokenizer.decode(context);
  }

  /** Adds a token; returns the text now safe to emit and whether a stop string was hit. */
  push(token: number): { delta: string; stop: boolean } {
    if (this.stopped) return { delta: '', stop: true };
    this.ids.push(token);
    const text = this.text();
    const hit = this.firstStop(text);
    if (hit >= 0) {
      this.stopped = true;
      return { delta: this.take(text, Math.max(hit, this.emitted)), stop: true };
    }
    // A character still incomplete (its first bytes decode to U+FFFD) is held back, and a stop string's
    // start is looked for before it: byte-level vocabularies split one character over several tokens,
    // and the character before may already begin a stop string.
    const settled = text.endsWith('\uFFFD') ? text.slice(0, -1) : text;
    const safe = settled.length - this.partialStopLength(settled);
    return { delta: this.take(text, Math.max(safe, this.emitted)), stop: false };
  }

  /** Whatever was held back, once the sequence has finished for another reason. */
  flush(): string {
    if (this.stopped) return '';
    const text = this.text();
    return this.take(text, text.length);
  }

  private text(): string {
    const full = this.tokenizer.decode([...this.context, ...this.ids]);
    return full.startsWith(this.prefixText) ? full.slice(this.prefixText.length) : this.tokenizer.decode(this.ids);
  }

  private take(text: string, end: number): string {
    const delta = text.slice(this.emitted, end);
    this.emitted = end;
    return delta;
  }

  /** Earliest index where any stop string starts, searching only text not yet emitted (and its overlap). */
  private firstStop(text: string): number {
    let best = -1;
    for (const s of this.stops) {
      const from = Math.max(0, this.emitted - s.length + 1);
      const i = text.indexOf(s, from);
      if (i >= 0 && (best < 0 || i < best)) best = i;
    }
    return best;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private partialStopLength(text: string): number {
    let longest = 0;
    for (const s of this.stops) {
      for (let len = Math.min(s.length - 1, text.length); len > longest; len--) {
        if (text.endsWith(s.slice(0, len))) {
          longest = len;
          break;
        }
      }
    }
    return longest;
  }
}
