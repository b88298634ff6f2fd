// The scenario catalogue of autoscaler/README.md ("Tests"), each a deterministic test: the
// simulator (seeded) runs the real decide(), and a few cases drive decide() tick by tick.
import t, { type Test } from 'tap';
import { decide } from '../../../autoscaler/decide.ts';
import { autoscaleConfig, initialState, type Action, type AutoscaleState, type InstanceView, type Observation } from '../../../autoscaler/types.ts';
import { ewmaPolicy, reactivePolicy } from '../../../autoscaler/sim/baselines.ts';
import { buildTrace, simulate, type Policy, type SimResult, type SimScenario } from '../../../autoscaler/sim/engine.ts';
import { quantile } from '../../../autoscaler/sim/metrics.ts';
import { SCENARIOS } from '../../../autoscaler/sim/scenarios.ts';
import { burst, fixedDuration, lognormalDurations, merge } from '../../../autoscaler/sim/traces.ts';

const S = 1000;
const MIN = 60 * S;
const HOUR = 60 * MIN;
const C = 10;
const cluster = { runnersPerInstance: C, runnersMin: 0, runnersMax: 0, eips: [] as string[], disable: false };

/** Our policy, recording every decision's actions with their time. */
function recording(): { policy: Policy; log: { at: number; actions: readonly Action[] }[] } {
  const log: { at: number; actions: readonly Action[] }[] = [];
  const policy: Policy = {
    name: 'ewma (ours)',
    init: ewmaPolicy.init,
    decide(obs, state, cfg, now) {
      const d = ewmaPolicy.decide(obs, state, cfg, now);
      log.push({ at: now, actions: d.actions });
      return d;
    },
  };
  return { policy, log };
}

function invariantsZero(t: Test, r: SimResult): void {
  t.equal(r.metrics.busyKills, 0, `${r.scenario}: no task interrupted by a termination`);
  t.equal(r.metrics.capViolations, 0, `${r.scenario}: no cap violated`);
  t.equal(r.metrics.orphans, 0, `${r.scenario}: no orphan instance`);
}

const count = (log: { actions: readonly Action[] }[], type: Action['type'], pred: (a: Action) => boolean = () => true) =>
  log.flatMap((l) => l.actions).filter((a) => a.type === type && pred(a)).length;
const named = (name: string) => SCENARIOS.find((s) => s.name === name)!;
const last = <T>(xs: readonly T[]) => xs[xs.length - 1]!;

t.test('1. cold start burst: 0 instances, 500 tasks at t = 0', async (t) => {
  const s: SimScenario = { name: 'cold', title: '', seed: 11, horizonMs: HOUR, cluster, trace: (rng) => burst(rng, 0, 500, lognormalDurations(90_000, 0.5)) };
  const { policy, log } = recording();
  const r = simulate(s, policy);
  const first = log.find((l) => l.actions.some((a) => a.type === 'launch'))!;
  t.equal(first.at, 0, 'launches on the first tick');
  t.equal(count(log, 'launch'), 1, 'one launch: the first sample seeds the EWMA with the whole burst');
  t.equal(r.metrics.launched, 50, 'exactly ceil(500 / 10) instances');
  t.equal(r.metrics.unfinished, 0, 'every task ran');
  t.ok(r.metrics.waitMax < 4 * 60, `longest wait ${r.metrics.waitMax} s < 4 min`);
  t.equal(last(r.series).capacity + last(r.series).coming, 0, 'back to zero instances by the end');
  invariantsZero(t, r);
});

