// The properties listed in autoscaler/README.md ("Tests"), checked with fast-check: first on
// decide() fed arbitrary observation sequences (safety must hold for any input), then on short
// simulator runs with random traces, configs and failovers (liveness and convergence).
import t from 'tap';
import fc from 'fast-check';
import { decide, instanceBounds } from '../../../autoscaler/decide.ts';
import { autoscaleConfig, initialState, type Action, type AutoscaleConfig, type AutoscaleState, type InstanceView, type Observation } from '../../../autoscaler/types.ts';
import { ewmaPolicy } from '../../../autoscaler/sim/baselines.ts';
import { simulate, type SimScenario } from '../../../autoscaler/sim/engine.ts';
import { burst, fixedDuration, lognormalDurations } from '../../../autoscaler/sim/traces.ts';

const S = 1000;
const MIN = 60 * S;
const T0 = Date.UTC(2026, 0, 5);
const SEED = 20260105; // fixed: the file is deterministic; change it to explore

// ---- arbitraries for decide() ----

const clusterArb = fc.record({
  runnersPerInstance: fc.integer({ min: 1, max: 16 }),
  runnersMin: fc.integer({ min: 0, max: 40 }),
  runnersMax: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 200 })),
  eips: fc.array(fc.constant('203.0.113.9'), { maxLength: 6 }),
  disable: fc.boolean(),
});

const tunablesArb = fc.record({
  stabilizationMs: fc.constantFrom(0, 30 * S, 300 * S),
  idleBeforeKillMs: fc.constantFrom(0, 20 * S, 300 * S),
  minInstanceAgeMs: fc.constantFrom(0, 60 * S, 600 * S),
  scaleInAfterScaleOutMs: fc.constantFrom(0, 120 * S),
  bootDeadlineMs: fc.constantFrom(60 * S, 600 * S),
});

const IDS = ['i-0', 'i-1', 'i-2', 'i-3', 'i-4', 'i-5', 'i-6', 'i-7'];

/** One tick's raw material: instances (ids from a small pool, so they persist across ticks), load, provider. */
const tickArb = fc.record({
  dt: fc.integer({ min: 1 * S, max: 40 * S }),
  queued: fc.integer({ min: 0, max: 300 }),
  extraBusy: fc.integer({ min: 0, max: 5 }),
  missing: fc.boolean(),
  resumed: fc.boolean(),
  quota: fc.option(fc.integer({ min: 0, max: 10 }), { nil: null }),
  capacityUnavailable: fc.boolean(),
  instances: fc.uniqueArray(
    fc.record({
      id: fc.constantFrom(...IDS),
      type: fc.constantFrom('ADD', 'LIVE', 'LIVE', 'KILL', 'TERMINATE'),
      ageS: fc.integer({ min: 0, max: 3600 }),
      busyFrac: fc.double({ min: 0, max: 1, noNaN: true }),
      idle: fc.boolean(),
      manualKill: fc.boolean(),
      unhealthy: fc.boolean(),
      intent: fc.boolean(),
    }),
    { selector: (i) => i.id, maxLength: IDS.length },
  ),
});

type TickSpec = typeof tickArb extends fc.Arbitrary<infer U> ? U : never;

function buildObs(spec: TickSpec, at: number, cfg: AutoscaleConfig, state: AutoscaleState): Observation {
  const c = cfg.runnersPerInstance;
  const instances: InstanceView[] = spec.instances.map((i) => {
    const up = i.type === 'LIVE' || i.type === 'KILL';
    const busy = up && !i.idle ? Math.max(1, Math.round(i.busyFrac * c)) : 0;
    return {
      id: i.id,
      type: i.type as InstanceView['type'],
      launchedAt: at - i.ageS * S,
      liveAt: up ? at - Math.floor(i.ageS / 2) * S : null,
      killAt: i.type === 'KILL' ? at - S : null,
      runnersTotal: up ? c : 0,
      runnersBusy: busy,
      manualKill: i.type === 'KILL' ? i.manualKill : false,
      unhealthy: i.unhealthy,
      intentId: i.intent ? (state.intents[0]?.id ?? null) : null,
    };
  });
  const busy = instances.reduce((s, i) => s + i.runnersBusy, 0) + spec.extraBusy;
  return {
    at,
    busy: spec.missing ? null : busy,
    queued: spec.queued,
    instances,
    resumed: spec.resumed,
    provider: { instanceQuota: spec.quota, capacityUnavailable: spec.capacityUnavailable },
  };
}

