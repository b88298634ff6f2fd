/**
 * The discrete-event simulator (autoscaler/README.md, "The simulator"): a virtual clock and
 * an event heap; tasks from a trace; a FIFO dispatcher that leases only to LIVE instances,
 * packing the oldest first (as the control plane's session order does); the fake cloud and
 * provider; and a leader loop that ticks, builds an Observation, calls a policy, persists its
 * state as JSON and applies the actions after a small lag — the way autoscaler/loop.ts does.
 *
 * The simulated loop does not add the safety fences the real loop has (it terminates even a
 * busy instance if told to), so busy-kills measure the policy itself.
 */
import { autoscaleConfig, type Action, type AutoscaleConfig, type ClusterLimits, type DecisionInfo, type InstanceType, type InstanceView, type LaunchResult, type Observation, type Tunables } from '../types.ts';
import { instanceBounds } from '../decide.ts';
import { EventQueue } from './heap.ts';
import { CLOUD_DEFAULTS, FakeCloud, SimProvider, type CloudInstance, type CloudOptions } from './cloud.ts';
import { quantile, reversals, type Direction, type SimMetrics } from './metrics.ts';
import { Rng } from './prng.ts';
import type { TaskSpec } from './traces.ts';

/** A policy under test: ours (decide) or a baseline. Its state must survive JSON. */
export interface Policy {
  readonly name: string;
  init(cfg: AutoscaleConfig): unknown;
  decide(obs: Observation, state: unknown, cfg: AutoscaleConfig, now: number): { state: unknown; actions: readonly Action[]; info?: DecisionInfo };
}

export interface SimScenario {
  readonly name: string;
  readonly title: string;
  readonly seed: number;
  readonly horizonMs: number;
  readonly cluster: Omit<ClusterLimits, 'clusterId'>;
  readonly tunables?: Partial<Tunables>;
  readonly cloud?: Partial<CloudOptions>;
  readonly trace: (rng: Rng) => TaskSpec[];
  /** Leader crashes after deciding at the first tick ≥ `at`; with `crashAfterLaunch` its launches reach the cloud but not the database. */
  readonly failovers?: readonly { readonly at: number; readonly gapMs: number; readonly crashAfterLaunch: boolean }[];
  readonly configChanges?: readonly { readonly at: number; readonly patch: Partial<Omit<ClusterLimits, 'clusterId'>> }[];
  /** The terminate API on the `count` busiest LIVE instances. */
  readonly manualTerminations?: readonly { readonly at: number; readonly count: number }[];
  readonly tickJitterMs?: number;
  readonly applyLagMs?: number;
  readonly reconcileEveryMs?: number;
}

export interface SeriesPoint {
  readonly t: number;
  readonly demand: number;
  readonly queued: number;
  /** Runner slots on LIVE instances. */
  readonly capacity: number;
  /** Runner slots still booting (ADD). */
  readonly coming: number;
}

export interface SimResult {
  readonly scenario: string;
  readonly policy: string;
  readonly metrics: SimMetrics;
  readonly series: SeriesPoint[];
  /** Start time of each task of the trace (NaN if it never started), for per-window waits. */
  readonly starts: Float64Array;
  /** Instances launched per pool (subnet). */
  readonly pools: Record<string, number>;
  /** Most instances (not yet terminated) at any moment. */
  readonly peakInstances: number;
}

/** The trace of a scenario: deterministic in its seed, the same for every policy. */
export function buildTrace(s: SimScenario): TaskSpec[] {
  return s.trace(new Rng(s.seed).fork('trace'));
}

interface Row {
  readonly id: string;
  readonly intentId: string | null;
  readonly cloud: CloudInstance;
  type: InstanceType;
  liveAt: number | null;
  killAt: number | null;
  manual: boolean;
  tasks: Set<number>;
  lastBusyAt: number | null;
  ranTask: boolean;
}

type Ev =
  | { k: 'arrive'; task: number }
  | { k: 'finish'; task: number; row: string; gen: number }
  | { k: 'connect'; id: string }
  | { k: 'notice'; id: string }
  | { k: 'reclaim'; id: string }
  | { k: 'tick' }
  | { k: 'apply'; actions: readonly Action[]; crash: boolean }
  | { k: 'reconcile' }
  | { k: 'config'; patch: Partial<Omit<ClusterLimits, 'clusterId'>> }
  | { k: 'manual'; count: number };