t.test('2. diurnal day with a lunch dip: no morning-style wait after lunch', async (t) => {
  const s = named('diurnal');
  const trace = buildTrace(s);
  const r = simulate(s, ewmaPolicy, trace);
  const waits = (fromH: number, toH: number) =>
    trace.flatMap((task, i) => (task.at >= fromH * HOUR && task.at < toH * HOUR ? [(r.starts[i]! - task.at) / 1000] : []));
  const morning = waits(7, 10.5);
  const afterLunch = waits(12.75, 14.5);
  t.ok(afterLunch.length > 1000 && morning.length > 1000, 'both windows are busy');
  t.ok(quantile(afterLunch, 1) <= Math.max(quantile(morning, 1), 60), `worst wait after lunch ${quantile(afterLunch, 1)} s ≤ morning's ${quantile(morning, 1)} s (or one boot)`);
  t.ok(quantile(afterLunch, 0.95) <= 30, `p95 after lunch ${quantile(afterLunch, 0.95)} s`);
  const lunchCapacity = r.series.filter((p) => p.t >= 12.5 * HOUR && p.t < 13 * HOUR).map((p) => p.capacity);
  const morningPeak = Math.max(...r.series.filter((p) => p.t >= 10 * HOUR && p.t < 11 * HOUR).map((p) => p.capacity));
  t.ok(Math.min(...lunchCapacity) < morningPeak, 'the dip is used to scale in (it is not simply held)');
  invariantsZero(t, r);
});

t.test('3. boundary flutter between 15c and 15c + 1: at most one reversal', async (t) => {
  const s = named('flutter');
  const ours = simulate(s, ewmaPolicy);
  const reactive = simulate(s, reactivePolicy);
  t.ok(ours.metrics.reversals <= 1, `ours: ${ours.metrics.reversals} reversal(s)`);
  t.ok(reactive.metrics.reversals > 10, `without EWMA and margin it flaps (${reactive.metrics.reversals}), so the test can see flapping`);
  invariantsZero(t, ours);
});

t.test('4. long tasks on a surplus instance: scale-in waits; new demand cancels the drain', async (t) => {
  // In the simulator: one 2-hour task among short ones; its instance is never terminated under it.
  const s: SimScenario = {
    name: 'long',
    title: '',
    seed: 12,
    horizonMs: 3 * HOUR,
    cluster,
    trace: (rng) => merge(burst(rng, 0, 1, fixedDuration(2 * HOUR)), burst(rng, 0, 59, lognormalDurations(60_000, 0.3)), burst(rng, 70 * MIN, 40, lognormalDurations(60_000, 0.3))),
  };
  const r = simulate(s, ewmaPolicy);
  t.equal(r.metrics.unfinished, 0);
  t.ok(r.metrics.kills > 0, 'the surplus instances were scaled in');
  invariantsZero(t, r);
  t.ok(r.series.filter((p) => p.t > 30 * MIN && p.t < 2 * HOUR).every((p) => p.capacity >= C), 'the long task kept its instance');

  // Tick by tick: a drain that a task slipped into before the KILL fence.
  const cfg = autoscaleConfig({ clusterId: 'c', ...cluster }, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 });
  const T0 = Date.UTC(2026, 0, 5);
  const view = (type: InstanceView['type'], busy: number): InstanceView => ({ id: 'i-1', type, launchedAt: T0 - HOUR, liveAt: T0 - HOUR, killAt: type === 'KILL' ? T0 : null, runnersTotal: C, runnersBusy: busy });
  let state: AutoscaleState = initialState();
  const step = (o: Observation) => {
    const d = decide(o, state, cfg, o.at);
    state = JSON.parse(JSON.stringify(d.state));
    return d.actions;
  };
  t.same(step({ at: T0, busy: 0, queued: 0, instances: [view('LIVE', 0)] }).filter((a) => a.type === 'kill').length, 1, 'idle surplus: KILL');
  for (let k = 1; k <= 360; k++) {
    const acts = step({ at: T0 + k * 10 * S, busy: 1, queued: 0, instances: [view('KILL', 1)] });
    if (acts.some((a) => a.type === 'terminate' || a.type === 'kill')) t.fail(`tick ${k}: acted on a busy draining instance`);
  }
  const acts = step({ at: T0 + 361 * 10 * S, busy: 1, queued: 300, instances: [view('KILL', 1)] }).filter((a) => a.type !== 'alert');
  t.equal(acts[0]?.type, 'cancelKill', 'an hour later demand returns: the drain is cancelled first');
  t.ok(acts.some((a) => a.type === 'launch'), 'and the rest is launched');
});

