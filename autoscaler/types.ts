/**
 * Types the autoscaler owns: the clusters it scales and their EC2 settings, and the types of
 * the pure autoscaling policy (`decide.ts`): what the leader loop observes, what it persists
 * between ticks, and what it is told to do. Design: the rules (a)–(l) in autoscaler/README.md.
 * The control plane stores these (clusters, `cluster_instances`, `autoscaler_state`) and
 * imports them from here.
 *
 * Every time in the policy's types is a number of milliseconds since the epoch, so that the
 * state is plain JSON (the loop stores it as jsonb) and the simulator can run on a virtual clock.
 */
import { ConfigError } from '../lib/errors.ts';

/** Instance life cycle, as the IronWorker cluster stats name it. */
export type InstanceType = 'ADD' | 'LIVE' | 'KILL' | 'TERMINATE';

/** One `autoscale.aws.block_device_mappings` entry (snake_case, like the reference). */
export interface BlockDeviceMapping {
  device_name: string;
  no_device?: string;
  virtual_name?: string;
  ebs?: {
    snapshot_id?: string;
    iops?: number;
    encrypted?: boolean;
    delete_on_termination?: boolean;
    volume_size?: number;
    volume_type?: string;
  };
}

/**
 * A cluster's `autoscale.aws` without its secrets, as the Clusters API takes it and the
 * control plane stores it (snake_case, like the reference). The access keys are kept apart,
 * sealed (`ClusterSecrets` in ports.ts).
 */
export interface AwsSettings {
  region: string;
  instance_type: string;
  image_id?: string;
  tags?: Record<string, string>;
  key_name?: string;
  subnet_ids?: string[];
  availability_zones?: string[];
  security_groups?: string[];
  security_group_ids?: string[];
  iam_instance_profile?: { name?: string; arn?: string };
  block_device_mappings?: BlockDeviceMapping[];
  /** Elastic IPs: allocation ids (`eipalloc-…`) or public addresses. Caps the fleet at their number. */
  eips?: string[];
}

/**
 * Most user tags on a cluster's instances (`autoscale.aws.tags`). EC2 allows 50 per resource
 * and the autoscaler adds its 3 ownership tags; 40 is the Clusters API's limit, checked there,
 * again on the merged settings, and by the ec2 provider.
 */
export const MAX_USER_TAGS = 40;

/** A cluster the autoscaler looks after (a provider is set), deleted ones included while they have instances. */
export interface ScaledCluster {
  id: string;
  name: string;
  provider: 'ec2' | 'local';
  memoryMb: number;
  runnersMin: number;
  runnersMax: number;
  runnersPerInstance: number;
  disable: boolean;
  aws: AwsSettings | null;
  /** The cluster's own user data template (cloud-config/render.ts); null: the default. */
  userData: string | null;
  deletedAt: Date | null;
  /** Changes with every settings change: providers and back-offs are rebuilt when it does. */
  updatedAt: Date;
}

/** One row of `cluster_instances` as the policy needs it. */
export interface InstanceView {
  /** Provider instance id (EC2 `i-…`, or the local provider's id). */
  readonly id: string;
  /** ADD booting, LIVE runners connected, KILL draining, TERMINATE gone (ignored except for intents). */
  readonly type: InstanceType;
  /** When the provider launched it (billing and boot deadline start here). */
  readonly launchedAt: number;
  /** When its runner first connected (ADD → LIVE); null while ADD. */
  readonly liveAt: number | null;
  /** When it was marked KILL; null unless KILL. */
  readonly killAt: number | null;
  /** Runner slots connected on it now (0 while ADD or when its runner is disconnected). */
  readonly runnersTotal: number;
  /** Slots holding a running lease now. Must be read in the same snapshot as `type`. */
  readonly runnersBusy: number;
  /** The launch intent that created it (column / ownership tag); null when adopted or unknown. */
  readonly intentId?: string | null;
  /**
   * True when someone other than the policy set KILL (the terminate API, an operator).
   * Manual drains are never cancelled by the policy and proceed even when `disable` is set.
   * When absent, a KILL the policy did not order itself is treated as manual.
   */
  readonly manualKill?: boolean;
  /**
   * The end time of the last task that ran on it, when the loop knows it (max of the ended
   * leases of its runners). Catches tasks that start and finish between two ticks, which a
   * per-tick busy count cannot see. Optional: without it idleness is measured between ticks.
   */
  readonly lastBusyAt?: number | null;
  /** Its runner is disconnected or failing health checks: not counted as supply, first victim. */
  readonly unhealthy?: boolean;
}

