// Unit tests of the pure policy, one rule at a time; the rules (a)–(l) are those of
// autoscaler/README.md, "How `decide` works".
import t from 'tap';
import { decide, ewmaStep, instanceBounds, instancesFor } from '../../../autoscaler/decide.ts';
import {
  autoscaleConfig,
  initialState,
  type Action,
  type AutoscaleConfig,
  type AutoscaleState,
  type ClusterLimits,
  type Decision,
  type InstanceView,
  type Observation,
  type Tunables,
} from '../../../autoscaler/types.ts';

const T0 = Date.UTC(2026, 0, 5, 9, 0, 0);
const S = 1000;
const MIN = 60 * S;

function config(cluster: Partial<ClusterLimits> = {}, tun: Partial<Tunables> = {}): AutoscaleConfig {
  return autoscaleConfig({ clusterId: 'c1', runnersPerInstance: 10, runnersMin: 0, runnersMax: 0, eips: [], disable: false, ...cluster }, tun);
}

/** An instance; LIVE ones launched an hour ago with all 10 runners connected and idle. */
function inst(id: string, type: InstanceView['type'], o: Partial<InstanceView> = {}): InstanceView {
  const up = type === 'LIVE' || type === 'KILL';
  return { id, type, launchedAt: T0 - 60 * MIN, liveAt: up ? T0 - 59 * MIN : null, killAt: type === 'KILL' ? T0 - MIN : null, runnersTotal: up ? 10 : 0, runnersBusy: 0, intentId: null, ...o };
}

function obs(at: number, busy: number | null, queued: number | null, instances: InstanceView[], o: Partial<Observation> = {}): Observation {
  return { at, busy, queued, instances, ...o };
}

/** Drives decide tick by tick, as the loop does: the next call gets the state of the last. */
class Driver {
  state: AutoscaleState = initialState();
  constructor(readonly cfg: AutoscaleConfig) {}
  tick(o: Observation, now = o.at): Decision {
    const d = decide(o, this.state, this.cfg, now);
    this.state = JSON.parse(JSON.stringify(d.state)); // what PostgreSQL gives back
    return d;
  }
}

const of = <K extends Action['type']>(d: Decision, type: K) => d.actions.filter((a): a is Extract<Action, { type: K }> => a.type === type);
const launched = (d: Decision) => of(d, 'launch').reduce((s, a) => s + a.count, 0);

t.test('(b) the EWMA is exact for irregular ticks and starts at the first sample', async (t) => {
  const twoSteps = ewmaStep(ewmaStep(0, 100, 5 * S, 30 * S), 100, 5 * S, 30 * S);
  t.ok(Math.abs(twoSteps - ewmaStep(0, 100, 10 * S, 30 * S)) < 1e-9, 'two 5 s steps equal one 10 s step');
  t.ok(Math.abs(ewmaStep(0, 100, 30 * S, 30 * S) - 100 * (1 - Math.exp(-1))) < 1e-9, '63 % of a step after τ');
  t.equal(ewmaStep(7, 100, 0, 30 * S), 7, 'no time, no change');
  t.ok(ewmaStep(0, 100, 3_600 * S, 30 * S) > 99.999, 'a long gap (failover) converges instead of stepping by a fixed α');
  const d = new Driver(config()).tick(obs(T0, 12, 30, [inst('a', 'LIVE', { runnersBusy: 10 }), inst('b', 'LIVE', { runnersBusy: 2 })]));
  t.equal(d.info.eUp, 42, 'fast EWMA starts at busy + queued, not at zero');
  t.equal(d.info.eDown, 42);
});

t.test('(a) demand is busy + queued, minus busy runners on KILL instances', async (t) => {
  const d = new Driver(config()).tick(obs(T0, 15, 3, [inst('a', 'LIVE', { runnersBusy: 10 }), inst('k', 'KILL', { runnersBusy: 5 })]));
  t.equal(d.info.demand, 13);
});

