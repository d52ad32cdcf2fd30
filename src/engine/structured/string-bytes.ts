/**
 * The bytes of a JSON string body, after its opening quote, as a small state machine shared by
 * every string frame of the automaton. Only valid UTF-8 passes (no overlong forms, no encoded
 * surrogates, nothing past U+10FFFF), so the text always decodes without replacement characters,
 * and `\u` escapes are told apart as surrogate halves, so that a bounded string can count its
 * length in code points exactly as JSON Schema (and ajv) do: an escaped surrogate pair is one.
 */

/** Mode of the string body: the next byte is a character, a backslash or the closing quote. */
export const BODY = 0;
/** Returned by `stringStep` for the closing quote. */
export const CLOSED = -2;
/** Returned by `stringStep` for a byte the string cannot take here. */
export const REFUSED = -1;

const ESC = 1; // after '\'
const U4 = 2; // after '\u': four hex digits to come
const UD3 = 3; // after '\uD': the next digit says whether this is a surrogate half
const N3 = 4; // an ordinary \u escape, three digits left
const N2 = 5;
const N1 = 6;
const H2 = 7; // a high surrogate (\uD800–\uDBFF), two digits left
const H1 = 8;
const L2 = 9; // a low surrogate (\uDC00–\uDFFF), two digits left
const L1 = 10;
const C1 = 11; // UTF-8 continuation bytes left: 1, 2, 3
const C2 = 12;
const C3 = 13;
const E0 = 14; // after E0: the next byte is A0–BF (no overlong form)
const ED = 15; // after ED: 80–9F (no encoded surrogate)
const F0 = 16; // after F0: 90–BF (no overlong form)
const F4 = 17; // after F4: 80–8F (nothing past U+10FFFF)

/** How many modes there are (each has its own token table in token-mask.ts). */
export const STRING_MODES = 18;

const Q = 0x22;
const BACKSLASH = 0x5c;
const ESCAPES = new Set([...'"\\/bfnrt'].map((c) => c.charCodeAt(0)));
const hexValue = (b: number): number => (b >= 0x30 && b <= 0x39 ? b - 0x30 : b >= 0x41 && b <= 0x46 ? b - 0x37 : b >= 0x61 && b <= 0x66 ? b - 0x57 : -1);
const inRange = (b: number, lo: number, hi: number) => b >= lo && b <= hi;

/** The mode after byte `b` in mode `mode`; CLOSED for the closing quote, REFUSED if `b` cannot come here. */
export function stringStep(mode: number, b: number): number {
  switch (mode) {
    case BODY:
      if (b === Q) return CLOSED;
      if (b === BACKSLASH) return ESC;
      if (b < 0x20) return REFUSED;
      if (b < 0x80) return BODY;
      if (inRange(b, 0xc2, 0xdf)) return C1;
      if (b === 0xe0) return E0;
      if (b === 0xed) return ED;
      if (inRange(b, 0xe1, 0xef)) return C2;
      if (b === 0xf0) return F0;
      if (b === 0xf4) return F4;
      if (inRange(b, 0xf1, 0xf3)) return C3;
      return REFUSED;
    case ESC:
      return ESCAPES.has(b) ? BODY : b === 0x75 ? U4 : REFUSED;
    case U4: {
      const h = hexValue(b);
      return h < 0 ? REFUSED : h === 0xd ? UD3 : N3;
    }
    case UD3: {
      const h = hexValue(b);
      return h < 0 ? REFUSED : h < 8 ? N2 : h < 0xc ? H2 : L2;
    }
    case N3:
    case N2:
    case H2:
    case L2:
      return hexValue(b) < 0 ? REFUSED : mode + 1;
    case N1:
    case H1:
    case L1:
      return hexValue(b) < 0 ? REFUSED : BODY;
    case C1:
      return inRange(b, 0x80, 0xbf) ? BODY : REFUSED;
    case C2:
    case C3:
      return inRange(b, 0x80, 0xbf) ? mode - 1 : REFUSED;
    case E0:
      return inRange(b, 0xa0, 0xbf) ? C1 : REFUSED;
    case ED:
      return inRange(b, 0x80, 0x9f) ? C1 : REFUSED;
    case F0:
      return inRange(b, 0x90, 0xbf) ? C2 : REFUSED;
    case F4:
      return inRange(b, 0x80, 0x8f) ? C2 : REFUSED;
    default:
      return REFUSED;
  }
}

/**
 * What the step from `mode` to `next` adds to the string's length in code points, given whether
 * the character before was an escaped high surrogate: 1 when a character starts (a raw one at its
 * first byte, an escape once its kind is known), 0 for a low surrogate completing a pair, and −1
 * (nothing yet) otherwise.
 */
export function lengthStep(mode: number, next: number, afterHigh: boolean): number {
  if (mode === BODY) return next === ESC || next === CLOSED ? -1 : 1;
  if (mode === ESC) return next === BODY ? 1 : -1;
  if (mode === U4) return next === N3 ? 1 : -1;
  if (mode === UD3) return next === L2 && afterHigh ? 0 : 1;
  return -1;
}

/** Whether the step from `mode` to `next` completes an escaped high surrogate. */
export const completesHigh = (mode: number, next: number): boolean => mode === H1 && next === BODY;

/**
 * Whether the step from `mode` to `next` is on the way into an escape whose length is not known
 * yet (a backslash, `\u`, `\uD`): with no room for another character it may still be taken
 * right after an escaped high surrogate, since a low one would complete the pair at no length.
 */
export function entersEscape(mode: number, next: number): boolean {
  return (mode === BODY && next === ESC) || (mode === ESC && next === U4) || (mode === U4 && next === UD3);
}