/** What the provider knows about the cloud's ability to take launches (its breakers and quota). */
export interface ProviderHealth {
  /** Every (subnet, instance type) breaker is open: no launch can succeed now, so none is asked. */
  readonly capacityUnavailable?: boolean;
  /** The pools whose breaker is open (informational, shown in alerts); launches go to the others. */
  readonly unavailablePools?: readonly string[];
  /**
   * The most instances (ADD + LIVE + KILL) this cluster may have, set after an
   * InstanceLimitExceeded / VcpuLimitExceeded error; null or absent when no quota is known.
   */
  readonly instanceQuota?: number | null;
  /** The cloud throttled mutating calls: ask for no launch before this time. */
  readonly throttledUntil?: number | null;
}

/** What happened to one executed `launch` action, reported on the next tick. */
export interface LaunchResult {
  readonly intentId: string;
  /** Instances that now exist (their rows are in `instances`, type ADD, with this intentId). */
  readonly launched: number;
  /** Instances that could not be launched. */
  readonly failed: number;
  readonly reason?: 'capacity' | 'quota' | 'throttled' | 'error' | null;
}

/** One tick's view of a cluster, built by the loop from PostgreSQL and the provider. */
export interface Observation {
  /** When the snapshot was read. Older than `staleAfterMs` at decision time → hold. */
  readonly at: number;
  /**
   * Running leases of the cluster (on every instance, including KILL ones; the policy
   * subtracts those itself). null when it could not be read: never treated as zero.
   */
  readonly busy: number | null;
  /** Eligible queued tasks of the cluster (not delayed, not paused). null when unknown. */
  readonly queued: number | null;
  /** Every instance row not yet TERMINATE (TERMINATE rows may be included; they are ignored). */
  readonly instances: readonly InstanceView[];
  readonly provider?: ProviderHealth;
  /** Results of the launch actions executed since the previous tick. */
  readonly launchResults?: readonly LaunchResult[];
  /**
   * True on the first tick after this process became leader: launch intents still open in
   * the persisted state are issued again (same intent id, same count) so a launch interrupted
   * by a failover completes, idempotently, instead of being lost or doubled.
   */
  readonly resumed?: boolean;
}

/** The cluster's own settings (Clusters API), already resolved by the loop. */
export interface ClusterLimits {
  /** Cluster id: prefixes launch intent ids so that ClientTokens never collide across clusters. */
  readonly clusterId: string;
  /** Runner slots per instance (`runners_per_instance`, with 0 resolved from memory). ≥ 1. */
  readonly runnersPerInstance: number;
  /** `runners_min`: keep at least ceil(min / c) instances. 0 = may scale to zero. */
  readonly runnersMin: number;
  /** `runners_max`: add no instance beyond ceil(max / c) (overshoot < one instance). 0 = none. */
  readonly runnersMax: number;
  /** `autoscale.aws.eips`: when non-empty, at most this many instances (one address each). */
  readonly eips: readonly string[];
  /** `disable`: no autonomous launch or drain; outstanding and manual transitions complete. */
  readonly disable: boolean;
}

/** Tunables with defaults (`AUTOSCALE_DEFAULTS`); the loop may override, tests shorten them. */
export interface Tunables {
  /** Expected loop period. Only used to judge staleness and pace the panic counter. */
  readonly tickMs: number;
  /** Time constant of the fast EWMA that drives scale-out. */
  readonly tauUpMs: number;
  /** Time constant of the slow EWMA that drives scale-in. */
  readonly tauDownMs: number;
  /** Consecutive ticks with queued work and no free runner before the panic path opens. */
  readonly panicTicks: number;
  /** Idle runners to keep on top of demand (GitLab `idle_count`). */
  readonly headroomRunners: number;
  /** An ADD instance older than this has failed to boot: it stops counting and is terminated. */
  readonly bootDeadlineMs: number;
  /** An instance must have had no busy runner for this long to be a scale-in victim. */
  readonly idleBeforeKillMs: number;
  /** Scale-in uses the highest scale-in target of this trailing window (HPA stabilization). */
  readonly stabilizationMs: number;
  /** No scale-in this soon after a scale-out (or an out-of-band change such as a manual KILL). */
  readonly scaleInAfterScaleOutMs: number;
  /** Instances younger than this (since launch) are never victims. */
  readonly minInstanceAgeMs: number;
  /** At most max(1, floor(LIVE × this)) instances are marked KILL per tick. */
  readonly stepDownFraction: number;
  /** Launch token bucket: burst (instances). */
  readonly launchBurst: number;
  /** Launch token bucket: refill (instances per second). */
  readonly launchPerSecond: number;
  /** After a launch that failed in part, wait this long (doubling per failure) before the next. */
  readonly launchBackoffMs: number;
  readonly launchBackoffMaxMs: number;
  /** Observations older than this at decision time are stale: hold. */
  readonly staleAfterMs: number;
  /** Raise `drain_overdue` when a busy KILL instance has drained this long (never forced). */
  readonly drainAlertMs: number;
}

