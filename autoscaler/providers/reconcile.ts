/**
 * The reconciler: compares what Gantry has recorded for a cluster with what the provider
 * lists by ownership tag, and says what to do about every difference. Instances go astray
 * through crashes between launch and record, lost replies, agents that never connect, spot
 * reclaims and console terminations; a sweep by the immutable ownership tag plus a boot
 * deadline (like Buildkite's dangling-instance scan) catches them. Pure: no I/O, no
 * clock; the leader loop applies the actions and calls it again next tick, so every action
 * must be safe to repeat.
 *
 * Rules, per instance:
 * - In the cloud with our tag, alive, not recorded:
 *   - its launch intent is one the caller still knows → `adopt` (a launch whose reply or
 *     record was lost; matched by the `gantry:intent-id` tag, else by its ClientToken);
 *   - otherwise, once older than the grace period → `terminate` as an orphan. (The caller
 *     records an instance as soon as its runner connects, so an unrecorded instance has no
 *     connected runner and nothing is interrupted.)
 * - Recorded ADD/LIVE/KILL, but terminated or shutting down in the cloud, or missing from a
 *   listing taken well after its launch → `gone` (spot reclaim, console termination).
 * - Recorded ADD/LIVE/KILL, stopped or stopping in the cloud → `terminate` and `gone`: a
 *   stopped instance runs no runner and still bills its volumes.
 * - Recorded ADD past its boot deadline, still alive → `fail` and `terminate` (its runner never
 *   connected; rule (d) in autoscaler/README.md).
 * - Recorded TERMINATE but alive in the cloud → `terminate` again (the call was lost).
 * KILL past a drain deadline is not here: it depends on busy runners, which is decide()'s.
 *
 * "Missing" needs care: EC2 describes are eventually consistent and a listing may be cached,
 * so an instance is only called gone when it was launched more than `graceMs` before the
 * listing's `asOf`.
 */
import type { InstanceType } from '../types.ts';
import { ALIVE_STATES, TAG_CLUSTER, type InstanceState, type Listing, type ProviderInstance } from './types.ts';

/** An instance row as Gantry recorded it. */
export interface RecordedInstance {
  instanceId: string;
  type: InstanceType;
  launchedAt: Date;
  /** When an ADD instance counts as failed if its runner has not connected; null: none. */
  bootDeadline: Date | null;
  intentId: string | null;
}

export interface ReconcileInput {
  clusterId: string;
  recorded: readonly RecordedInstance[];
  /** `provider.list(clusterId)`. */
  listing: Listing;
  /** Launch intents the caller still has (open, or settled recently enough to matter). */
  knownIntents: Iterable<string>;
  now: Date;
  /** Eventual-consistency and in-flight-launch margin. Default 120 s. */
  graceMs?: number;
}

export type ReconcileAction =
  /** Record this cloud instance (type ADD, boot deadline from its launch time). */
  | { kind: 'adopt'; instanceId: string; intentId: string; instance: ProviderInstance }
  /** Terminate at the provider (idempotent). */
  | { kind: 'terminate'; instanceId: string; reason: 'orphan' | 'boot_deadline' | 'stopped' | 'terminate_incomplete' }
  /** Mark a recorded ADD instance failed (then TERMINATE): it missed its boot deadline. */
  | { kind: 'fail'; instanceId: string; reason: 'boot_deadline' }
  /** Mark a recorded instance TERMINATE: the cloud no longer runs it. */
  | { kind: 'gone'; instanceId: string; cloudState: InstanceState | 'missing' };

export const RECONCILE_GRACE_MS = 120_000;

const ORDER: Record<ReconcileAction['kind'], number> = { adopt: 0, fail: 1, gone: 2, terminate: 3 };

/** The intent an instance came from: its intent tag, else its ClientToken (`<intent>` or `<intent>.<hash>`). */
function intentOf(i: ProviderInstance, known: ReadonlySet<string>): string | null {
  if (i.intentId && known.has(i.intentId)) return i.intentId;
  const tok = i.clientToken;
  if (!tok) return null;
  if (known.has(tok)) return tok;
  const dot = tok.lastIndexOf('.');
  return dot > 0 && known.has(tok.slice(0, dot)) ? tok.slice(0, dot) : null;
}

/** The actions that bring the records and the cloud together, sorted by instance id. */
export function reconcile(input: ReconcileInput): ReconcileAction[] {
  const grace = input.graceMs ?? RECONCILE_GRACE_MS;
  const now = input.now.getTime();
  const asOf = input.listing.asOf.getTime();
  const known = new Set(input.knownIntents);
  const cloud = new Map<string, ProviderInstance>();
  for (const i of input.listing.instances) if (i.tags[TAG_CLUSTER] === input.clusterId) cloud.set(i.instanceId, i);
  const recorded = new Map(input.recorded.map((r) => [r.instanceId, r]));
  const out: ReconcileAction[] = [];

  for (const r of recorded.values()) {
    const c = cloud.get(r.instanceId);
    if (r.type === 'TERMINATE') {
      if (c && ALIVE_STATES.has(c.state)) out.push({ kind: 'terminate', instanceId: r.instanceId, reason: 'terminate_incomplete' });
      continue;
    }
    if (!c) {
      if (r.launchedAt.getTime() < asOf - grace) out.push({ kind: 'gone', instanceId: r.instanceId, cloudState: 'missing' });
      continue;
    }
    if (c.state === 'terminated' || c.state === 'shutting-down') {
      out.push({ kind: 'gone', instanceId: r.instanceId, cloudState: c.state });
      continue;
    }
    if (c.state === 'stopped' || c.state === 'stopping') {
      out.push({ kind: 'terminate', instanceId: r.instanceId, reason: 'stopped' });
      out.push({ kind: 'gone', instanceId: r.instanceId, cloudState: c.state });
      continue;
    }
    if (r.type === 'ADD' && r.bootDeadline && now > r.bootDeadline.getTime()) {
      out.push({ kind: 'fail', instanceId: r.instanceId, reason: 'boot_deadline' });
      out.push({ kind: 'terminate', instanceId: r.instanceId, reason: 'boot_deadline' });
    }
  }

  for (const c of cloud.values()) {
    if (recorded.has(c.instanceId) || !ALIVE_STATES.has(c.state)) continue;
    const intent = intentOf(c, known);
    if (intent !== null) out.push({ kind: 'adopt', instanceId: c.instanceId, intentId: intent, instance: c });
    else if (c.launchedAt.getTime() < now - grace) out.push({ kind: 'terminate', instanceId: c.instanceId, reason: 'orphan' });
  }

  return out.sort((a, b) => (a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : ORDER[a.kind] - ORDER[b.kind]));
}
