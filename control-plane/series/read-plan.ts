import type { Ranges, Watermarks } from '../store/series.ts';

const DAY_MS = 86_400_000;
type Level = 'raw' | 'm' | 'h';
/** Finest first; each level's bucket in seconds. */
const LEVELS: readonly Level[] = ['raw', 'm', 'h'];
const RESOLUTION_S: Record<Level, number> = { raw: 0, m: 60, h: 3600 };

export interface PlanInput {
  from: Date;
  to: Date;
  intervalS: number;
  /** How far each roll-up has got. */
  watermarks: Watermarks;
  now: Date;
  /** Days each level is kept (0: for ever). */
  retention: { statsRawDays: number; statsMinuteDays: number; statsHourDays: number };
}

/**
 * Which table answers which part of [from, to) for a question asked by buckets of
 * `intervalS` seconds. At each moment the answer is the coarsest level no coarser than the
 * bucket that holds data for it (so a month by the hour reads hours, not 2.6 million raw
 * samples); where that level holds nothing (not rolled up yet, or past its retention), the
 * finest level that does. Levels hold data for contiguous periods (hours for the oldest
 * part, then minutes, then raw samples up to now), so each gets one range.
 */
export function planRanges(p: PlanInput): Ranges {
  const from = p.from.getTime();
  const to = p.to.getTime();
  const now = p.now.getTime();
  const kept = (days: number) => (days > 0 ? now - days * DAY_MS : -Infinity);
  const held: Record<Level, [number, number]> = {
    raw: [kept(p.retention.statsRawDays), Infinity],
    m: [kept(p.retention.statsMinuteDays), p.watermarks.m?.getTime() ?? -Infinity],
    h: [kept(p.retention.statsHourDays), p.watermarks.h?.getTime() ?? -Infinity],
  };
  const base = LEVELS.filter((l) => RESOLUTION_S[l] <= p.intervalS).at(-1)!;
  const order = [...LEVELS.slice(0, LEVELS.indexOf(base) + 1).reverse(), ...LEVELS.slice(LEVELS.indexOf(base) + 1)];
  const points = [from, to, ...Object.values(held).flat()].filter((x) => x > from && x < to);
  const cuts = [...new Set([from, ...points, to])].sort((a, b) => a - b);
  const ranges: Record<Level, [number, number] | undefined> = { raw: undefined, m: undefined, h: undefined };
  for (let i = 0; i + 1 < cuts.length; i++) {
    const [a, b] = [cuts[i]!, cuts[i + 1]!];
    const mid = a + (b - a) / 2;
    const level = order.find((l) => held[l][0] <= mid && mid < held[l][1]);
    if (!level) continue;
    const r = ranges[level];
    ranges[level] = r ? [Math.min(r[0], a), Math.max(r[1], b)] : [a, b];
  }
  const out = (l: Level): readonly [Date, Date] => {
    const r = ranges[l];
    return r ? [new Date(r[0]), new Date(r[1])] : [p.to, p.to];
  };
  return { raw: out('raw'), m: out('m'), h: out('h') };
}
