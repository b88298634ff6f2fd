/**
 * The autoscaling policy: a pure function from (observation, persisted state, config, now)
 * to a new state and a list of actions. No I/O, no clock, no randomness — the loop and the
 * simulator supply all of those. The rules are lettered (a)–(l) as in autoscaler/README.md
 * ("How `decide` works"); each block below names the rule it implements.
 */
import type {
  Action,
  AlertCode,
  AutoscaleConfig,
  AutoscaleState,
  Decision,
  DecisionInfo,
  InstanceView,
  LaunchIntent,
  Observation,
} from './types.ts';

/** Demand is counted in whole runners; an EWMA this close above a boundary is on it. */
const RUNNER_EPSILON = 0.01;

/** ceil(runners / c) that ignores EWMA noise just above a multiple of c. */
export function instancesFor(runners: number, c: number): number {
  return Math.max(0, Math.ceil((runners - RUNNER_EPSILON) / c));
}

/** (b) one EWMA step that is exact for any elapsed time: α = 1 − exp(−Δt/τ). */
export function ewmaStep(prev: number, x: number, dtMs: number, tauMs: number): number {
  if (dtMs <= 0) return prev;
  return prev + (1 - Math.exp(-dtMs / tauMs)) * (x - prev);
}

/** The instance floor and cap of rule (c); the cap is Infinity when nothing limits it. */
export function instanceBounds(cfg: AutoscaleConfig, quota: number | null | undefined): { nMin: number; nMax: number } {
  const c = cfg.runnersPerInstance;
  let nMax = Infinity;
  if (cfg.runnersMax > 0) nMax = Math.ceil(cfg.runnersMax / c); // overshoot < one instance, as Iron documents
  if (cfg.eips.length > 0) nMax = Math.min(nMax, cfg.eips.length);
  if (quota !== null && quota !== undefined) nMax = Math.min(nMax, Math.max(0, quota));
  // Caps are hard (money, addresses, quota); a floor above the cap yields to it.
  const nMin = Math.min(Math.ceil(cfg.runnersMin / c), nMax);
  return { nMin, nMax };
}

interface Fleet {
  live: InstanceView[];
  liveHealthy: InstanceView[];
  addFresh: InstanceView[];
  addExpired: InstanceView[];
  kill: InstanceView[];
  /** Instances not yet TERMINATE (for caps: a draining host still costs and holds its EIP). */
  total: number;
  /** Runner slots free on LIVE instances. */
  available: number;
  busyOnKill: number;
}

function classify(obs: Observation, cfg: AutoscaleConfig, now: number): Fleet {
  const f: Fleet = { live: [], liveHealthy: [], addFresh: [], addExpired: [], kill: [], total: 0, available: 0, busyOnKill: 0 };
  for (const i of obs.instances) {
    if (i.type === 'TERMINATE') continue;
    f.total++;
    if (i.type === 'LIVE') {
      f.live.push(i);
      if (!i.unhealthy) f.liveHealthy.push(i);
      f.available += Math.max(0, i.runnersTotal - i.runnersBusy);
    } else if (i.type === 'ADD') {
      // (d) ADD counts as coming capacity until its boot deadline, then as nothing.
      (now - i.launchedAt < cfg.bootDeadlineMs ? f.addFresh : f.addExpired).push(i);
    } else {
      f.kill.push(i);
      f.busyOnKill += i.runnersBusy;
    }
  }
  return f;
}

/** Raises or clears an alert, emitting an action only when its state changes (no alert storms). */
function setAlert(state: AutoscaleState, actions: Action[], code: AlertCode, active: boolean, message: string): void {
  const on = state.alerts.includes(code);
  if (on === active) return;
  state.alerts = active ? [...state.alerts, code].sort() : state.alerts.filter((a) => a !== code);
  actions.push({ type: 'alert', code, active, message: active ? message : `resolved: ${code}` });
}

/**
 * Open intents after this observation: resolved ones (results seen, all instances seen, or
 * none seen in a snapshot taken a boot deadline after the launch) dropped. Judged by the
 * snapshot's time, so that repeating an observation settles the same way.
 */
