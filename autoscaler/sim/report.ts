/**
 * Runs the scenario catalogue under our policy and both baselines, and renders the results
 * as a Markdown table. Separate from main.ts so tests can run the same comparison.
 */
import { ewmaPolicy, fixedPolicy, fixedSize, reactivePolicy } from './baselines.ts';
import { buildTrace, simulate, type SimResult, type SimScenario } from './engine.ts';
import type { Tunables } from '../types.ts';
import { meanDemand } from './traces.ts';

/** Our policy, then the fixed fleet sized for the trace's mean demand, then the reactive one. */
export function runScenario(s: SimScenario): SimResult[] {
  const trace = buildTrace(s);
  const n = fixedSize(meanDemand(trace, s.horizonMs), s.cluster.runnersPerInstance);
  return [ewmaPolicy, fixedPolicy(n), reactivePolicy].map((p) => simulate(s, p, trace));
}

const f0 = (x: number) => (Number.isNaN(x) ? '—' : x.toFixed(0));
const f1 = (x: number) => (Number.isNaN(x) ? '—' : x.toFixed(1));

export const TABLE_HEADER =
  '| scenario | policy | wait p50 s | p95 s | p99 s | first runner from idle s | idle runner-h | billed instance-h | scale actions | reversals | wasted boots | busy-kills | cap violations | orphans |';

export function tableRows(results: readonly SimResult[]): string[] {
  return results.map((r) => {
    const m = r.metrics;
    const unfinished = m.unfinished > 0 ? ` (${m.unfinished} unfinished)` : '';
    return `| ${r.scenario} | ${r.policy} | ${f0(m.waitP50)} | ${f0(m.waitP95)}${unfinished} | ${f0(m.waitP99)} | ${f0(m.firstRunnerFromIdle)} | ${f1(m.idleRunnerHours)} | ${f1(m.instanceHours)} | ${m.scaleActions} | ${m.reversals} | ${m.wastedBoots} | ${m.busyKills} | ${m.capViolations} | ${m.orphans} |`;
  });
}

export function markdownTable(results: readonly SimResult[]): string {
  return [TABLE_HEADER, '|' + ' --- |'.repeat(14), ...tableRows(results)].join('\n');
}

/** Tunable sets compared by `main.ts --sweep` (README "Tuning"): the research's starting point, neighbours, and ours. */
export const SWEEP: readonly { readonly label: string; readonly tunables: Partial<Tunables> }[] = [
  { label: 'research start: τ↓ 300 s, W 600 s, T_idle 600 s, age 600 s', tunables: { tauDownMs: 300_000, stabilizationMs: 600_000, idleBeforeKillMs: 600_000, minInstanceAgeMs: 600_000, scaleInAfterScaleOutMs: 300_000 } },
  { label: 'τ↓ 300 s, W 300 s, T_idle 600 s, age 600 s', tunables: { tauDownMs: 300_000, stabilizationMs: 300_000, idleBeforeKillMs: 600_000, minInstanceAgeMs: 600_000, scaleInAfterScaleOutMs: 300_000 } },
  { label: 'τ↓ 120 s, W 300 s, T_idle 600 s, age 600 s', tunables: { idleBeforeKillMs: 600_000 } },
  { label: 'defaults: τ↓ 120 s, W 300 s, T_idle 300 s, age 600 s', tunables: {} },
  { label: 'τ↓ 120 s, W 180 s, T_idle 300 s, age 300 s', tunables: { stabilizationMs: 180_000, minInstanceAgeMs: 300_000 } },
  { label: 'τ↓ 120 s, W 180 s, T_idle 120 s, age 120 s', tunables: { stabilizationMs: 180_000, idleBeforeKillMs: 120_000, minInstanceAgeMs: 120_000 } },
];

/** Our policy under each tunable set over the whole catalogue: totals that show the trade-off. */
export function sweepTable(scenarios: readonly SimScenario[]): string {
  const rows = SWEEP.map(({ label, tunables }) => {
    let hours = 0;
    let idle = 0;
    let rev = 0;
    let wasted = 0;
    let worstP95 = 0;
    let diurnalRev = 0;
    for (const s of scenarios) {
      const m = simulate({ ...s, tunables: { ...s.tunables, ...tunables } }, ewmaPolicy).metrics;
      hours += m.instanceHours;
      idle += m.idleRunnerHours;
      rev += m.reversals;
      wasted += m.wastedBoots;
      worstP95 = Math.max(worstP95, m.waitP95);
      if (s.name === 'diurnal') diurnalRev = m.reversals;
    }
    return `| ${label} | ${hours.toFixed(1)} | ${idle.toFixed(0)} | ${rev} (${diurnalRev}) | ${wasted} | ${worstP95.toFixed(0)} |`;
  });
  return ['| tunables (others at their defaults) | billed instance-h (all scenarios) | idle runner-h | reversals (diurnal) | wasted boots | worst p95 wait s |', '| --- | --- | --- | --- | --- | --- |', ...rows].join('\n');
}