const outstanding = (state: AutoscaleState, o: Observation) =>
  state.intents.reduce((s, it) => s + Math.max(0, it.count - o.instances.filter((i) => i.intentId === it.id).length), 0);

/** Runs a random tick sequence through decide and checks `check` on every decision. */
function everyDecision(check: (o: Observation, before: AutoscaleState, after: AutoscaleState, actions: readonly Action[], cfg: AutoscaleConfig) => void) {
  return fc.property(clusterArb, tunablesArb, fc.array(tickArb, { minLength: 1, maxLength: 25 }), (cluster, tun, ticks) => {
    const cfg = autoscaleConfig({ clusterId: 'prop', ...cluster }, tun);
    let state = initialState();
    let at = T0;
    for (const spec of ticks) {
      at += spec.dt;
      const o = buildObs(spec, at, cfg, state);
      const d = decide(o, state, cfg, at);
      check(o, state, d.state, d.actions, cfg);
      state = JSON.parse(JSON.stringify(d.state));
    }
  });
}

t.test('decide: never terminates an instance with a leased runner, and only from the fenced type', async (t) => {
  // Counted so the property is shown not to hold vacuously: the sequences do terminate.
  const checked = { ADD: 0, KILL: 0 };
  fc.assert(
    everyDecision((o, _b, _a, actions) => {
      for (const a of actions) {
        if (a.type !== 'terminate') continue;
        for (const id of a.instanceIds) {
          const i = o.instances.find((x) => x.id === id);
          if (!i || i.runnersBusy !== 0 || i.type !== a.from) throw new Error(`terminated ${id} (${JSON.stringify(i)}) from ${a.from}`);
          if (a.from === 'ADD' || a.from === 'KILL') checked[a.from]++;
        }
      }
    }),
    { seed: SEED, numRuns: 300 },
  );
  t.ok(checked.ADD > 0 && checked.KILL > 0, `held for 300 random sequences (${checked.ADD} terminations from ADD, ${checked.KILL} from KILL checked)`);
});

t.test('decide: never launches beyond the cap (instances + launches in flight ≤ N_max)', async (t) => {
  let launches = 0;
  let atCap = 0;
  fc.assert(
    everyDecision((o, _before, after, actions, cfg) => {
      const fresh = actions.filter((a) => a.type === 'launch' && a.reason !== 'resume');
      if (fresh.length === 0) return;
      const { nMax } = instanceBounds(cfg, o.provider?.instanceQuota);
      const total = o.instances.filter((i) => i.type !== 'TERMINATE').length;
      if (total + outstanding(after, o) > nMax) throw new Error(`launched to ${total + outstanding(after, o)} > ${nMax}`);
      launches++;
      if (total + outstanding(after, o) === nMax) atCap++;
    }),
    { seed: SEED + 1, numRuns: 300 },
  );
  t.ok(launches > 0 && atCap > 0, `held for 300 random sequences (${launches} fresh launches checked, ${atCap} of them up to the cap exactly)`);
});

t.test('decide: disable → no autonomous launch, drain or cancel', async (t) => {
  let disabled = 0;
  let wouldAct = 0;
  fc.assert(
    everyDecision((o, before, _a, actions, cfg) => {
      if (!cfg.disable) return;
      const bad = actions.filter((a) => a.type === 'kill' || a.type === 'cancelKill' || (a.type === 'launch' && a.reason !== 'resume') || (a.type === 'terminate' && a.from === 'ADD'));
      if (bad.length) throw new Error(`disabled but ${JSON.stringify(bad)}`);
      disabled++;
      // The same observation with the cluster enabled: would it have acted on its own?
      const enabled = decide(o, JSON.parse(JSON.stringify(before)) as AutoscaleState, { ...cfg, disable: false }, o.at).actions;
      if (enabled.some((a) => a.type === 'kill' || a.type === 'cancelKill' || (a.type === 'launch' && a.reason !== 'resume') || (a.type === 'terminate' && a.from === 'ADD'))) wouldAct++;
    }),
    { seed: SEED + 2, numRuns: 300 },
  );
  t.ok(disabled > 0 && wouldAct > 0, `held for 300 random sequences (${disabled} disabled decisions, ${wouldAct} where an enabled cluster would have acted)`);
});