function settleIntents(state: AutoscaleState, obs: Observation, cfg: AutoscaleConfig): Map<string, number> {
  const seen = new Map<string, number>();
  for (const i of obs.instances) if (i.intentId) seen.set(i.intentId, (seen.get(i.intentId) ?? 0) + 1);
  const reported = new Set((obs.launchResults ?? []).map((r) => r.intentId));
  const outstanding = new Map<string, number>();
  state.intents = state.intents.filter((it) => {
    const left = it.count - (seen.get(it.id) ?? 0);
    if (reported.has(it.id) || left <= 0 || obs.at - it.createdAt >= cfg.bootDeadlineMs) return false;
    outstanding.set(it.id, left);
    return true;
  });
  return outstanding;
}

/** Launch results drive a global backoff so that failing launches never become a tight loop. */
function noteLaunchResults(state: AutoscaleState, obs: Observation, cfg: AutoscaleConfig, now: number, actions: Action[]): void {
  const results = obs.launchResults ?? [];
  if (results.length === 0) return;
  const failed = results.reduce((s, r) => s + r.failed, 0);
  if (failed > 0) {
    state.launchFailures++;
    const wait = Math.min(cfg.launchBackoffMaxMs, cfg.launchBackoffMs * 2 ** (state.launchFailures - 1));
    state.launchBackoffUntil = now + wait;
    const reasons = [...new Set(results.map((r) => r.reason).filter(Boolean))].join(', ') || 'error';
    setAlert(state, actions, 'launch_failing', true, `${failed} instance launch(es) failed (${reasons}); next attempt in ${Math.round(wait / 1000)} s`);
  } else if (results.some((r) => r.launched > 0)) {
    state.launchFailures = 0;
    state.launchBackoffUntil = null;
    setAlert(state, actions, 'launch_failing', false, '');
  }
}

/**
 * Per-instance idle start (for T_idle) and drain records; forgets instances that left.
 * Returns the ids whose drain the policy already knew before this tick (the KILL recheck).
 */
function trackInstances(state: AutoscaleState, obs: Observation, prevAt: number | null, now: number): Set<string> {
  const drainsBefore = new Set<string>();
  const idle: Record<string, number> = {};
  const drains: AutoscaleState['drains'] = {};
  for (const i of obs.instances) {
    if (i.type !== 'LIVE' && i.type !== 'KILL') continue;
    if (i.runnersBusy === 0) {
      let since = state.idleSince[i.id];
      if (since === undefined) {
        // Became LIVE since the last look: idle since then. Otherwise it was busy (or unknown): idle from now.
        const upAt = i.liveAt ?? i.launchedAt;
        since = prevAt !== null && upAt > prevAt ? upAt : obs.at;
      }
      if (i.lastBusyAt != null && i.lastBusyAt > since) since = i.lastBusyAt;
      idle[i.id] = since;
    }
    // A LIVE instance loses its record: its drain was cancelled, or the KILL order never applied.
    if (i.type !== 'KILL') continue;
    const known = state.drains[i.id];
    if (known) {
      drainsBefore.add(i.id);
      // Still KILL after a cancel was ordered: the cancel was lost; it is our drain again.
      drains[i.id] = { since: known.since, manual: known.manual || i.manualKill === true };
    } else {
      // A KILL the policy did not order: the terminate API or a console change. Rule (k): cooldown.
      drains[i.id] = { since: i.killAt ?? now, manual: i.manualKill ?? true };
      state.lastOutOfBandAt = now;
    }
  }
  state.idleSince = idle;
  state.drains = drains;
  return drainsBefore;
}

/** Stabilization window (rule (f)): a max-deque of scale-in targets over the trailing W. */
function stabilize(state: AutoscaleState, cfg: AutoscaleConfig, at: number, target: number): { max: number; full: boolean } {
  const last = state.downPeaks.at(-1); // the newest entry is always the previous sample
  // A gap longer than the window (leader failover, outage) restarts it: no scale-in on one sample.
  if (state.downSince === null || last === undefined || at - last[0] > cfg.stabilizationMs) state.downSince = at;
  const peaks = state.downPeaks.filter(([t]) => t > at - cfg.stabilizationMs);
  while (peaks.length > 0 && peaks.at(-1)![1] <= target) peaks.pop();
  peaks.push([at, target]);
  state.downPeaks = peaks;
  return { max: peaks[0]![1], full: at - state.downSince >= cfg.stabilizationMs };
}