t.test('5. ICE in one subnet: launches move to the others, no tight retry loop', async (t) => {
  const s: SimScenario = {
    name: 'ice',
    title: '',
    seed: 13,
    horizonMs: HOUR,
    cluster,
    cloud: { pools: ['subnet-a', 'subnet-b'], ice: [{ pool: 'subnet-a', from: 0, to: HOUR }] },
    trace: (rng) => merge(burst(rng, 0, 200, lognormalDurations(60_000, 0.3)), burst(rng, 20 * MIN, 200, lognormalDurations(60_000, 0.3))),
  };
  const r = simulate(s, ewmaPolicy);
  t.same(Object.keys(r.pools), ['subnet-b'], 'every instance landed in subnet-b');
  t.ok(r.metrics.runCalls <= 8, `${r.metrics.runCalls} RunInstances calls for two bursts`);
  t.equal(r.metrics.unfinished, 0);
  invariantsZero(t, r);

  const all: SimScenario = { ...s, name: 'ice-all', cloud: { pools: ['subnet-a', 'subnet-b'], ice: ['subnet-a', 'subnet-b'].map((pool) => ({ pool, from: 0, to: 15 * MIN })) } };
  const { policy, log } = recording();
  const r2 = simulate(all, policy);
  t.ok(r2.metrics.alerts.includes('capacity_unavailable'), 'operator alerted when every pool is out of capacity');
  t.ok(r2.metrics.runCalls <= 12, `${r2.metrics.runCalls} calls over 15 minutes of ICE: breakers, not a loop`);
  const raised = count(log, 'alert', (a) => a.type === 'alert' && a.code === 'capacity_unavailable' && a.active);
  t.ok(raised >= 1 && raised <= 4, `raised ${raised} time(s): once per breaker cycle (2, 4, 8 min), not per tick`);
  t.equal(r2.metrics.unfinished, 0, 'capacity came back and the work ran');
  invariantsZero(t, r2);
});

t.test('6. quota hit: fleet capped, alert raised, no error storm', async (t) => {
  const r = simulate(named('fanout-10k'), ewmaPolicy);
  t.ok(r.peakInstances <= 80, `at most the 80-instance quota (${r.peakInstances})`);
  t.ok(r.metrics.alerts.includes('quota_capped'));
  t.ok(r.metrics.runCalls <= 20, `${r.metrics.runCalls} RunInstances calls`);
  t.equal(r.metrics.unfinished, 0);
  invariantsZero(t, r);
});

t.test('7. throttling: Describe within budget, RunInstances throttles back off', async (t) => {
  const r = simulate(named('fanout-10k'), ewmaPolicy);
  t.equal(r.metrics.describeThrottled, 0, 'DescribeInstances never throttled');
  t.ok(r.metrics.describeCalls <= r.series.length, 'at most one Describe per tick (reconciler, cached)');
  t.ok(r.metrics.runThrottled <= 2, `RunInstances throttled ${r.metrics.runThrottled} time(s): the next attempt waits`);
});

t.test('8. crash between launch and database write: no duplicate, no orphan', async (t) => {
  // Tag failures cannot happen here: the provider tags at creation (TagSpecifications); its own tests cover that.
  const s = named('cold-start'); // leader crashes right after its first launch reached the cloud
  const ours = simulate(s, ewmaPolicy);
  const reactive = simulate(s, reactivePolicy);
  t.equal(ours.metrics.orphans, 0, 'the resumed intent adopted the launched instances');
  t.ok(ours.metrics.launched <= 50 + 5, `no duplicates (${ours.metrics.launched} launched for 50 needed, a few never-connect replacements)`);
  t.ok(reactive.metrics.launched >= 90, `a policy without intents launches twice (${reactive.metrics.launched}), so the crash is real`);
  invariantsZero(t, ours);
});

t.test('9. agent never connects: terminated at the boot deadline and replaced once, not N times', async (t) => {
  const s: SimScenario = { name: 'never', title: '', seed: 14, horizonMs: 35 * MIN, cluster: { ...cluster, runnersMin: 10 }, cloud: { neverConnectRate: 1 }, trace: () => [] };
  const { policy, log } = recording();
  const r = simulate(s, policy);
  t.equal(r.metrics.launched, 4, 'one instance per boot deadline: t = 0, 10, 20, 30 min');
  t.equal(count(log, 'terminate', (a) => a.type === 'terminate' && a.from === 'ADD'), 3, 'each failed one terminated');
  t.ok(r.metrics.alerts.includes('boot_deadline'));
  invariantsZero(t, r);
});