t.test('(d) ADD counts as supply until the boot deadline, then is terminated and replaced', async (t) => {
  const drv = new Driver(config());
  const booting = inst('b1', 'ADD', { launchedAt: T0 - 5 * MIN });
  const live = inst('a', 'LIVE', { runnersBusy: 10 });
  let d = drv.tick(obs(T0, 10, 8, [live, booting]));
  t.equal(launched(d), 0, 'demand 18 = 2 instances: one LIVE + one booting, nothing to launch');
  t.equal(d.info.supply, 2);
  const late = inst('b1', 'ADD', { launchedAt: T0 - 11 * MIN });
  d = drv.tick(obs(T0 + 10 * S, 10, 8, [live, late]));
  t.same(of(d, 'terminate'), [{ type: 'terminate', instanceIds: ['b1'], from: 'ADD', reason: 'boot_deadline' }], 'failed boot is terminated');
  t.equal(launched(d), 1, 'and replaced once');
  t.ok(of(d, 'alert').some((a) => a.code === 'boot_deadline' && a.active), 'operator alerted');
  d = drv.tick(obs(T0 + 20 * S, 10, 8, [live, late]));
  t.equal(launched(d), 0, 'the replacement is in flight: no second one while the terminate is pending');
});

t.test('(d)(j) KILL counts as no capacity; a manual drain does not block scale-out', async (t) => {
  const drv = new Driver(config());
  const d = drv.tick(obs(T0, 20, 10, [inst('a', 'LIVE', { runnersBusy: 10 }), inst('k', 'KILL', { runnersBusy: 10, manualKill: true })]));
  t.equal(d.info.demand, 20, 'the KILL host is already served');
  t.equal(of(d, 'cancelKill').length, 0, 'a manual drain is never cancelled');
  t.equal(launched(d), 1, 'capacity is added beside the draining host');
});

t.test('(b) the panic path answers a burst in two ticks', async (t) => {
  const drv = new Driver(config());
  drv.tick(obs(T0, 0, 0, []));
  const d1 = drv.tick(obs(T0 + 10 * S, 0, 200, []));
  t.equal(d1.info.panic, false, 'one tick of queue with no free runner is not panic yet');
  const first = launched(d1);
  t.ok(first > 0 && first < 20, `the fast EWMA alone launches part of it (${first})`);
  const d2 = drv.tick(obs(T0 + 20 * S, 0, 200, []));
  t.equal(d2.info.panic, true);
  t.equal(first + launched(d2), 20, 'second tick: max(x, e_up) → exactly ceil(200 / 10) instances in total');
  const d3 = drv.tick(obs(T0 + 30 * S, 0, 200, []));
  t.equal(launched(d3), 0, 'launches in flight count as supply: no over-launch');
});

t.test('(i) cancelling a drain comes before launching', async (t) => {
  const drv = new Driver(config({}, { stabilizationMs: 0, scaleInAfterScaleOutMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0 }));
  const a = inst('a', 'LIVE', { runnersBusy: 10 });
  let d = drv.tick(obs(T0, 10, 0, [a, inst('b', 'LIVE'), inst('c', 'LIVE')]));
  d = drv.tick(obs(T0 + 10 * S, 10, 0, [a, inst('b', 'LIVE'), inst('c', 'LIVE')]));
  const killed = of(d, 'kill').flatMap((k) => k.instanceIds);
  t.ok(killed.length > 0, `surplus idle instances are drained (${killed})`);
  const fleet = [a, inst('b', 'LIVE'), inst('c', 'LIVE')].map((i) => (killed.includes(i.id) ? { ...i, type: 'KILL' as const, killAt: T0 + 10 * S } : i));
  d = drv.tick(obs(T0 + 20 * S, 10, 200, fleet));
  const cancel = of(d, 'cancelKill');
  t.equal(cancel.length, 1, 'demand returned: the drains are cancelled');
  t.same(cancel[0]!.instanceIds.slice().sort(), killed.slice().sort());
  const types = d.actions.filter((x) => x.type !== 'alert').map((x) => x.type);
  t.ok(types.indexOf('cancelKill') < types.indexOf('launch') || !types.includes('launch'), `order: ${types}`);
  t.ok(d.info.desiredUp > 3, `demand needs more than the fleet (${d.info.desiredUp})`);
  t.equal(launched(d), d.info.desiredUp - d.info.supply - killed.length, 'only what cancelling could not cover is launched');
  t.equal(of(d, 'terminate').length, 0, 'a cancelled drain is not terminated');
});