function newIntent(state: AutoscaleState, cfg: AutoscaleConfig, count: number, now: number): LaunchIntent {
  // cluster id + time + sequence: unique across clusters, leaders and a lost state.
  const id = `${cfg.clusterId}-${now.toString(36)}-${(state.nextIntentSeq++).toString(36)}`;
  const intent = { id, count, createdAt: now };
  state.intents = [...state.intents, intent];
  return intent;
}

/** Victim order (rule (g)): idle only; unhealthy first, then oldest; id breaks ties. */
function pickVictims(fleet: Fleet, state: AutoscaleState, cfg: AutoscaleConfig, now: number, n: number): InstanceView[] {
  if (n <= 0) return [];
  return fleet.live
    .filter((i) => i.runnersBusy === 0)
    .filter((i) => now - i.launchedAt >= cfg.minInstanceAgeMs)
    .filter((i) => {
      const since = state.idleSince[i.id];
      return since !== undefined && now - since >= cfg.idleBeforeKillMs;
    })
    .sort((a, b) => Number(!!b.unhealthy) - Number(!!a.unhealthy) || a.launchedAt - b.launchedAt || (a.id < b.id ? -1 : 1))
    .slice(0, n);
}

function heldInfo(state: AutoscaleState, cfg: AutoscaleConfig, obs: Observation, hold: 'stale' | 'repeat'): DecisionInfo {
  const { nMin, nMax } = instanceBounds(cfg, obs.provider?.instanceQuota);
  return { hold, demand: NaN, eUp: state.eUp ?? 0, eDown: state.eDown ?? 0, panic: false, desiredUp: NaN, desiredDown: NaN, supply: NaN, nMin, nMax };
}

/**
 * One tick of the autoscaler. Returns the next state and the actions in execution order
 * (alerts, cancelKill, launch, kill, terminate). The loop persists the state before acting
 * and executes the actions before it reads the next observation.
 *
 * A repeat of an observation already decided on (same `at`) changes nothing and orders
 * nothing: the first decision's actions are the loop's to carry out, and every one of them
 * is safe to retry (launches by intent id, transitions fenced on the instance's type).
 */