t.test('10. leader failover mid scale-out and mid drain', async (t) => {
  const base = named('hourly-spikes');
  const s: SimScenario = {
    ...base,
    name: 'failover',
    horizonMs: 2 * HOUR,
    failovers: [
      { at: 5 * MIN, gapMs: 25 * S, crashAfterLaunch: true }, // the spike's first launch reaches the cloud only
      { at: 22 * MIN, gapMs: 40 * S, crashAfterLaunch: false }, // during the scale-in of that spike
      { at: 23 * MIN, gapMs: 15 * S, crashAfterLaunch: false },
    ],
  };
  const calm = simulate({ ...s, failovers: [] }, ewmaPolicy);
  const r = simulate(s, ewmaPolicy);
  t.ok(r.metrics.launched <= calm.metrics.launched + 1, `no duplicate instances (${r.metrics.launched} vs ${calm.metrics.launched} without failover)`);
  t.ok(r.metrics.kills > 0 && r.metrics.terminations >= r.metrics.kills, 'every drain finished after the failovers');
  t.equal(last(r.series).capacity + last(r.series).coming, calm.series.at(-1)!.capacity + calm.series.at(-1)!.coming, 'same end state as without failover');
  invariantsZero(t, r);
});

t.test('11. config change mid-run: runners_max lowered kills nothing; disable freezes and thaws', async (t) => {
  const s: SimScenario = {
    name: 'config',
    title: '',
    seed: 15,
    horizonMs: 2 * HOUR,
    cluster,
    trace: (rng) => merge(burst(rng, 0, 300, fixedDuration(20 * MIN)), burst(rng, 60 * MIN, 300, lognormalDurations(60_000, 0.3))),
    configChanges: [
      { at: 5 * MIN, patch: { runnersMax: 100 } },
      { at: 30 * MIN, patch: { disable: true } },
      { at: 50 * MIN, patch: { disable: false } },
    ],
  };
  const { policy, log } = recording();
  const r = simulate(s, policy);
  const between = (a: number, b: number, type: Action['type']) => count(log.filter((l) => l.at >= a && l.at < b), type);
  t.equal(between(5 * MIN, 25 * MIN, 'kill'), 0, 'runners_max below the fleet: no instance killed while busy');
  t.equal(between(30 * MIN + 10 * S, 50 * MIN, 'kill') + between(30 * MIN + 10 * S, 50 * MIN, 'launch'), 0, 'disabled: no autonomous change');
  t.ok(between(50 * MIN, 60 * MIN, 'kill') > 0, 'enabled again: the idle fleet is scaled in');
  t.ok(r.peakInstances <= 30, 'the second burst stayed within the new runners_max (10 instances) plus the first fleet');
  const second = r.series.filter((p) => p.t > 62 * MIN && p.t < 70 * MIN).map((p) => p.capacity + p.coming);
  t.ok(Math.max(...second) <= 100, `second burst capped at runners_max 100 (${Math.max(...second)})`);
  invariantsZero(t, r);
});

t.test('12. manual terminate during a scale-out', async (t) => {
  const s: SimScenario = {
    name: 'manual',
    title: '',
    seed: 16,
    horizonMs: HOUR,
    cluster,
    trace: (rng) => burst(rng, 0, 300, lognormalDurations(5 * MIN, 0.3)),
    manualTerminations: [{ at: 2 * MIN, count: 3 }],
  };
  const { policy, log } = recording();
  const r = simulate(s, policy);
  t.equal(count(log, 'cancelKill'), 0, 'a manual drain is never cancelled');
  t.ok(r.metrics.launched > 30, `the drained instances are replaced (${r.metrics.launched} launched for 30 needed)`);
  t.equal(r.metrics.unfinished, 0);
  invariantsZero(t, r);
});