const IDLE_EPISODE_MS = 30 * 60_000;

class Sim {
  readonly q = new EventQueue<Ev>();
  readonly rows = new Map<string, Row>();
  readonly queue: number[] = [];
  qHead = 0;
  readonly start: Float64Array;
  readonly gen: Uint32Array;
  readonly cloud: FakeCloud;
  readonly provider: SimProvider;
  cfg: AutoscaleConfig;
  state: unknown;
  results: LaunchResult[] = [];
  resumed = false;
  downUntil = -Infinity;
  failoversDone = 0;
  connected = new Set<string>();
  // metrics
  lastT = 0;
  idleRunnerMs = 0;
  running = 0;
  inSystem = 0;
  idleFrom = -Infinity;
  firstPending: number | null = null;
  readonly ttfr: number[] = [];
  readonly dirs: { at: number; dir: Direction }[] = [];
  readonly counts = { launched: 0, kills: 0, cancels: 0, terminations: 0, wasted: 0, reclaimed: 0, busyKills: 0, capViolations: 0 };
  belowMinSince: number | null = null;
  peak = 0;
  readonly alerts = new Set<string>();
  readonly series: SeriesPoint[] = [];

  constructor(
    readonly s: SimScenario,
    readonly policy: Policy,
    readonly tasks: readonly TaskSpec[],
  ) {
    const rng = new Rng(s.seed);
    this.cloud = new FakeCloud({ ...CLOUD_DEFAULTS, ...s.cloud }, rng.fork('cloud'));
    this.provider = new SimProvider(this.cloud);
    this.cfg = autoscaleConfig({ clusterId: 'sim', ...s.cluster }, s.tunables);
    this.state = JSON.parse(JSON.stringify(policy.init(this.cfg)));
    this.start = new Float64Array(tasks.length).fill(NaN);
    this.gen = new Uint32Array(tasks.length);
    this.jitter = rng.fork('tick');
  }
  readonly jitter: Rng;

  run(): SimResult {
    this.tasks.forEach((t, i) => this.q.push(t.at, { k: 'arrive', task: i }));
    this.q.push(0, { k: 'tick' });
    this.q.push(this.s.reconcileEveryMs ?? 60_000, { k: 'reconcile' });
    for (const c of this.s.configChanges ?? []) this.q.push(c.at, { k: 'config', patch: c.patch });
    for (const m of this.s.manualTerminations ?? []) this.q.push(m.at, { k: 'manual', count: m.count });
    for (;;) {
      const e = this.q.pop();
      if (!e || e.at > this.s.horizonMs) break;
      this.account(e.at);
      this.handle(e.at, e.ev);
    }
    this.account(this.s.horizonMs);
    const pools: Record<string, number> = {};
    for (const ci of this.cloud.instances.values()) pools[ci.pool] = (pools[ci.pool] ?? 0) + 1;
    return { scenario: this.s.name, policy: this.policy.name, metrics: this.metrics(), series: this.series, starts: this.start, pools, peakInstances: this.peak };
  }

  /** Integrates idle runner time up to `now`: LIVE and KILL runners that hold no task. */
  account(now: number): void {
    const dt = now - this.lastT;
    if (dt > 0) {
      let idle = 0;
      for (const r of this.rows.values()) if ((r.type === 'LIVE' || r.type === 'KILL') && this.connected.has(r.id)) idle += this.cfg.runnersPerInstance - r.tasks.size;
      this.idleRunnerMs += idle * dt;
    }
    this.lastT = now;
  }

  handle(now: number, ev: Ev): void {
    switch (ev.k) {
      case 'arrive':
        if (this.inSystem === 0 && now - this.idleFrom >= IDLE_EPISODE_MS && this.firstPending === null) this.firstPending = now;
        this.inSystem++;
        this.queue.push(ev.task);
        this.dispatch(now);
        break;
      case 'finish':
        if (this.gen[ev.task] !== ev.gen) break; // interrupted earlier
        this.finish(now, ev.task, ev.row);
        break;
      case 'connect':
        this.connect(now, ev.id);
        break;
      case 'notice': {
        const r = this.rows.get(ev.id);
        // The provider drains a host on its spot notice, like the terminate API.
        if (r && r.type !== 'KILL') Object.assign(r, { type: 'KILL', killAt: now, manual: true });
        break;
      }
      case 'reclaim':
        this.endInstance(now, ev.id, 'reclaim');
        this.dispatch(now);
        break;
      case 'tick':
        this.tick(now);
        break;
      case 'apply':
        this.apply(now, ev.actions, ev.crash);
        break;
      case 'reconcile':
        this.reconcile(now);
        this.q.push(now + (this.s.reconcileEveryMs ?? 60_000), { k: 'reconcile' });
        break;
      case 'config':
        this.cfg = autoscaleConfig({ ...this.cfg, ...ev.patch }, this.cfg);
        break;
      case 'manual': {
        const live = [...this.rows.values()].filter((r) => r.type === 'LIVE').sort((a, b) => b.tasks.size - a.tasks.size || (a.id < b.id ? -1 : 1));
        for (const r of live.slice(0, ev.count)) Object.assign(r, { type: 'KILL', killAt: now, manual: true });
        break;
      }
    }
  }