export function decide(obs: Observation, prev: AutoscaleState, cfg: AutoscaleConfig, now: number): Decision {
  const state: AutoscaleState = structuredClone(prev);
  const actions: Action[] = [];
  const c = cfg.runnersPerInstance;
  const prevAt = state.lastObservedAt;

  // A new leader finishes what the old one started: open intents go out again, same id (ClientToken).
  const outstanding = settleIntents(state, obs, cfg);
  if (obs.resumed) {
    for (const it of state.intents) actions.push({ type: 'launch', intentId: it.id, count: it.count, reason: 'resume' });
  }
  if (prevAt !== null && obs.at <= prevAt) return { state: structuredClone(prev), actions, info: heldInfo(prev, cfg, obs, 'repeat') };

  // (l) stale or missing metrics: hold, and never read a missing sample as zero demand.
  if (obs.busy === null || obs.queued === null || now - obs.at > cfg.staleAfterMs || obs.at > now) {
    setAlert(state, actions, 'stale_metrics', true, `queue metrics are missing or older than ${cfg.staleAfterMs} ms: holding`);
    return { state, actions: orderActions(actions), info: heldInfo(state, cfg, obs, 'stale') };
  }
  setAlert(state, actions, 'stale_metrics', false, '');

  const pending = [...outstanding.values()].reduce((s, n) => s + n, 0);
  const fleet = classify(obs, cfg, now);
  noteLaunchResults(state, obs, cfg, now, actions);
  const drainsBefore = trackInstances(state, obs, prevAt, now);

  // (a) demand = busy + queued; busy runners on KILL instances are already served and leaving.
  const q = obs.queued;
  const x = Math.max(0, obs.busy - fleet.busyOnKill) + q;

  // (c) the floor and the caps (runners_max, eips, the provider's quota).
  const health = obs.provider ?? {};
  const { nMin, nMax } = instanceBounds(cfg, health.instanceQuota);

  // (b) two EWMAs, exact for irregular ticks; they start at the first sample, not at zero.
  // The slow one ignores demand beyond the cap: a fleet that can never serve it need not
  // remember it, and after a capped fan-out that memory would only delay the scale-in.
  const dt = prevAt === null ? 0 : obs.at - prevAt;
  const xDown = Math.min(x, nMax * c);
  const eUp = state.eUp === null ? x : ewmaStep(state.eUp, x, dt, cfg.tauUpMs);
  const eDown = state.eDown === null ? xDown : ewmaStep(state.eDown, xDown, dt, cfg.tauDownMs);
  state.eUp = eUp;
  state.eDown = eDown;
  state.lastObservedAt = obs.at;
  // Panic path: queued work and no free runner for `panicTicks` ticks in a row.
  state.panicCount = q > 0 && fleet.available === 0 ? state.panicCount + 1 : 0;
  const panic = state.panicCount >= cfg.panicTicks;

  // (c) instances wanted by scale-out.
  const upRunners = (panic ? Math.max(x, eUp) : eUp) + cfg.headroomRunners;
  const needUp = instancesFor(upRunners, c);
  const desiredUp = Math.min(Math.max(needUp, nMin), nMax);
  setAlert(state, actions, 'quota_capped', health.instanceQuota != null, `instance quota reached: the fleet is capped at ${health.instanceQuota} instances`);
  setAlert(state, actions, 'capacity_unavailable', !!health.capacityUnavailable, `no subnet/instance type has capacity${health.unavailablePools?.length ? ` (open breakers: ${health.unavailablePools.join(', ')})` : ''}: launches paused`);

  // (d) supply: healthy LIVE + ADD within the boot deadline + launches in flight; KILL counts 0.
  const supply = fleet.liveHealthy.length + fleet.addFresh.length + pending;
  const cancelled = cancelDrains(state, cfg, fleet, desiredUp - supply, actions);
  const launched = launch(state, cfg, fleet, health, now, desiredUp - supply - cancelled.size, pending, actions, needUp < desiredUp);
  if (cancelled.size > 0 || launched > 0) state.lastScaleOutAt = now;

  // (f) scale-in: slow EWMA + half-instance margin, stabilized; cooldowns; idle, aged victims.
  const downRunners = eDown + cfg.headroomRunners;
  // The margin keeps k instances until demand falls half an instance below k·c. At k = 1 that
  // would keep the last host forever, so zero demand now and a slow average under c/2 release it.
  const downNeed = x === 0 && downRunners < c / 2 ? 0 : Math.ceil((downRunners + c / 2 - RUNNER_EPSILON) / c);
  const window = stabilize(state, cfg, obs.at, Math.max(downNeed, needUp, nMin));
  const serving = fleet.live.length + fleet.addFresh.length + pending;
  const cooled =
    (state.lastScaleOutAt === null || now - state.lastScaleOutAt >= cfg.scaleInAfterScaleOutMs) &&
    (state.lastOutOfBandAt === null || now - state.lastOutOfBandAt >= cfg.scaleInAfterScaleOutMs);
  if (!cfg.disable && cancelled.size === 0 && launched === 0 && !panic && window.full && cooled && window.max < serving) {
    const step = Math.max(1, Math.floor(fleet.live.length * cfg.stepDownFraction));
    const victims = pickVictims(fleet, state, cfg, now, Math.min(serving - window.max, step));
    if (victims.length > 0) {
      for (const v of victims) state.drains[v.id] = { since: now, manual: false };
      actions.push({ type: 'kill', instanceIds: victims.map((v) => v.id), reason: 'scale_in' });
      state.lastScaleInAt = now;
    }
  }

  terminations(state, cfg, fleet, drainsBefore, cancelled, now, actions);
  const info: DecisionInfo = { hold: null, demand: x, eUp, eDown, panic, desiredUp, desiredDown: window.max, supply, nMin, nMax };
  return { state, actions: orderActions(actions), info };
}