export type AutoscaleConfig = ClusterLimits & Tunables;

/**
 * Defaults and why: starting values taken from other autoscalers, then tuned with the
 * simulator (autoscaler/README.md, "Parameters" and "Tuning", has the runs behind them).
 */
export const AUTOSCALE_DEFAULTS: Readonly<Tunables> = Object.freeze({
  tickMs: 10_000, // Buildkite and Nomad poll every 10 s
  tauUpMs: 30_000, // 63 % of a step in 30 s; the panic path covers bursts
  tauDownMs: 120_000, // 4 × τ_up; longer only lengthens the tail after a burst (README: tuning)
  panicTicks: 2, // Knative-style panic: queued work and no free runner for two ticks
  headroomRunners: 0, // Iron semantics: runners_min is the warm buffer
  bootDeadlineMs: 600_000, // Buildkite's dangling-instance check; Flatcar boots in 1–2 min
  idleBeforeKillMs: 300_000, // half of Buildkite's 600 s: with the window and min age it is enough (README: tuning)
  stabilizationMs: 300_000, // HPA's scale-down window
  scaleInAfterScaleOutMs: 120_000, // ≈ τ_down: no scale-in right after a scale-out
  minInstanceAgeMs: 600_000, // never kill a just-booted host (one scale-down killed a runner still in its ~5-min boot)
  stepDownFraction: 0.5, // Knative max-scale-down-rate 2: at most halve per tick
  launchBurst: 100, // GitLab scale_throttle burst
  launchPerSecond: 1, // GitLab-style refill; EC2 RunInstances allows ~2 calls/s
  launchBackoffMs: 30_000,
  launchBackoffMaxMs: 600_000,
  staleAfterMs: 20_000, // two ticks (rule (l))
  drainAlertMs: 3_600_000, // IronWorker's default task timeout: a drain longer than that is stuck
});

function positiveInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`${name} must be an integer ≥ ${min}, got ${v}`);
  return v;
}

/**
 * Builds a frozen, validated config from a cluster's settings and optional tunable overrides.
 * Errors name the field and its limit.
 */
