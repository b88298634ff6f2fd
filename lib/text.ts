/**
 * Text as PostgreSQL stores it: no NUL (text and jsonb refuse it) and no unpaired UTF-16
 * surrogate (jsonb refuses it; text would store U+FFFD instead). The API refuses such
 * input (control-plane/http/text.ts); text that a task or a runner produces is made
 * storable instead, so a task's output can never fail the write of its own result.
 */

const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();
const toWellFormed = (s: string): string => (s as unknown as { toWellFormed(): string }).toWellFormed();

/** Why `s` cannot be stored exactly as text, or undefined when it can. */
export function textProblem(s: string): string | undefined {
  if (s.includes('\u0000')) return 'must not contain NUL characters (\\u0000)';
  if (!isWellFormed(s)) {
    const chars = [...s];
    const bad = chars.find((c) => c.length === 1 && c >= '\ud800' && c <= '\udfff')!;
    return `contains an unpaired UTF-16 surrogate (\\u${bad.charCodeAt(0).toString(16)}); send valid Unicode text`;
  }
  return undefined;
}

/**
 * `s` made storable: NUL dropped, unpaired surrogates replaced by U+FFFD, and cut to at most
 * `maxBytes` of UTF-8 without splitting a character.
 */
export function storableText(s: string, maxBytes: number): string {
  let out = s.includes('\u0000') ? s.replaceAll('\u0000', '') : s;
  if (!isWellFormed(out)) out = toWellFormed(out);
  if (Buffer.byteLength(out, 'utf8') <= maxBytes) return out;
  const cut = Buffer.from(out, 'utf8').subarray(0, maxBytes).toString('utf8');
  // A character cut in two decodes as U+FFFD at the end: drop it.
  return cut.endsWith('\ufffd') && !out.startsWith(cut) ? cut.slice(0, -1) : cut;
}