/** (i) cancel drains before launching, newest KILL first; only the policy's own drains. */
function cancelDrains(state: AutoscaleState, cfg: AutoscaleConfig, fleet: Fleet, deficit: number, actions: Action[]): Set<string> {
  if (deficit <= 0 || cfg.disable) return new Set();
  const ours = fleet.kill
    .filter((i) => state.drains[i.id] && !state.drains[i.id]!.manual)
    .sort((a, b) => state.drains[b.id]!.since - state.drains[a.id]!.since || (a.id < b.id ? -1 : 1))
    .slice(0, deficit);
  // The record stays until a later tick sees the instance LIVE, so a lost cancel is still our drain.
  if (ours.length > 0) actions.push({ type: 'cancelKill', instanceIds: ours.map((i) => i.id), reason: 'demand' });
  return new Set(ours.map((i) => i.id));
}

/** (e) launch the rest of the deficit within the cap, the token bucket, backoff, breakers and throttling. */
function launch(state: AutoscaleState, cfg: AutoscaleConfig, fleet: Fleet, health: NonNullable<Observation['provider']>, now: number, deficit: number, pending: number, actions: Action[], forMin: boolean): number {
  const { nMax } = instanceBounds(cfg, health.instanceQuota);
  const tokens =
    state.tokensAt === null ? cfg.launchBurst : Math.min(cfg.launchBurst, state.tokens + (Math.max(0, now - state.tokensAt) / 1000) * cfg.launchPerSecond);
  state.tokens = tokens;
  state.tokensAt = now;
  const blocked =
    cfg.disable ||
    !!health.capacityUnavailable ||
    (health.throttledUntil != null && health.throttledUntil > now) ||
    (state.launchBackoffUntil !== null && state.launchBackoffUntil > now);
  // The cap counts every instance not yet gone: a draining host still costs and holds its EIP.
  const n = blocked ? 0 : Math.min(deficit, nMax - (fleet.total + pending), Math.floor(tokens));
  if (n <= 0) return 0;
  const intent = newIntent(state, cfg, n, now);
  state.tokens = tokens - n;
  actions.push({ type: 'launch', intentId: intent.id, count: n, reason: forMin ? 'min' : 'scale_out' });
  return n;
}

/**
 * (h) terminate a KILL instance only when a later tick sees it idle (its KILL fence came
 * before this snapshot) and its drain was not just cancelled — manual drains too, even when
 * disabled. (d) terminate ADD instances past the boot deadline (left up when disabled).
 */
function terminations(state: AutoscaleState, cfg: AutoscaleConfig, fleet: Fleet, drainsBefore: Set<string>, cancelled: Set<string>, now: number, actions: Action[]): void {
  // The drain record stays until the instance leaves KILL, so a terminate that failed is retried.
  const drained = fleet.kill.filter((i) => i.runnersBusy === 0 && drainsBefore.has(i.id) && !cancelled.has(i.id));
  if (drained.length > 0) actions.push({ type: 'terminate', instanceIds: drained.map((i) => i.id), from: 'KILL', reason: 'drained' });
  const failed = fleet.addExpired.filter((i) => i.runnersBusy === 0).map((i) => i.id);
  const what = cfg.disable ? 'left up because autoscaling is disabled' : 'terminating';
  setAlert(state, actions, 'boot_deadline', failed.length > 0, `instance(s) ${failed.join(', ') || 'none'} did not connect within ${cfg.bootDeadlineMs / 1000} s: ${what}`);
  if (failed.length > 0 && !cfg.disable) actions.push({ type: 'terminate', instanceIds: failed, from: 'ADD', reason: 'boot_deadline' });
  const overdue = fleet.kill.filter((i) => i.runnersBusy > 0 && now - (state.drains[i.id]?.since ?? now) > cfg.drainAlertMs);
  setAlert(state, actions, 'drain_overdue', overdue.length > 0, `drain of ${overdue.map((i) => i.id).join(', ') || 'no instance'} has lasted over ${cfg.drainAlertMs / 1000} s`);
}

const ORDER: Record<Action['type'], number> = { alert: 0, cancelKill: 1, launch: 2, kill: 3, terminate: 4 };

/** Alerts, then cancelKill before launch (rule (i)), then kill, then terminate. Stable within a type. */
function orderActions(actions: Action[]): Action[] {
  return actions.map((a, i) => [a, i] as const).sort((p, q) => ORDER[p[0].type] - ORDER[q[0].type] || p[1] - q[1]).map(([a]) => a);
}
