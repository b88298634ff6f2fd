/**
 * The provider interface the autoscaler's leader loop drives: `ec2` (EC2 through
 * @aws-sdk/client-ec2) and `local` (runner processes on this host). A provider launches,
 * lists and terminates the instances of one or more clusters and reports what it knows about
 * the cloud's ability to take launches (breakers, quota, throttling). It decides nothing:
 * how many instances to have is `decide()`'s job, and what to do about cloud drift is
 * `reconcile()`'s (providers/reconcile.ts).
 *
 * Contract every implementation keeps:
 * - `launch` is idempotent per `intentId`: calling it again with the same spec (in this
 *   process or in a new leader's) never creates a second set of instances for the intent.
 * - `terminate` only ever terminates instances that carry this cluster's ownership tag.
 * - Errors leave the provider as the typed errors below, translated once at its edge; a raw
 *   SDK or system error never escapes. No error message or log line carries a secret.
 */
import { GantryError } from '../../lib/errors.ts';

/** EC2's instance states (the local provider maps its processes onto them). */
export type InstanceState = 'pending' | 'running' | 'shutting-down' | 'terminated' | 'stopping' | 'stopped';

/** States in which an instance exists and costs money (it may still run a runner). */
export const ALIVE_STATES: ReadonlySet<InstanceState> = new Set(['pending', 'running', 'stopping', 'stopped']);

/** Ownership tags, set atomically at launch (EC2 TagSpecifications) and never changed. */
export const TAG_CLUSTER = 'gantry:cluster-id';
export const TAG_MANAGED = 'gantry:managed';
export const TAG_INTENT = 'gantry:intent-id';

/** One instance as the provider sees it in the cloud. */
export interface ProviderInstance {
  instanceId: string;
  state: InstanceState;
  launchedAt: Date;
  subnetId?: string;
  availabilityZone?: string;
  instanceType?: string;
  privateIp?: string;
  publicIp?: string;
  /** Every tag, ours included (`gantry:cluster-id`, `gantry:managed`, `gantry:intent-id`). */
  tags: Record<string, string>;
  /** The launch intent it came from: the `gantry:intent-id` tag. */
  intentId?: string;
  /** The ClientToken of the RunInstances call that made it (EC2 only). */
  clientToken?: string;
}

/** What `launch` is asked to do. */
export interface LaunchSpec {
  clusterId: string;
  /** The persisted launch intent; EC2 ClientTokens are derived from it. Printable ASCII. */
  intentId: string;
  /** Instances wanted, ≥ 1. */
  count: number;
  /** Rendered user data, not yet base64 (EC2 limit: 16 KB). */
  userData: string;
  /**
   * True when this intent may already have been sent by another process (a leader that
   * failed over). The provider then first looks for instances tagged with the intent and,
   * if it finds any, returns them instead of launching: the intent is settled.
   */
  resumed?: boolean;
}

/** Why a launch produced fewer instances than asked, in the policy's vocabulary. */
export type ShortfallReason = 'capacity' | 'quota' | 'throttled' | 'error';

/**
 * The result of a launch that produced at least one instance. `launch` throws (one of the
 * errors below) only when it produced none.
 */
export interface LaunchOutcome {
  /** The instances of this intent: launched now, or found launched by an earlier attempt. */
  instances: ProviderInstance[];
  /** Present when fewer than `spec.count` exist; `error` says why. */
  shortfall?: { count: number; reason: ShortfallReason; error: ProviderError };
}

/** A listing of one cluster's tagged instances and when it was taken (it may be cached). */
export interface Listing {
  instances: ProviderInstance[];
  /**
   * When the cloud was asked. An instance launched after this cannot be in the listing; the
   * reconciler never calls such an instance gone (EC2 describes are eventually consistent).
   */
  asOf: Date;
}

/** One open circuit breaker: launches into this pool are not attempted until `openUntil`. */
export interface BreakerState {
  /** `<subnet or zone or *>/<instance type>`. */
  pool: string;
  /** Consecutive capacity failures; the cool-off doubles with each. */
  failures: number;
  openUntil: number;
  /** The cloud's error code that tripped it (e.g. InsufficientInstanceCapacity). */
  code: string;
}