t.test('decide: repeating an observation is idempotent (no duplicate launch, same state)', async (t) => {
  let repeatedLaunches = 0;
  fc.assert(
    everyDecision((o, _b, after, actions, cfg) => {
      const again = decide({ ...o, resumed: false }, after, cfg, o.at + 500);
      if (again.actions.length > 0) throw new Error(`repeat ordered ${JSON.stringify(again.actions)}`);
      if (JSON.stringify(again.state) !== JSON.stringify(after)) throw new Error('repeat changed the state');
      if (actions.some((a) => a.type === 'launch')) repeatedLaunches++;
    }),
    { seed: SEED + 3, numRuns: 300 },
  );
  t.ok(repeatedLaunches > 0, `held for 300 random sequences (${repeatedLaunches} repeats of a decision that launched)`);
});

t.test('decide: actions are well formed and ordered; state is plain JSON', async (t) => {
  const rank = { alert: 0, cancelKill: 1, launch: 2, kill: 3, terminate: 4 };
  const seen = { alert: 0, cancelKill: 0, launch: 0, kill: 0, terminate: 0 };
  let mixed = 0;
  fc.assert(
    everyDecision((o, _b, after, actions) => {
      for (let k = 1; k < actions.length; k++) if (rank[actions[k - 1]!.type] > rank[actions[k]!.type]) throw new Error(`order ${actions.map((a) => a.type)}`);
      const byId = new Map(o.instances.map((i) => [i.id, i]));
      const touched = new Set<string>();
      for (const a of actions) {
        if (a.type === 'kill' || a.type === 'cancelKill' || a.type === 'terminate') {
          for (const id of a.instanceIds) {
            if (touched.has(id)) throw new Error(`${id} in two actions`);
            touched.add(id);
          }
        }
        if (a.type === 'kill' && a.instanceIds.some((id) => byId.get(id)?.type !== 'LIVE' || byId.get(id)!.runnersBusy > 0)) throw new Error('kill of a non-idle or non-LIVE instance');
        if (a.type === 'cancelKill' && a.instanceIds.some((id) => byId.get(id)?.type !== 'KILL' || byId.get(id)!.manualKill)) throw new Error('cancel of a manual or non-KILL instance');
        if (a.type === 'launch' && !(a.count > 0 && Number.isInteger(a.count))) throw new Error(`launch count ${a.count}`);
        seen[a.type]++;
      }
      if (new Set(actions.map((a) => a.type)).size > 1) mixed++;
      if (JSON.stringify(JSON.parse(JSON.stringify(after))) !== JSON.stringify(after)) throw new Error('state not JSON-stable');
    }),
    { seed: SEED + 4, numRuns: 300 },
  );
  t.ok(
    Object.values(seen).every((n) => n > 0) && mixed > 0,
    `held for 300 random sequences (actions checked: ${JSON.stringify(seen)}; ${mixed} decisions with more than one kind, so the order was checked)`,
  );
});

// ---- simulator-level properties ----

const C = 10;
const clusterFor = (c: number, min: number) => ({ runnersPerInstance: c, runnersMin: min, runnersMax: 0, eips: [] as string[], disable: false });