  startTask(now: number, task: number, r: Row): void {
    this.start[task] = now;
    r.tasks.add(task);
    r.ranTask = true;
    this.running++;
    if (this.firstPending !== null) {
      this.ttfr.push(now - this.firstPending);
      this.firstPending = null;
    }
    this.q.push(now + this.tasks[task]!.durationMs, { k: 'finish', task, row: r.id, gen: this.gen[task]! });
  }

  finish(now: number, task: number, rowId: string): void {
    const r = this.rows.get(rowId);
    if (r) {
      r.tasks.delete(task);
      r.lastBusyAt = now;
    }
    this.running--;
    this.inSystem--;
    if (this.inSystem === 0) this.idleFrom = now;
    this.dispatch(now);
  }

  /** FIFO queue onto LIVE instances, oldest first (packing): surplus hosts go idle and can leave. */
  dispatch(now: number): void {
    if (this.qHead >= this.queue.length) return;
    const c = this.cfg.runnersPerInstance;
    const live = [...this.rows.values()].filter((r) => r.type === 'LIVE' && this.connected.has(r.id) && r.tasks.size < c);
    live.sort((a, b) => a.liveAt! - b.liveAt! || (a.id < b.id ? -1 : 1));
    for (const r of live) {
      while (r.tasks.size < c && this.qHead < this.queue.length) this.startTask(now, this.queue[this.qHead++]!, r);
      if (this.qHead >= this.queue.length) break;
    }
    if (this.qHead > 4096 && this.qHead * 2 > this.queue.length) {
      this.queue.splice(0, this.qHead);
      this.qHead = 0;
    }
  }

  /** Puts interrupted tasks back at the head of the queue (they would be retried). */
  requeue(tasks: Iterable<number>): number {
    let n = 0;
    const back: number[] = [];
    for (const t of tasks) {
      this.gen[t]!++;
      this.start[t] = NaN;
      this.running--;
      back.push(t);
      n++;
    }
    this.queue.splice(this.qHead, 0, ...back);
    return n;
  }

  connect(now: number, id: string): void {
    const ci = this.cloud.instances.get(id)!;
    if (ci.endAt !== null) return;
    this.connected.add(id);
    const r = this.rows.get(id);
    if (r && r.type === 'ADD') {
      r.type = 'LIVE';
      r.liveAt = now;
      this.dispatch(now);
    }
  }

  endInstance(now: number, id: string, why: 'terminate' | 'reclaim'): void {
    const r = this.rows.get(id);
    const ci = this.cloud.instances.get(id);
    if (!ci || ci.endAt !== null) return;
    if (why === 'terminate') this.cloud.terminate(now, id);
    else ci.endAt = now;
    this.connected.delete(id);
    if (r) {
      if (r.tasks.size > 0) {
        const n = this.requeue(r.tasks);
        if (why === 'terminate') this.counts.busyKills += n;
        else this.counts.reclaimed += n;
      }
      if (!r.ranTask && why === 'terminate') this.counts.wasted++;
      this.rows.delete(id);
    }
  }

  addRow(ci: CloudInstance, intentId: string | null): void {
    if (this.rows.has(ci.id) || ci.endAt !== null) return;
    const live = this.connected.has(ci.id);
    this.rows.set(ci.id, { id: ci.id, intentId, cloud: ci, type: live ? 'LIVE' : 'ADD', liveAt: live ? ci.launchedAt : null, killAt: null, manual: false, tasks: new Set(), lastBusyAt: null, ranTask: false });
  }

