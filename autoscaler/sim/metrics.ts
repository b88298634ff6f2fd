/** Metric helpers for simulator runs (the metrics: autoscaler/README.md, "The simulator"). */

/** The q-quantile (0..1) of `xs` by the nearest-rank method; NaN when empty. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

export type Direction = 'out' | 'in';

/**
 * Direction reversals ("flaps"): a scale-in within `windowMs` of a scale-out, or the other way
 * round. Consecutive events in the same direction are one movement.
 */
export function reversals(events: readonly { at: number; dir: Direction }[], windowMs = 600_000): number {
  let n = 0;
  let last: { at: number; dir: Direction } | null = null;
  for (const e of events) {
    if (last && e.dir !== last.dir && e.at - last.at < windowMs) n++;
    last = e;
  }
  return n;
}

/** Everything reported per scenario and policy. Times in seconds, costs in hours. */
export interface SimMetrics {
  readonly tasks: number;
  readonly unfinished: number;
  readonly waitP50: number;
  readonly waitP95: number;
  readonly waitP99: number;
  readonly waitMax: number;
  /** Mean over episodes of: first enqueue after ≥ 30 min of no work → first task start. NaN if none. */
  readonly firstRunnerFromIdle: number;
  readonly idleRunnerHours: number;
  readonly instanceHours: number;
  readonly launched: number;
  readonly kills: number;
  readonly cancels: number;
  readonly terminations: number;
  /** launched instances + KILL marks + cancelled drains. */
  readonly scaleActions: number;
  readonly reversals: number;
  readonly wastedBoots: number;
  readonly reclaimedTasks: number;
  readonly busyKills: number;
  readonly capViolations: number;
  readonly orphans: number;
  readonly runCalls: number;
  readonly runThrottled: number;
  readonly describeCalls: number;
  readonly describeThrottled: number;
  readonly alerts: readonly string[];
}
