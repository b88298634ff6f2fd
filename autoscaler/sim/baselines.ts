/**
 * The policies we compare against (autoscaler/README.md, "The simulator"): a fixed fleet
 * sized for the mean demand, and a reactive policy without EWMA or stabilization. Both are
 * safe in the same ways as ours (victims idle, KILL before terminate, caps respected), so the
 * comparison is about scaling, not about bugs.
 */
import { initialState, type Action, type AutoscaleConfig, type AutoscaleState, type InstanceView, type Observation } from '../types.ts';
import { decide, instanceBounds, instancesFor } from '../decide.ts';
import type { Policy } from './engine.ts';

interface BaselineState {
  seq: number;
  /** KILL instances already seen (terminate only on a later tick, after the KILL fence). */
  killSeen: string[];
}

function serving(obs: Observation, cfg: AutoscaleConfig, now: number): InstanceView[] {
  return obs.instances.filter((i) => i.type === 'LIVE' || (i.type === 'ADD' && now - i.launchedAt < cfg.bootDeadlineMs));
}

/** Common housekeeping: terminate idle KILL seen before, and ADD past the boot deadline. */
function housekeeping(obs: Observation, st: BaselineState, cfg: AutoscaleConfig, now: number, actions: Action[]): BaselineState {
  const kills = obs.instances.filter((i) => i.type === 'KILL');
  const drained = kills.filter((i) => i.runnersBusy === 0 && st.killSeen.includes(i.id)).map((i) => i.id);
  if (drained.length) actions.push({ type: 'terminate', instanceIds: drained, from: 'KILL', reason: 'drained' });
  const failed = obs.instances.filter((i) => i.type === 'ADD' && now - i.launchedAt >= cfg.bootDeadlineMs).map((i) => i.id);
  if (failed.length) actions.push({ type: 'terminate', instanceIds: failed, from: 'ADD', reason: 'boot_deadline' });
  return { ...st, killSeen: kills.map((i) => i.id) };
}

function launchUpTo(obs: Observation, st: BaselineState, cfg: AutoscaleConfig, now: number, want: number, actions: Action[]): BaselineState {
  const h = obs.provider ?? {};
  if (h.capacityUnavailable || (h.throttledUntil ?? 0) > now) return st;
  const { nMax } = instanceBounds(cfg, h.instanceQuota);
  const total = obs.instances.filter((i) => i.type !== 'TERMINATE').length;
  const n = Math.min(want, nMax - total);
  if (n <= 0) return st;
  actions.push({ type: 'launch', intentId: `${cfg.clusterId}-b${st.seq.toString(36)}`, count: n, reason: 'scale_out' });
  return { ...st, seq: st.seq + 1 };
}

/** Baseline 1: `n` instances from the start, replaced when lost, never scaled in. */
export function fixedPolicy(n: number): Policy {
  return {
    name: `fixed(${n})`,
    init: (): BaselineState => ({ seq: 0, killSeen: [] }),
    decide(obs, state, cfg, now) {
      const actions: Action[] = [];
      let st = housekeeping(obs, state as BaselineState, cfg, now, actions);
      st = launchUpTo(obs, st, cfg, now, n - serving(obs, cfg, now).length, actions);
      return { state: st, actions };
    },
  };
}

/** Instances a fixed fleet needs for a mean demand of `meanRunners`. */
export function fixedSize(meanRunners: number, c: number): number {
  return Math.max(1, instancesFor(meanRunners, c));
}

/** Baseline 2: desired = ceil((busy + queued) / c) every tick, no smoothing, no window, no idle time. */
export const reactivePolicy: Policy = {
  name: 'reactive',
  init: (): BaselineState => ({ seq: 0, killSeen: [] }),
  decide(obs, state, cfg, now) {
    const actions: Action[] = [];
    let st = housekeeping(obs, state as BaselineState, cfg, now, actions);
    const busyOnKill = obs.instances.filter((i) => i.type === 'KILL').reduce((s, i) => s + i.runnersBusy, 0);
    const x = Math.max(0, (obs.busy ?? 0) - busyOnKill) + (obs.queued ?? 0);
    const { nMin, nMax } = instanceBounds(cfg, obs.provider?.instanceQuota);
    const desired = Math.min(Math.max(instancesFor(x, cfg.runnersPerInstance), nMin), nMax);
    const have = serving(obs, cfg, now);
    if (desired > have.length) st = launchUpTo(obs, st, cfg, now, desired - have.length, actions);
    else if (desired < have.length) {
      const idle = have.filter((i) => i.type === 'LIVE' && i.runnersBusy === 0).sort((a, b) => b.launchedAt - a.launchedAt);
      const victims = idle.slice(0, have.length - desired).map((i) => i.id);
      if (victims.length) actions.push({ type: 'kill', instanceIds: victims, reason: 'scale_in' });
    }
    return { state: st, actions };
  },
};

/** Our policy, as the simulator runs it. */
export const ewmaPolicy: Policy = {
  name: 'ewma (ours)',
  init: (): AutoscaleState => initialState(),
  decide: (obs, state, cfg, now) => decide(obs, state as AutoscaleState, cfg, now),
};