  observe(now: number): Observation {
    const c = this.cfg.runnersPerInstance;
    const instances: InstanceView[] = [];
    let busy = 0;
    for (const r of this.rows.values()) {
      busy += r.tasks.size;
      const up = (r.type === 'LIVE' || r.type === 'KILL') && this.connected.has(r.id);
      instances.push({ id: r.id, type: r.type, launchedAt: r.cloud.launchedAt, liveAt: r.liveAt, killAt: r.killAt, runnersTotal: up ? c : 0, runnersBusy: r.tasks.size, intentId: r.intentId, manualKill: r.manual, lastBusyAt: r.lastBusyAt });
    }
    const obs: Observation = { at: now, busy, queued: this.queue.length - this.qHead, instances, provider: this.provider.health(now), launchResults: this.results, resumed: this.resumed };
    this.results = [];
    this.resumed = false;
    return obs;
  }

  tick(now: number): void {
    const obs = this.observe(now);
    const d = this.policy.decide(obs, this.state, this.cfg, now);
    this.state = JSON.parse(JSON.stringify(d.state)); // persisted as jsonb, read back
    for (const a of d.actions) if (a.type === 'alert' && a.active) this.alerts.add(a.code);
    const fo = this.s.failovers?.[this.failoversDone];
    const crash = fo !== undefined && now >= fo.at;
    this.q.push(now + (this.s.applyLagMs ?? 500), { k: 'apply', actions: d.actions, crash });
    this.sample(now, obs);
    this.checkFloor(now, obs);
    let next = now + this.cfg.tickMs + (this.s.tickJitterMs ? (this.jitter.next() - 0.5) * 2 * this.s.tickJitterMs : 0);
    if (crash) {
      this.failoversDone++;
      next = now + fo.gapMs;
      this.resumed = true;
      this.results = [];
    }
    this.q.push(next, { k: 'tick' });
  }

  apply(now: number, actions: readonly Action[], crash: boolean): void {
    for (const a of actions) {
      if (crash && a.type !== 'launch' && a.type !== 'cancelKill') continue; // died after the launches
      if (a.type === 'launch') this.launch(now, a.intentId, a.count, a.reason, crash);
      else if (a.type === 'kill') {
        this.dirs.push({ at: now, dir: 'in' });
        for (const id of a.instanceIds) {
          const r = this.rows.get(id);
          if (r?.type !== 'LIVE') continue; // fence: LIVE → KILL only
          Object.assign(r, { type: 'KILL', killAt: now, manual: false });
          this.counts.kills++;
        }
      } else if (a.type === 'cancelKill') {
        this.dirs.push({ at: now, dir: 'out' });
        for (const id of a.instanceIds) {
          const r = this.rows.get(id);
          if (r?.type !== 'KILL' || r.manual) continue;
          const up = this.connected.has(id);
          Object.assign(r, { type: up ? 'LIVE' : 'ADD', killAt: null, liveAt: up ? (r.liveAt ?? now) : null });
          this.counts.cancels++;
        }
      } else if (a.type === 'terminate') {
        for (const id of a.instanceIds) {
          if (this.rows.get(id)?.type !== a.from) continue; // fence on type only, never on busy
          this.counts.terminations++;
          this.endInstance(now, id, 'terminate');
        }
      }
    }
    this.dispatch(now);
  }

  launch(now: number, intentId: string, count: number, reason: string, crash: boolean): void {
    const perPool = new Map<string, number>();
    for (const r of this.rows.values()) perPool.set(r.cloud.pool, (perPool.get(r.cloud.pool) ?? 0) + 1);
    const before = new Set(this.cloud.instances.keys());
    const out = this.provider.launch(now, intentId, count, perPool);
    const fresh = out.instances.filter((ci) => !before.has(ci.id));
    for (const ci of fresh) {
      if (ci.connectAt !== null) this.q.push(ci.connectAt, { k: 'connect', id: ci.id });
      if (ci.reclaimAt !== null) {
        this.q.push(Math.max(now, ci.reclaimAt - this.cloud.opts.reclaimNoticeMs), { k: 'notice', id: ci.id });
        this.q.push(ci.reclaimAt, { k: 'reclaim', id: ci.id });
      }
    }
    if (reason !== 'resume' && fresh.length > 0) this.dirs.push({ at: now, dir: 'out' });
    this.counts.launched += fresh.length;
    if (crash) return; // in the cloud, not in the database
    for (const ci of out.instances) this.addRow(ci, intentId);
    this.results.push({ intentId, launched: out.instances.length, failed: out.failed, reason: out.reason });
    const { nMax } = instanceBounds(this.cfg, null);
    const total = this.rows.size;
    this.peak = Math.max(this.peak, this.cloud.running());
    if (fresh.length > 0 && total > nMax) this.counts.capViolations++;
  }