t.test('sim: after zero demand the fleet converges to N_min within T_idle / window / EWMA decay bound', async (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 400 }), fc.integer({ min: 1, max: 16 }), fc.integer({ min: 0, max: 30 }), fc.integer({ min: 1, max: 1000 }), (tasks, c, min, seed) => {
      const s: SimScenario = { name: 'conv', title: '', seed, horizonMs: 90 * MIN, cluster: clusterFor(c, min), trace: (rng) => burst(rng, 2 * MIN, tasks, lognormalDurations(60_000, 0.4)) };
      const r = simulate(s, ewmaPolicy);
      const cfg = autoscaleConfig({ clusterId: 'x', ...s.cluster });
      const t0 = Math.max(...r.series.filter((p) => p.demand > 0).map((p) => p.t));
      const peak = Math.max(...r.series.map((p) => p.demand));
      const n = Math.max(...r.series.map((p) => (p.capacity + p.coming) / c));
      const decay = cfg.tauDownMs * Math.log(Math.max(1, (2 * peak) / c)) + cfg.stabilizationMs;
      const bound = t0 + Math.max(cfg.idleBeforeKillMs, cfg.minInstanceAgeMs, decay, cfg.scaleInAfterScaleOutMs) + (Math.ceil(Math.log2(n + 1)) + 5) * cfg.tickMs;
      const { nMin } = instanceBounds(cfg, null);
      const after = r.series.filter((p) => p.t >= bound);
      if (after.length === 0) throw new Error(`horizon too short: bound ${bound / MIN} min`);
      const bad = after.find((p) => p.capacity + p.coming !== nMin * c);
      if (bad) throw new Error(`at ${bad.t / MIN} min: ${(bad.capacity + bad.coming) / c} instances, want ${nMin} (t0 ${t0 / MIN}, bound ${bound / MIN})`);
      if (r.metrics.busyKills || r.metrics.capViolations || r.metrics.orphans) throw new Error(JSON.stringify(r.metrics));
    }),
    { seed: SEED + 5, numRuns: 25 },
  );
  t.pass('held for 25 random bursts and configs');
});

t.test('sim: constant demand D reaches ceil(D / c) instances and never reverses', async (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 250 }), fc.integer({ min: 1, max: 16 }), fc.integer({ min: 1, max: 1000 }), (d, c, seed) => {
      // D long tasks arriving over the first 5 minutes: demand ramps to D and stays there.
      const s: SimScenario = {
        name: 'const',
        title: '',
        seed,
        horizonMs: 60 * MIN,
        cluster: clusterFor(c, 0),
        trace: (rng) => Array.from({ length: d }, () => ({ at: rng.next() * 5 * MIN, durationMs: 2 * 60 * MIN })).sort((a, b) => a.at - b.at),
      };
      const r = simulate(s, ewmaPolicy);
      const want = Math.ceil(d / c);
      const end = r.series.at(-1)!;
      if (end.capacity !== want * c) throw new Error(`ended with ${end.capacity / c} instances, want ${want}`);
      if (r.metrics.reversals !== 0 || r.metrics.kills !== 0) throw new Error(`reversals ${r.metrics.reversals}, kills ${r.metrics.kills}`);
      if (r.metrics.launched !== want) throw new Error(`launched ${r.metrics.launched}, want ${want}`);
    }),
    { seed: SEED + 6, numRuns: 25 },
  );
  t.pass('held for 25 random demands');
});

t.test('sim: a leader failover at any tick creates no duplicate and loses no drain; the floor holds', async (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 10, max: 300 }),
      fc.integer({ min: 0, max: 35 * MIN }),
      fc.integer({ min: 5 * S, max: 90 * S }),
      fc.boolean(),
      fc.integer({ min: 0, max: 20 }),
      fc.integer({ min: 1, max: 1000 }),
      (tasks, at, gap, crash, min, seed) => {
        const s: SimScenario = {
          name: 'fo',
          title: '',
          seed,
          horizonMs: 80 * MIN,
          cluster: clusterFor(C, min),
          trace: (rng) => burst(rng, MIN, tasks, fixedDuration(3 * MIN)),
          failovers: [{ at, gapMs: gap, crashAfterLaunch: crash }],
        };
        const r = simulate(s, ewmaPolicy);
        const need = Math.max(Math.ceil(tasks / C), Math.ceil(min / C));
        if (r.metrics.launched > need) throw new Error(`launched ${r.metrics.launched} > ${need}`);
        if (r.metrics.busyKills || r.metrics.capViolations || r.metrics.orphans) throw new Error(JSON.stringify(r.metrics));
        const end = r.series.at(-1)!;
        if (end.capacity + end.coming !== Math.ceil(min / C) * C) throw new Error(`a drain was lost: ${end.capacity + end.coming} runners at the end`);
      },
    ),
    { seed: SEED + 7, numRuns: 30 },
  );
  t.pass('held for 30 random failovers');
});