/** An account quota hit: the fleet is capped at `cap` instances until `recheckAt`. */
export interface QuotaState {
  code: string;
  cap: number;
  since: number;
  /** After this a single launch is allowed to probe whether the quota was raised. */
  recheckAt: number;
  message: string;
}

/** A condition a person should look at; shown in cluster stats and logged at `error`. */
export interface ProviderAlert {
  code: 'quota_exceeded' | 'capacity_unavailable' | 'throttled' | 'eip_unavailable';
  message: string;
}

/**
 * What the provider knows about the cloud's ability to take launches. The first four fields
 * have the shape and units of `ProviderHealth` in autoscaler/types.ts (times in ms since the
 * epoch), so `health()` can be handed to `decide()` as `observation.provider` unchanged.
 */
export interface ProviderHealth {
  /** Every pool for the configured instance type has an open breaker. */
  capacityUnavailable: boolean;
  /** Pools with an open breaker. */
  unavailablePools: string[];
  /** The most instances (ADD + LIVE + KILL) the cluster may have while a quota error holds. */
  instanceQuota: number | null;
  /** Calls were throttled: the provider makes none (of the throttled kind) before this. */
  throttledUntil: number | null;
  breakers: BreakerState[];
  quota: QuotaState | null;
  alerts: ProviderAlert[];
}

/** The provider interface; see the module comment for the contract. */
export interface Provider {
  readonly kind: 'ec2' | 'local';
  launch(spec: LaunchSpec): Promise<LaunchOutcome>;
  /**
   * Terminates those of `instanceIds` that carry this cluster's ownership tag and returns the
   * ids now shutting down or terminated. Ids it refuses (not ours, unknown) are left out.
   */
  terminate(clusterId: string, instanceIds: readonly string[]): Promise<string[]>;
  /** The cluster's tagged instances (terminated ones included while the cloud still shows them). */
  list(clusterId: string): Promise<Listing>;
  health(): ProviderHealth;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Errors. Foreign errors (AWS SDK, network, child processes) are translated into these in one
// place per provider.

/** Base of every provider error: `code` is the cloud's own code when there is one. */
export class ProviderError extends GantryError {
  /** The cloud's error code (e.g. `InvalidAMIID.NotFound`), or ours for non-cloud failures. */
  readonly cloudCode: string;
  constructor(cloudCode: string, message: string, opts: { cause?: unknown; retryable?: boolean; code?: string } = {}) {
    super(opts.code ?? 'provider_error', message, { cause: opts.cause, retryable: opts.retryable ?? false });
    this.cloudCode = cloudCode;
  }
}

/** No capacity for the instance type in any pool we may use; breakers hold until `retryAt`. */
export class CapacityError extends ProviderError {
  readonly retryAt: number | null;
  constructor(cloudCode: string, message: string, opts: { cause?: unknown; retryAt?: number | null } = {}) {
    super(cloudCode, message, { cause: opts.cause, retryable: true, code: 'provider_capacity' });
    this.retryAt = opts.retryAt ?? null;
  }
}

/** An account quota (instances, vCPUs) or the cluster's `eips` stops further launches. */
export class QuotaError extends ProviderError {
  /** The instance count the cluster is capped at. */
  readonly cap: number;
  constructor(cloudCode: string, message: string, opts: { cause?: unknown; cap: number }) {
    super(cloudCode, message, { cause: opts.cause, retryable: false, code: 'provider_quota' });
    this.cap = opts.cap;
  }
}

/** The cloud (or our own describe budget) throttled the call; nothing is sent before `retryAt`. */
export class ThrottledError extends ProviderError {
  readonly retryAt: number;
  constructor(cloudCode: string, message: string, opts: { cause?: unknown; retryAt: number }) {
    super(cloudCode, message, { cause: opts.cause, retryable: true, code: 'provider_throttled' });
    this.retryAt = opts.retryAt;
  }
}

/** The reason word `decide()` uses for an error. */
export function shortfallReason(err: ProviderError): ShortfallReason {
  if (err instanceof CapacityError) return 'capacity';
  if (err instanceof QuotaError) return 'quota';
  if (err instanceof ThrottledError) return 'throttled';
  return 'error';
}