  /** The provider's reconciler: cloud instances with our tag but no row are adopted. */
  reconcile(now: number): void {
    if (!this.cloud.describe(now)) return;
    for (const ci of this.cloud.instances.values()) {
      if (ci.endAt === null && !this.rows.has(ci.id) && now - ci.launchedAt > 60_000) this.addRow(ci, ci.token.split(':')[0] ?? null);
    }
  }

  /** Floor violations: fewer serving instances than runners_min needs for longer than a boot, with launches possible. */
  checkFloor(now: number, obs: Observation): void {
    const { nMin } = instanceBounds(this.cfg, obs.provider?.instanceQuota);
    const serving = obs.instances.filter((i) => i.type === 'LIVE' || (i.type === 'ADD' && now - i.launchedAt < this.cfg.bootDeadlineMs)).length;
    const h = obs.provider ?? {};
    const excused = this.cfg.disable || h.capacityUnavailable || h.instanceQuota != null || (h.throttledUntil ?? 0) > now || (h.unavailablePools?.length ?? 0) > 0;
    if (serving >= nMin || excused) {
      this.belowMinSince = null;
      return;
    }
    if (this.belowMinSince === null) this.belowMinSince = now;
    else if (now - this.belowMinSince > this.cfg.bootDeadlineMs + 2 * this.cfg.tickMs) {
      this.counts.capViolations++;
      this.belowMinSince = now; // one count per boot deadline of shortfall
    }
  }

  sample(now: number, obs: Observation): void {
    const c = this.cfg.runnersPerInstance;
    let capacity = 0;
    let coming = 0;
    for (const i of obs.instances) {
      if (i.type === 'LIVE') capacity += i.runnersTotal;
      else if (i.type === 'ADD') coming += c;
    }
    this.series.push({ t: now, demand: this.inSystem, queued: obs.queued ?? 0, capacity, coming });
  }

  metrics(): SimMetrics {
    const H = this.s.horizonMs;
    const waits: number[] = [];
    let unfinished = 0;
    this.tasks.forEach((t, i) => {
      if (t.at > H) return;
      const st = this.start[i]!;
      if (Number.isNaN(st)) unfinished++;
      waits.push(((Number.isNaN(st) ? H : st) - t.at) / 1000);
    });
    let billedMs = 0;
    for (const ci of this.cloud.instances.values()) billedMs += Math.max(60_000, (ci.endAt ?? H) - ci.launchedAt);
    let orphans = 0;
    for (const ci of this.cloud.instances.values()) if (ci.endAt === null && !this.rows.has(ci.id)) orphans++;
    const c = this.counts;
    return {
      tasks: waits.length,
      unfinished,
      waitP50: quantile(waits, 0.5),
      waitP95: quantile(waits, 0.95),
      waitP99: quantile(waits, 0.99),
      waitMax: quantile(waits, 1),
      firstRunnerFromIdle: this.ttfr.length ? this.ttfr.reduce((a, b) => a + b, 0) / this.ttfr.length / 1000 : NaN,
      idleRunnerHours: this.idleRunnerMs / 3_600_000,
      instanceHours: billedMs / 3_600_000,
      launched: c.launched,
      kills: c.kills,
      cancels: c.cancels,
      terminations: c.terminations,
      scaleActions: c.launched + c.kills + c.cancels,
      reversals: reversals(this.dirs),
      wastedBoots: c.wasted,
      reclaimedTasks: c.reclaimed,
      busyKills: c.busyKills,
      capViolations: c.capViolations,
      orphans,
      runCalls: this.cloud.calls.run,
      runThrottled: this.cloud.calls.runThrottled,
      describeCalls: this.cloud.calls.describe,
      describeThrottled: this.cloud.calls.describeThrottled,
      alerts: [...this.alerts].sort(),
    };
  }
}

/** Runs one scenario under one policy. Deterministic: same scenario and policy, same result. */
export function simulate(s: SimScenario, policy: Policy, trace: readonly TaskSpec[] = buildTrace(s)): SimResult {
  return new Sim(s, policy, trace).run();
}
