/** What the benchmarks share: progress lines on stderr (results go to stdout), percentiles, rounding. */
export const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

/** The `p`th percentile of `xs` (nearest rank; NaN when empty). */
export const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};

/** One decimal. */
export const round = (x: number) => Math.round(x * 10) / 10;