t.test('(f) scale-in waits for the window, the cooldown, idleness and age', async (t) => {
  const cfg = config();
  const drv = new Driver(cfg);
  const busy = inst('a', 'LIVE', { runnersBusy: 5 });
  const idleOld = inst('b', 'LIVE', { launchedAt: T0 - 60 * MIN });
  const idleYoung = inst('c', 'LIVE', { launchedAt: T0 - 2 * MIN, liveAt: T0 - MIN });
  const fleet = [busy, idleOld, idleYoung];
  let firstKillAt: number | null = null;
  let kills: string[] = [];
  for (let k = 0; k <= 60 && firstKillAt === null; k++) {
    const d = drv.tick(obs(T0 + k * 10 * S, 5, 0, fleet));
    const ids = of(d, 'kill').flatMap((x) => x.instanceIds);
    if (ids.length) {
      firstKillAt = k * 10 * S;
      kills = ids;
    }
  }
  t.ok(firstKillAt !== null, 'eventually scales in');
  t.ok(firstKillAt! >= cfg.stabilizationMs, `not before the stabilization window (${firstKillAt! / S} s)`);
  t.ok(firstKillAt! >= cfg.idleBeforeKillMs, 'not before the victim was idle T_idle');
  t.same(kills, ['b'], 'only the idle, old instance; the busy and the young ones stay');
});

