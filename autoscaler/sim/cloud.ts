/**
 * The simulator's fake cloud and a provider model in front of it (autoscaler/README.md, "The
 * simulator"): boot-time distribution, agents that never connect, insufficient-capacity
 * windows per pool (subnet), an account instance quota, API throttling as EC2 token buckets,
 * spot reclaims with a 2-minute notice, and idempotent launches by client token.
 *
 * SimProvider mirrors what the real provider does in front of EC2 — uniform spread over
 * pools, a breaker per pool on capacity errors, a sticky quota cap, backoff on throttling —
 * and reports it as the `ProviderHealth` the policy reads.
 */
import type { ProviderHealth } from '../types.ts';
import { Rng } from './prng.ts';

export interface CloudOptions {
  /** Subnets (or subnet × instance type pools) launches are spread over. */
  readonly pools: readonly string[];
  /** Launch → runner connected: lognormal median and shape. */
  readonly bootMedianMs: number;
  readonly bootSigma: number;
  /** Fraction of instances whose agent never connects (bad AMI, broken user data). */
  readonly neverConnectRate: number;
  /** Insufficient-capacity windows: launches into `pool` fail during [from, to). */
  readonly ice: readonly { readonly pool: string; readonly from: number; readonly to: number }[];
  /** Instances the account may run at once (InstanceLimitExceeded beyond); null = unlimited. */
  readonly accountQuota: number | null;
  /** EC2 RunInstances request bucket (calls): burst and refill per second. */
  readonly runBucket: { readonly burst: number; readonly perSec: number };
  /** EC2 DescribeInstances bucket (calls). */
  readonly describeBucket: { readonly burst: number; readonly perSec: number };
  /** Spot reclaims per instance-hour (0 = on-demand). */
  readonly reclaimPerHour: number;
  /** Interruption notice before a reclaim. */
  readonly reclaimNoticeMs: number;
}

export const CLOUD_DEFAULTS: CloudOptions = Object.freeze({
  pools: ['subnet-a', 'subnet-b'],
  bootMedianMs: 60_000, // assumption for Flatcar to runner connected (expected 40–90 s; not measured)
  bootSigma: 0.3,
  neverConnectRate: 0,
  ice: [],
  accountQuota: null,
  runBucket: { burst: 5, perSec: 2 }, // EC2 RunInstances request bucket
  describeBucket: { burst: 50, perSec: 10 }, // EC2 DescribeInstances, as quoted in https://github.com/ClusterLabs/cluster-glue/pull/35
  reclaimPerHour: 0,
  reclaimNoticeMs: 120_000,
});

