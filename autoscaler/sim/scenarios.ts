/**
 * The simulator's scenarios (autoscaler/README.md, "Results"): each a trace plus the cloud
 * faults it exercises. 10 runner slots per instance.
 */
import type { SimScenario } from './engine.ts';
import { burst, diurnalRate, fixedDuration, lognormalDurations, merge, poisson } from './traces.ts';

const MIN = 60_000;
const HOUR = 60 * MIN;
const C = 10;

const base = { runnersPerInstance: C, runnersMin: 0, runnersMax: 0, eips: [] as string[], disable: false };

export const SCENARIOS: readonly SimScenario[] = [
  {
    name: 'cold-start',
    title: 'Cold-start burst: 500 tasks onto an empty cluster; 5 % of agents never connect; leader fails over mid scale-out',
    seed: 1,
    horizonMs: 90 * MIN,
    cluster: base,
    cloud: { neverConnectRate: 0.05 },
    trace: (rng) => burst(rng, 1 * MIN, 500, lognormalDurations(90_000, 0.5)),
    failovers: [{ at: 1 * MIN, gapMs: 30_000, crashAfterLaunch: true }],
  },
  {
    name: 'diurnal',
    title: 'Diurnal day: night floor, morning and afternoon humps, lunch dip; heavy-tailed durations; spot reclaims',
    seed: 2,
    horizonMs: 24 * HOUR,
    cluster: base,
    cloud: { reclaimPerHour: 0.02 },
    tickJitterMs: 3000,
    trace: (rng) => poisson(rng, diurnalRate(0.8, 0.01), 0, 24 * HOUR, 0.8, lognormalDurations(60_000, 1, 0.01, 30 * MIN)),
  },
  {
    name: 'flutter',
    title: 'Boundary flutter: demand alternates between 15c and 15c+1 every 2 minutes',
    seed: 3,
    horizonMs: 3 * HOUR,
    cluster: base,
    trace: (rng) =>
      merge(
        burst(rng, 0, 15 * C, fixedDuration(4 * HOUR)),
        Array.from({ length: 40 }, (_, k) => ({ at: 20 * MIN + k * 4 * MIN, durationMs: 2 * MIN })),
      ),
  },
  {
    name: 'fanout-10k',
    title: 'Fan-out of 10,000 tasks; runners_max 1000; account quota 80 instances; ICE in subnet-a; RunInstances throttling',
    seed: 4,
    horizonMs: 2 * HOUR,
    cluster: { ...base, runnersMax: 1000 },
    cloud: { pools: ['subnet-a', 'subnet-b', 'subnet-c'], accountQuota: 80, ice: [{ pool: 'subnet-a', from: 5 * MIN, to: 40 * MIN }], runBucket: { burst: 2, perSec: 0.5 } },
    trace: (rng) => burst(rng, 10 * MIN, 10_000, lognormalDurations(30_000, 0.4)),
  },
  {
    name: 'hourly-spikes',
    title: 'Hourly schedules: 300 tasks fire at every :00, nothing in between; slow boots (median 2 min)',
    seed: 5,
    horizonMs: 6 * HOUR,
    cluster: base,
    cloud: { bootMedianMs: 120_000, bootSigma: 0.4 },
    trace: (rng) => merge(...Array.from({ length: 6 }, (_, h) => burst(rng, h * HOUR + 5 * MIN, 300, lognormalDurations(45_000, 0.5)))),
  },
];
