/**
 * Task traces for the simulator: arrivals with their run times (Poisson, a diurnal curve,
 * fan-out bursts, heavy-tailed durations).
 * Building blocks only; scenarios.ts composes them. Times are ms from the start of the run.
 */
import type { Rng } from './prng.ts';

export interface TaskSpec {
  /** When the task becomes eligible (queued). */
  readonly at: number;
  /** How long it runs once started. */
  readonly durationMs: number;
}

export type Durations = (rng: Rng) => number;

/** Heavy-tailed run times: lognormal, plus a fraction of tasks that run to a long timeout. */
export function lognormalDurations(medianMs: number, sigma: number, longFraction = 0, longMs = 0): Durations {
  return (rng) => (longFraction > 0 && rng.next() < longFraction ? longMs : Math.max(1000, rng.lognormal(medianMs, sigma)));
}

export const fixedDuration = (ms: number): Durations => () => ms;

/** n tasks queued at the same instant (a fan-out, a cold-start burst, a schedule firing). */
export function burst(rng: Rng, at: number, n: number, dur: Durations): TaskSpec[] {
  return Array.from({ length: n }, () => ({ at, durationMs: dur(rng) }));
}

/**
 * A non-homogeneous Poisson process by thinning: `ratePerSec(t)` must stay ≤ `maxRatePerSec`.
 */
export function poisson(rng: Rng, ratePerSec: (t: number) => number, from: number, to: number, maxRatePerSec: number, dur: Durations): TaskSpec[] {
  const out: TaskSpec[] = [];
  if (maxRatePerSec <= 0) return out;
  let t = from;
  for (;;) {
    t += rng.exp(maxRatePerSec / 1000);
    if (t >= to) break;
    if (rng.next() * maxRatePerSec <= ratePerSec(t)) out.push({ at: t, durationMs: dur(rng) });
  }
  return out;
}

const HOUR = 3_600_000;

/**
 * CircleCI's "mittens" working day: a night floor, a morning hump, a lunch dip and an
 * afternoon hump (two Gaussians in the hour of day), returned in tasks per second.
 */
export function diurnalRate(peakPerSec: number, nightPerSec: number, lunchDepth = 0.6): (t: number) => number {
  const g = (h: number, mu: number, sd: number) => Math.exp(-((h - mu) ** 2) / (2 * sd * sd));
  return (t) => {
    const h = (t / HOUR) % 24;
    const day = Math.max(g(h, 10.5, 1.6), g(h, 15.5, 1.8)); // two humps
    const lunch = 1 - lunchDepth * g(h, 12.75, 0.6);
    return nightPerSec + (peakPerSec - nightPerSec) * day * lunch;
  };
}

/** Merges traces into one arrival-ordered list. */
export function merge(...parts: TaskSpec[][]): TaskSpec[] {
  return parts.flat().sort((a, b) => a.at - b.at);
}

/** Mean number of tasks in service over [0, spanMs] if every task started at once: Σ duration / span. */
export function meanDemand(tasks: readonly TaskSpec[], spanMs: number): number {
  return tasks.reduce((s, t) => s + t.durationMs, 0) / spanMs;
}