class TokenBucket {
  #tokens: number;
  #at = 0;
  constructor(
    readonly burst: number,
    readonly perSec: number,
  ) {
    this.#tokens = burst;
  }
  take(now: number): boolean {
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#at) / 1000) * this.perSec);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

export interface CloudInstance {
  readonly id: string;
  readonly pool: string;
  readonly token: string;
  readonly launchedAt: number;
  /** When its runner connects; null when it never will. */
  readonly connectAt: number | null;
  /** When the cloud takes it back (spot); null for never. */
  readonly reclaimAt: number | null;
  endAt: number | null;
}

export type RunError = 'capacity' | 'quota' | 'throttled';

export class FakeCloud {
  readonly instances = new Map<string, CloudInstance>();
  readonly #byToken = new Map<string, string>();
  readonly calls = { run: 0, runThrottled: 0, describe: 0, describeThrottled: 0, terminate: 0 };
  readonly #run: TokenBucket;
  readonly #describe: TokenBucket;
  readonly #rng: Rng;
  #seq = 0;

  constructor(
    readonly opts: CloudOptions,
    rng: Rng,
  ) {
    this.#run = new TokenBucket(opts.runBucket.burst, opts.runBucket.perSec);
    this.#describe = new TokenBucket(opts.describeBucket.burst, opts.describeBucket.perSec);
    this.#rng = rng;
  }

  running(): number {
    let n = 0;
    for (const i of this.instances.values()) if (i.endAt === null) n++;
    return n;
  }

  /** The instance an idempotency token already created, if any (EC2 ClientToken semantics). */
  byToken(token: string): CloudInstance | undefined {
    const id = this.#byToken.get(token);
    return id === undefined ? undefined : this.instances.get(id);
  }

  /** One RunInstances call (MinCount 1, MaxCount tokens.length) into one pool. */
  runInstances(now: number, pool: string, tokens: readonly string[]): { ok: CloudInstance[]; quotaHit: boolean } | { error: RunError } {
    this.calls.run++;
    if (!this.#run.take(now)) {
      this.calls.runThrottled++;
      return { error: 'throttled' };
    }
    if (this.opts.ice.some((w) => w.pool === pool && now >= w.from && now < w.to)) return { error: 'capacity' };
    const room = this.opts.accountQuota === null ? tokens.length : Math.max(0, this.opts.accountQuota - this.running());
    if (room === 0) return { error: 'quota' };
    const ok = tokens.slice(0, room).map((token) => this.#create(now, pool, token));
    return { ok, quotaHit: room < tokens.length };
  }

  #create(now: number, pool: string, token: string): CloudInstance {
    const r = this.#rng;
    const id = `i-${(++this.#seq).toString(16).padStart(8, '0')}`;
    const never = r.next() < this.opts.neverConnectRate;
    const connectAt = never ? null : now + Math.max(15_000, r.lognormal(this.opts.bootMedianMs, this.opts.bootSigma));
    const reclaimAt = this.opts.reclaimPerHour > 0 ? now + r.exp(this.opts.reclaimPerHour / 3_600_000) : null;
    const inst: CloudInstance = { id, pool, token, launchedAt: now, connectAt, reclaimAt, endAt: null };
    this.instances.set(id, inst);
    this.#byToken.set(token, id);
    return inst;
  }

  terminate(now: number, id: string): void {
    this.calls.terminate++;
    const i = this.instances.get(id);
    if (i && i.endAt === null) i.endAt = now;
  }

  /** One DescribeInstances call; false when throttled. */
  describe(now: number): boolean {
    this.calls.describe++;
    if (this.#describe.take(now)) return true;
    this.calls.describeThrottled++;
    return false;
  }
}

export interface LaunchOutcome {
  readonly instances: CloudInstance[];
  readonly failed: number;
  readonly reason: RunError | null;
}

/** The provider in front of the fake cloud: spread, per-pool breakers, quota cap, throttle backoff. */
export class SimProvider {
  readonly #breakers = new Map<string, { openUntil: number; failures: number }>();
  #quota: { value: number; until: number } | null = null;
  #throttledUntil = 0;
  #throttles = 0;

  constructor(readonly cloud: FakeCloud) {}

  #open(pool: string, now: number): boolean {
    return (this.#breakers.get(pool)?.openUntil ?? 0) > now;
  }

  /** Launch `count` instances for an intent; slot k uses client token `${intentId}:${k}`. */
  launch(now: number, intentId: string, count: number, perPool: Map<string, number>): LaunchOutcome {
    const found: CloudInstance[] = [];
    let todo: string[] = [];
    for (let k = 0; k < count; k++) {
      const token = `${intentId}:${k}`;
      const existing = this.cloud.byToken(token);
      if (existing) found.push(existing);
      else todo.push(token);
    }
    let reason: RunError | null = null;
    const counts = new Map(perPool);
    while (todo.length > 0) {
      const pools = this.cloud.opts.pools.filter((p) => !this.#open(p, now));
      if (pools.length === 0) {
        reason ??= 'capacity';
        break;
      }
      // Uniform spread: give each slot to the pool with the fewest instances so far.
      const plan = new Map<string, string[]>();
      for (const token of todo) {
        const p = pools.reduce((best, q) => ((counts.get(q) ?? 0) < (counts.get(best) ?? 0) ? q : best));
        counts.set(p, (counts.get(p) ?? 0) + 1);
        plan.set(p, [...(plan.get(p) ?? []), token]);
      }
      const retry: string[] = [];
      let stop = false;
      for (const [pool, tokens] of plan) {
        if (stop) {
          retry.push(...tokens);
          continue;
        }
        const r = this.cloud.runInstances(now, pool, tokens);
        if ('ok' in r) {
          found.push(...r.ok);
          this.#breakers.delete(pool);
          this.#throttles = 0;
          if (r.quotaHit) {
            this.#quota = { value: this.cloud.running(), until: now + 600_000 };
            reason = 'quota';
            stop = true;
          }
        } else if (r.error === 'capacity') {
          // Breaker: 2, 4, 8 ... 30 min; the slots move to the other pools.
          const b = this.#breakers.get(pool) ?? { openUntil: 0, failures: 0 };
          b.failures++;
          b.openUntil = now + Math.min(30 * 60_000, 2 * 60_000 * 2 ** (b.failures - 1));
          this.#breakers.set(pool, b);
          counts.set(pool, (counts.get(pool) ?? tokens.length) - tokens.length);
          retry.push(...tokens);
          reason = 'capacity';
        } else {
          if (r.error === 'quota') this.#quota = { value: this.cloud.running(), until: now + 600_000 };
          else this.#throttledUntil = now + Math.min(60_000, 1000 * 2 ** this.#throttles++);
          reason = r.error;
          stop = true;
          retry.push(...tokens);
        }
      }
      todo = stop ? [] : retry;
      if (stop) return { instances: found, failed: count - found.length, reason };
    }
    return { instances: found, failed: count - found.length, reason: found.length < count ? reason : null };
  }

  health(now: number): ProviderHealth {
    const open = this.cloud.opts.pools.filter((p) => this.#open(p, now));
    if (this.#quota && this.#quota.until <= now) this.#quota = null; // probe again after a while
    return {
      capacityUnavailable: open.length === this.cloud.opts.pools.length,
      unavailablePools: open,
      instanceQuota: this.#quota?.value ?? null,
      throttledUntil: this.#throttledUntil > now ? this.#throttledUntil : null,
    };
  }
}