export function autoscaleConfig(cluster: ClusterLimits, overrides: Partial<Tunables> = {}): Readonly<AutoscaleConfig> {
  if (typeof cluster.clusterId !== 'string' || cluster.clusterId.length === 0 || cluster.clusterId.length > 32) {
    throw new ConfigError(`clusterId must be 1–32 characters (it prefixes EC2 ClientTokens of at most 64)`);
  }
  positiveInt('runnersPerInstance', cluster.runnersPerInstance, 1);
  positiveInt('runnersMin', cluster.runnersMin, 0);
  positiveInt('runnersMax', cluster.runnersMax, 0);
  const cfg: AutoscaleConfig = { ...AUTOSCALE_DEFAULTS, ...overrides, ...cluster, eips: [...cluster.eips] };
  for (const k of Object.keys(AUTOSCALE_DEFAULTS) as (keyof Tunables)[]) {
    const v = cfg[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ConfigError(`${k} must be a finite number ≥ 0, got ${v}`);
  }
  positiveInt('panicTicks', cfg.panicTicks, 1);
  if (cfg.tauUpMs <= 0 || cfg.tauDownMs <= 0) throw new ConfigError('tauUpMs and tauDownMs must be > 0');
  if (cfg.tauUpMs > cfg.tauDownMs) throw new ConfigError(`tauUpMs (${cfg.tauUpMs}) must not exceed tauDownMs (${cfg.tauDownMs}): scale-out must react faster than scale-in`);
  if (cfg.stepDownFraction > 1) throw new ConfigError(`stepDownFraction must be ≤ 1, got ${cfg.stepDownFraction}`);
  if (cfg.launchBurst < 1) throw new ConfigError(`launchBurst must be ≥ 1, got ${cfg.launchBurst}`);
  return Object.freeze(cfg);
}

/** A launch the policy asked for, kept in the state until the instances show up or it expires. */
export interface LaunchIntent {
  /** Stable id: the provider derives its EC2 ClientTokens from it (plus slot index / subnet / attempt). */
  readonly id: string;
  readonly count: number;
  readonly createdAt: number;
}

/** A drain the policy knows about. */
export interface DrainRecord {
  /** When KILL was ordered (by the policy) or first seen (manual). */
  readonly since: number;
  /** Set by someone other than the policy: never cancelled. */
  readonly manual: boolean;
}

/**
 * Everything the policy remembers between ticks. Plain JSON: persist it whole (jsonb) after
 * every decide() and before executing its actions, so a new leader resumes rather than resets
 * (rule (k)): EWMAs and their time, cooldown times, the stabilization window, launch intents,
 * drain starts, per-instance idle starts, the launch token bucket, the backoff and alerts.
 */
export interface AutoscaleState {
  readonly v: 1;
  /** `at` of the last observation used; a repeat of it changes nothing (idempotence). */
  lastObservedAt: number | null;
  /** Fast EWMA of demand (busy + queued); shown as `ewma` in cluster stats. */
  eUp: number | null;
  /** Slow EWMA of demand, for scale-in. */
  eDown: number | null;
  /** Consecutive fresh ticks with queued work and no free runner. */
  panicCount: number;
  lastScaleOutAt: number | null;
  lastScaleInAt: number | null;
  /** Last out-of-band change (a KILL the policy did not order): starts a scale-in cooldown. */
  lastOutOfBandAt: number | null;
  /** Stabilization window: since when samples are contiguous, and a max-deque of [at, target]. */
  downSince: number | null;
  downPeaks: [number, number][];
  intents: LaunchIntent[];
  nextIntentSeq: number;
  drains: Record<string, DrainRecord>;
  /** Per LIVE/KILL instance with no busy runner: since when it has been idle. */
  idleSince: Record<string, number>;
  tokens: number;
  tokensAt: number | null;
  launchFailures: number;
  launchBackoffUntil: number | null;
  /** Alert codes currently raised (an alert action is emitted only when one changes). */
  alerts: string[];
}

/** The state of a cluster the policy has never seen. */
export function initialState(): AutoscaleState {
  return {
    v: 1,
    lastObservedAt: null,
    eUp: null,
    eDown: null,
    panicCount: 0,
    lastScaleOutAt: null,
    lastScaleInAt: null,
    lastOutOfBandAt: null,
    downSince: null,
    downPeaks: [],
    intents: [],
    nextIntentSeq: 0,
    drains: {},
    idleSince: {},
    tokens: AUTOSCALE_DEFAULTS.launchBurst,
    tokensAt: null,
    launchFailures: 0,
    launchBackoffUntil: null,
    alerts: [],
  };
}

export type AlertCode =
  | 'stale_metrics'
  | 'capacity_unavailable'
  | 'quota_capped'
  | 'boot_deadline'
  | 'drain_overdue'
  | 'launch_failing';

/**
 * What the loop must do, in the order given (decide emits cancelKill before launch, and
 * terminations last). Each action names the instances it is for; the loop fences every
 * transition on the instance's current type (see autoscaler/README.md "Applying actions").
 */
export type Action =
  /** Ask the provider for `count` instances; idempotent per `intentId` (EC2 ClientToken). */
  | { readonly type: 'launch'; readonly intentId: string; readonly count: number; readonly reason: 'scale_out' | 'min' | 'resume' }
  /** Mark LIVE instances KILL (drain): the dispatcher stops leasing to their runners. */
  | { readonly type: 'kill'; readonly instanceIds: readonly string[]; readonly reason: 'scale_in' }
  /** Flip KILL instances back to LIVE: demand returned before they finished draining. */
  | { readonly type: 'cancelKill'; readonly instanceIds: readonly string[]; readonly reason: 'demand' }
  /**
   * Terminate at the provider and mark TERMINATE. `from` is the type the instance must still
   * have (fence): KILL ones were seen idle after the KILL fence; ADD ones missed the boot deadline.
   */
  | { readonly type: 'terminate'; readonly instanceIds: readonly string[]; readonly from: 'KILL' | 'ADD'; readonly reason: 'drained' | 'boot_deadline' }
  /** Raise (active) or clear an operator alert; emitted only on a change. */
  | { readonly type: 'alert'; readonly code: AlertCode; readonly active: boolean; readonly message: string };

/** Figures behind a decision, for logs, cluster stats and the simulator's charts. */
export interface DecisionInfo {
  /** Why nothing was decided: stale or missing metrics, or an observation already decided on. */
  readonly hold: 'stale' | 'repeat' | null;
  readonly demand: number;
  readonly eUp: number;
  readonly eDown: number;
  readonly panic: boolean;
  /** Instances wanted by the scale-out path (clamped to the floor and caps). */
  readonly desiredUp: number;
  /** Instances the scale-in path would keep (stabilized); scale-in happens below supply only. */
  readonly desiredDown: number;
  /** LIVE (healthy) + ADD within deadline + instances of open intents. */
  readonly supply: number;
  readonly nMin: number;
  /** Instance cap (Infinity when none). */
  readonly nMax: number;
}

export interface Decision {
  readonly state: AutoscaleState;
  readonly actions: readonly Action[];
  readonly info: DecisionInfo;
}