t.test('(f) the half-instance margin holds 16 instances for demand between 15c and 15c + 1', async (t) => {
  const drv = new Driver(config({}, { stabilizationMs: 60 * S, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  const fleet = Array.from({ length: 16 }, (_, i) => inst(`i${String(i).padStart(2, '0')}`, 'LIVE', { runnersBusy: i < 15 ? 10 : 0 }));
  let kills = 0;
  for (let k = 0; k < 180; k++) {
    const extra = Math.floor(k / 12) % 2; // 15c and 15c + 1, two minutes each
    const f = fleet.map((i, n) => (n === 15 ? { ...i, runnersBusy: extra } : i));
    kills += of(drv.tick(obs(T0 + k * 10 * S, 150 + extra, 0, f)), 'kill').length;
  }
  t.equal(kills, 0, 'no flapping 15 ↔ 16');
});

t.test('(f) zero demand lets the last instance go; runners_min keeps ceil(min / c)', async (t) => {
  const tun = { stabilizationMs: 60 * S, idleBeforeKillMs: 60 * S, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 };
  for (const [min, keep] of [[0, 0], [13, 2]] as const) {
    const drv = new Driver(config({ runnersMin: min, runnersPerInstance: 12 }, tun));
    let fleet = [inst('a', 'LIVE', { runnersTotal: 12 }), inst('b', 'LIVE', { runnersTotal: 12 }), inst('c', 'LIVE', { runnersTotal: 12 })];
    for (let k = 0; k < 60; k++) {
      const d = drv.tick(obs(T0 + k * 10 * S, 0, 0, fleet));
      const killed = new Set(of(d, 'kill').flatMap((x) => x.instanceIds));
      const gone = new Set(of(d, 'terminate').flatMap((x) => x.instanceIds));
      fleet = fleet.filter((i) => !gone.has(i.id)).map((i) => (killed.has(i.id) ? { ...i, type: 'KILL' as const } : i));
    }
    t.equal(fleet.length, keep, `runners_min ${min} at 12 per instance → ${keep} instance(s)`);
  }
});

t.test('(h) KILL, then recheck on a later tick, then terminate only when idle', async (t) => {
  const drv = new Driver(config({}, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  let d = drv.tick(obs(T0, 0, 0, [inst('a', 'LIVE')]));
  t.same(of(d, 'kill').flatMap((k) => k.instanceIds), ['a'], 'marked KILL');
  t.equal(of(d, 'terminate').length, 0, 'never terminated in the tick that marks it');
  // A task slipped in before the KILL fence: the next snapshot sees it busy.
  d = drv.tick(obs(T0 + 10 * S, 1, 0, [inst('a', 'KILL', { runnersBusy: 1, killAt: T0 + S })]));
  t.equal(of(d, 'terminate').length, 0, 'busy: waits');
  t.equal(of(d, 'cancelKill').length, 0, 'demand 1 is served by the draining host: nothing to cancel');
  d = drv.tick(obs(T0 + 20 * S, 0, 0, [inst('a', 'KILL', { runnersBusy: 0, killAt: T0 + S })]));
  t.same(of(d, 'terminate'), [{ type: 'terminate', instanceIds: ['a'], from: 'KILL', reason: 'drained' }], 'idle on a later tick: terminated');
  d = drv.tick(obs(T0 + 30 * S, 0, 0, [inst('a', 'KILL', { runnersBusy: 0, killAt: T0 + S })]));
  t.equal(of(d, 'terminate').length, 1, 'a terminate that did not happen is asked again');
});

t.test('(h) a manual KILL is terminated when idle, even when disabled, and starts a scale-in cooldown', async (t) => {
  const drv = new Driver(config({ disable: true }));
  let d = drv.tick(obs(T0, 3, 0, [inst('m', 'KILL', { runnersBusy: 3, manualKill: true })]));
  t.equal(of(d, 'terminate').length, 0, 'busy');
  t.equal(drv.state.lastOutOfBandAt, T0, 'out-of-band change noted (2.7 (k))');
  d = drv.tick(obs(T0 + 10 * S, 0, 0, [inst('m', 'KILL', { runnersBusy: 0, manualKill: true })]));
  t.same(of(d, 'terminate').flatMap((x) => x.instanceIds), ['m']);
});

t.test('(c) caps: runners_max overshoots by less than one instance; eips; quota; floor yields to cap', async (t) => {
  const big = (cfg: AutoscaleConfig, quota: number | null = null) => launched(new Driver(cfg).tick(obs(T0, 0, 10_000, [], { provider: { instanceQuota: quota } })));
  t.equal(big(config({ runnersMax: 28, runnersPerInstance: 12 })), 3, 'runners_max 28 at 12 per instance → 3 instances (36 runners)');
  t.equal(big(config({ eips: ['1.2.3.4', '1.2.3.5'] })), 2, 'one instance per Elastic IP');
  t.equal(big(config({ runnersMax: 1000 }), 7), 7, 'quota cap');
  t.same(instanceBounds(config({ runnersMin: 50, eips: ['x'] }), null), { nMin: 1, nMax: 1 }, 'a floor above the cap yields to the cap');
  const drv = new Driver(config({ runnersMax: 30 }));
  const d = drv.tick(obs(T0, 0, 500, [inst('a', 'LIVE'), inst('b', 'LIVE'), inst('k', 'KILL', { runnersBusy: 4 })]));
  t.equal(launched(d), 0, 'a draining host still counts against the cap (it is billed and holds its EIP)');
});

t.test('(c) lowering runners_max below the fleet kills nothing', async (t) => {
  const drv = new Driver(config({ runnersMax: 20 }, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  const fleet = Array.from({ length: 5 }, (_, i) => inst(`i${i}`, 'LIVE', { runnersBusy: 10 }));
  for (let k = 0; k < 10; k++) {
    const d = drv.tick(obs(T0 + k * 10 * S, 50, 20, fleet));
    t.equal(d.actions.filter((a) => a.type !== 'alert').length, 0, `tick ${k}: no launch and no kill`);
  }
});

t.test('disable stops launches and drains but not outstanding or manual work', async (t) => {
  const drv = new Driver(config({ disable: true }, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  const late = inst('x', 'ADD', { launchedAt: T0 - 20 * MIN });
  let d = drv.tick(obs(T0, 0, 100, [inst('idle', 'LIVE'), late]));
  t.equal(launched(d), 0, 'no launch despite a queue');
  t.equal(of(d, 'kill').length, 0, 'no drain despite idle instances');
  t.equal(of(d, 'terminate').length, 0, 'a failed boot is left up for debugging');
  t.ok(of(d, 'alert').some((a) => a.code === 'boot_deadline' && /disabled/.test(a.message)));
  d = drv.tick(obs(T0 + 10 * S, 0, 100, [inst('idle', 'LIVE'), late]));
  t.equal(of(d, 'alert').length, 0, 'the alert is not repeated every tick');
});

t.test('launch intents: ids, idempotent repeats, resume after failover, settling', async (t) => {
  const cfg = config();
  const s0 = initialState();
  const o = obs(T0, 0, 35, []);
  const d1 = decide(o, s0, cfg, T0);
  const d1again = decide(o, s0, cfg, T0);
  t.same(d1again, d1, 'pure: same inputs, same decision (same intent id)');
  const l = of(d1, 'launch')[0]!;
  t.match(l.intentId, /^c1-/, 'intent id starts with the cluster id (ClientTokens never collide across clusters)');
  t.ok(l.intentId.length <= 40, 'and leaves room in a 64-character ClientToken');
  const repeat = decide(o, d1.state, cfg, T0 + S);
  t.same(repeat.actions, [], 'the same observation again orders nothing');
  t.same(repeat.state, d1.state);
  // Leader fails over before the launch landed: the new one re-issues the same intent.
  const restored = JSON.parse(JSON.stringify(d1.state));
  const d2 = decide(obs(T0 + 30 * S, 0, 35, [], { resumed: true }), restored, cfg, T0 + 30 * S);
  t.same(of(d2, 'launch'), [{ type: 'launch', intentId: l.intentId, count: l.count, reason: 'resume' }], 'resumed: same id, same count, nothing new');
  // The launch landed: instances carry the intent id; the result settles it.
  const rows = Array.from({ length: l.count }, (_, i) => inst(`n${i}`, 'ADD', { launchedAt: T0 + 31 * S, intentId: l.intentId }));
  const d3 = decide(obs(T0 + 40 * S, 0, 35, rows, { launchResults: [{ intentId: l.intentId, launched: l.count, failed: 0 }] }), d2.state, cfg, T0 + 40 * S);
  t.same(d3.state.intents, [], 'settled');
  t.equal(launched(d3), 0);
});

t.test('an unknown intent expires after the boot deadline instead of blocking scale-out forever', async (t) => {
  const drv = new Driver(config());
  const l = of(drv.tick(obs(T0, 0, 20, [])), 'launch')[0]!;
  t.equal(l.count, 2);
  t.equal(launched(drv.tick(obs(T0 + 5 * MIN, 0, 20, []))), 0, 'still in flight');
  t.equal(launched(drv.tick(obs(T0 + 11 * MIN, 0, 20, []))), 2, 'lost: launched again under a new intent');
});

t.test('provider health: breakers, quota, throttling and failed launches back off without storms', async (t) => {
  const drv = new Driver(config());
  let d = drv.tick(obs(T0, 0, 50, [], { provider: { capacityUnavailable: true, unavailablePools: ['subnet-a/m5.large'] } }));
  t.equal(launched(d), 0, 'every breaker open: no launch');
  t.ok(of(d, 'alert').some((a) => a.code === 'capacity_unavailable' && a.active && /subnet-a/.test(a.message)));
  d = drv.tick(obs(T0 + 10 * S, 0, 50, [], { provider: { capacityUnavailable: true } }));
  t.equal(of(d, 'alert').length, 0, 'alert raised once');
  d = drv.tick(obs(T0 + 20 * S, 0, 50, [], { provider: { throttledUntil: T0 + 25 * S } }));
  t.equal(launched(d), 0, 'throttled: wait');
  t.ok(of(d, 'alert').some((a) => a.code === 'capacity_unavailable' && !a.active), 'capacity alert cleared');
  d = drv.tick(obs(T0 + 30 * S, 0, 50, []));
  const l = of(d, 'launch')[0]!;
  t.equal(l.count, 5);
  // Only 2 of 5 came up.
  const rows = [inst('n0', 'ADD', { launchedAt: T0 + 30 * S, intentId: l.intentId }), inst('n1', 'ADD', { launchedAt: T0 + 30 * S, intentId: l.intentId })];
  d = drv.tick(obs(T0 + 40 * S, 0, 50, rows, { launchResults: [{ intentId: l.intentId, launched: 2, failed: 3, reason: 'capacity' }] }));
  t.equal(launched(d), 0, 'after a failed launch: back off');
  t.ok(of(d, 'alert').some((a) => a.code === 'launch_failing' && a.active));
  t.equal(launched(drv.tick(obs(T0 + 60 * S, 0, 50, rows))), 0, 'still backing off (30 s)');
  t.equal(launched(drv.tick(obs(T0 + 80 * S, 0, 50, rows))), 3, 'then tries again');
  d = drv.tick(obs(T0 + 90 * S, 0, 50, rows, { provider: { instanceQuota: 2 } }));
  t.ok(of(d, 'alert').some((a) => a.code === 'quota_capped' && a.active), 'quota cap raises an alert');
});

t.test('(l) stale or missing metrics hold everything', async (t) => {
  const drv = new Driver(config({}, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  drv.tick(obs(T0, 0, 0, [inst('a', 'LIVE')]));
  const before = JSON.stringify(drv.state);
  let d = drv.tick(obs(T0 + 10 * S, 0, 0, [inst('a', 'LIVE')]), T0 + 60 * S);
  t.equal(d.info.hold, 'stale');
  t.same(d.actions.map((a) => a.type), ['alert'], 'nothing but the alert');
  d = drv.tick(obs(T0 + 70 * S, null, 0, [inst('a', 'LIVE')]));
  t.equal(d.info.hold, 'stale', 'a missing busy count is not zero demand');
  t.equal(of(d, 'kill').length, 0);
  t.same(JSON.parse(JSON.stringify(drv.state)).eDown, JSON.parse(before).eDown, 'EWMAs untouched');
});

t.test('decide is pure: the input state is not modified and the output is plain JSON', async (t) => {
  const drv = new Driver(config({ runnersMin: 10 }, { stabilizationMs: 0, idleBeforeKillMs: 0, minInstanceAgeMs: 0, scaleInAfterScaleOutMs: 0 }));
  for (let k = 0; k < 30; k++) {
    const frozen = JSON.parse(JSON.stringify(drv.state));
    const snapshot = JSON.stringify(drv.state);
    const o = obs(T0 + k * 10 * S, k % 3, k % 7 === 0 ? 30 : 0, [inst('a', 'LIVE', { runnersBusy: k % 3 }), inst('b', 'LIVE'), inst('k', 'KILL')]);
    const d = decide(o, deepFreeze(frozen), drv.cfg, o.at);
    t.equal(JSON.stringify(frozen), snapshot);
    t.same(JSON.parse(JSON.stringify(d.state)), d.state, 'state survives JSON unchanged');
    drv.state = d.state;
  }
});

t.test('instancesFor ignores EWMA noise just above a boundary', async (t) => {
  t.equal(instancesFor(150.000001, 10), 15);
  t.equal(instancesFor(150.5, 10), 16);
  t.equal(instancesFor(0, 10), 0);
});

t.test('config validation names the field and its limit', async (t) => {
  t.throws(() => config({ runnersPerInstance: 0 }), /runnersPerInstance must be an integer ≥ 1/);
  t.throws(() => config({}, { tauUpMs: 600_000 }), /tauUpMs .* must not exceed tauDownMs/);
  t.throws(() => config({ clusterId: '' }), /clusterId/);
  t.throws(() => config({}, { stepDownFraction: 2 }), /stepDownFraction/);
});

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
