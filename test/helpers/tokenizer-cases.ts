/**
 * The texts the tokenizer parity tests run besides real TinyStories paragraphs (SentencePiece in
 * test/integration/tokenizer-parity.test.ts, byte-level BPE in gguf-bpe-tokenizer.test.ts), and how
 * they report a difference.
 */

/** Plain text on which every implementation must agree: spaces, line ends, scripts, digits, punctuation. */
export const EDGE_CASES: readonly string[] = [
  '',
  ' ',
  '  ',
  '   ',
  'a',
  ' a',
  'a ',
  '  leading spaces',
  'trailing spaces  ',
  'multiple   inner    spaces',
  '\n',
  'line1\nline2\n\nline3\n',
  ' \n \n\n  x',
  '\tTab\tseparated\t\t',
  '\r\nwindows\r\n',
  '1234567890 3.14 -42 1,000,000 007',
  '12345678901234567890',
  "I'm sure you'll see it's John's DON'T",
  'café 😀 日本 👩‍👩‍👧 🤖🤖',
  '中文字符，标点。日本語のテキスト 한국어 텍스트',
  'Ω≈ç√∫ ñ ü ß Привет мир',
  'Hello, World! What?! (yes) [no] {maybe} a-b_c/d\\e',
  '"quoted" \u201ccurly\u201d \u2018single\u2019 \u2014 dash\u2026',
  'def f(x):\n    return x ** 2  # square\n',
  'Once upon a time',
  'Once upon a time, there was a little girl named Lily.',
  '<0x41> is not a byte token in text',
];

/**
 * Not in NFC: Qwen's tokenizer.json normalizes it to NFC (Hugging Face, and our package, give `é`'s
 * ids) and llama.cpp does not, so only the SentencePiece comparison runs it.
 */
export const NOT_NFC_TEXT = 'e\u0301 (combining accent)';

/** Text spelling the Llama 3 and Qwen special and chat tokens, and near misses that are not. */
export const SPECIAL_TOKEN_TEXTS: readonly string[] = [
  '<|begin_of_text|>Hi<|eot_id|>',
  '<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>',
  '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
  '<think>\n\n</think>\n\nAnswer <tool_call>',
  '<|endoftext|> <|end_of_text|> <|im_end|>x<|eot_id|>y',
  'not special: <|im_end  <|eot_id| <|',
];

/** Every text whose two results differ, so a failure lists them all, not the first one. */
export function mismatches(texts: readonly string[], actual: (t: string) => unknown, expected: (t: string) => unknown) {
  return texts
    .map((text) => ({ text, actual: actual(text), expected: expected(text) }))
    .filter((r) => JSON.stringify(r.actual) !== JSON.stringify(r.expected));
}
