/**
 * The `ec2` provider: launches, lists and terminates a cluster's instances with
 * @aws-sdk/client-ec2: idempotent launches tagged at creation (a crash between RunInstances
 * and recording the instance must not launch again, and an instance must never exist without
 * its ownership tag, or nothing would find it to terminate), capacity breakers, quota caps
 * and throttling backoff (a pool without capacity or an exhausted quota must not become a
 * tight retry loop), and the cluster fields of the IronWorker reference (`autoscale.aws`).
 *
 * Launch. One RunInstances call per placement pool (subnet, else availability zone), with
 * MinCount = MaxCount = the pool's share, so a pool either takes its share or fails as a
 * whole and its share falls through to the other pools. Shares are uniform over the *fleet*
 * (each instance goes to the pool with the fewest of the cluster's instances; the intent's own
 * instances are left out of the count so a retry plans the same way). Every call carries a
 * ClientToken derived from the intent id only (see `clientToken`), `TagSpecifications` for
 * instance and volume (ownership tags + the cluster's tags; ours win), and base64 user data.
 * Idempotency: a retry inside this process replays the same plan; a call whose reply was
 * lost or timed out is retried with the same token (EC2 returns the same instances); a token
 * reused with other parameters (IdempotentParameterMismatch) is resolved by describing the
 * instances that carry it. A resumed intent (leader failover) first looks for instances tagged
 * with it. Residual risk, documented: a new leader whose plan differs from the old one's (the
 * fleet or breakers changed in between) can launch a pool twice; the reconciler adopts the
 * surplus and the policy scales it in.
 *
 * Describe budget. EC2 throttles per account and region with token buckets shared by every
 * caller of the account (console, CLI, other tools). DescribeInstances has been quoted at a
 * bucket of 50 refilled at 10/s (https://github.com/ClusterLabs/cluster-glue/pull/35; AWS now
 * documents 100 and 20/s for filtered, paginated non-mutating calls). So:
 * - one DescribeInstances serves every cluster that uses the same credentials in this process
 *   (the bucket is the account's, so a call per cluster would spend it once per cluster): it
 *   filters on `tag:gantry:cluster-id` with all their ids, and each cluster's listing is cut
 *   from that snapshot (`DescribeShare`);
 * - a snapshot is reused for 5 s (Ray's autoscaler fixed its RequestLimitExceeded by
 *   refreshing at most every 5 s, https://github.com/ray-project/ray/issues/1346; our loop
 *   ticks every 10 s): about one call per tick per account, however many clusters;
 * - and a bucket of 10 tokens refilled at 2/s per (endpoint, region, access key), a fifth of
 *   the smaller EC2 figure, bounds everything else (ownership checks before terminations,
 *   resumed intents, new clusters). When it is empty a caller gets its cached listing (with its
 *   true `asOf`), or a ThrottledError when it has none yet.
 *
 * Secrets: the access key pair goes to the SDK client and nowhere else; nothing here logs
 * settings, and `toJSON`/inspect show only non-secret fields.
 */
import { createHash } from 'node:crypto';
import { inspect } from 'node:util';
import {
  AssociateAddressCommand,
  DescribeAddressesCommand,
  DescribeInstancesCommand,
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type Address,
  type BlockDeviceMapping,
  type Filter,
  type Instance,
  type RunInstancesCommandInput,
  type Tag,
  type _InstanceType,
} from '@aws-sdk/client-ec2';
import { systemClock, type Clock } from '../../lib/clock.ts';
import { silentLogger, type Logger } from '../../lib/logger.ts';
import { putOwn } from '../../lib/record.ts';
import { USER_DATA_MAX_BYTES } from '../../cloud-config/render.ts';
import { MAX_USER_TAGS, type AwsSettings } from '../types.ts';
import {
  ALIVE_STATES,
  CapacityError,
  ProviderError,
  QuotaError,
  TAG_CLUSTER,
  TAG_INTENT,
  TAG_MANAGED,
  ThrottledError,
  shortfallReason,
  type BreakerState,
  type InstanceState,
  type LaunchOutcome,
  type LaunchSpec,
  type Listing,
  type Provider,
  type ProviderAlert,
  type ProviderHealth,
  type ProviderInstance,
  type QuotaState,
} from './types.ts';

/**
 * What an ec2 provider is made with: a cluster's stored `autoscale.aws` and its AWS keys,
 * opened. Every field is checked here (`normalize`), so any may be missing.
 */
export type Ec2Settings = Partial<AwsSettings> & { access_key_id: string; secret_access_key: string };

export interface Ec2ProviderOptions {
  /** Endpoint override for tests (the fake EC2 server). Real deployments leave it unset. */
  endpoint?: string;
  clock?: Clock;
  log?: Logger;
  /** Jitter source in [0, 1); injectable for deterministic tests. */
  random?: () => number;
  /** The DescribeInstances snapshot and budget; defaults to the one shared by these credentials. */
  describeShare?: DescribeShare;
  describeTtlMs?: number;
  /** DescribeInstances MaxResults (5–1000); smaller only in tests of pagination. */
  describePageSize?: number;
  requestTimeoutMs?: number;
  /** Attempts per mutating call on network errors, timeouts and 5xx (same ClientToken). */
  attempts?: number;
  retryDelayMs?: number;
  breakerBaseMs?: number;
  breakerMaxMs?: number;
  throttleBaseMs?: number;
  throttleMaxMs?: number;
  quotaRecheckMs?: number;
  /** Least time between two DescribeAddresses while some running instance lacks an Elastic IP. */
  addressesIntervalMs?: number;
}

/** Defaults and why. */
export const EC2_DEFAULTS = Object.freeze({
  describeTtlMs: 5_000, // one DescribeInstances per account per 10 s tick (see module comment)
  describePageSize: 1000, // EC2's maximum: fewest calls
  describeBurst: 10, // a fifth of EC2's 50-token DescribeInstances bucket
  describePerSecond: 2, // a fifth of its 10/s refill
  requestTimeoutMs: 20_000, // EC2 answers in seconds; a hung call must not hold the leader loop
  attempts: 3,
  retryDelayMs: 250,
  breakerBaseMs: 120_000, // a pool without capacity is skipped for 2 → 4 → … → 30 min, not retried each tick
  breakerMaxMs: 1_800_000,
  throttleBaseMs: 1_000,
  throttleMaxMs: 60_000,
  quotaRecheckMs: 300_000, // probe a quota once every 5 min: raising one takes a support ticket
  addressesIntervalMs: 30_000,
});

/** Capacity errors: the pool (subnet or zone, instance type) cannot take the launch now. */
const CAPACITY_CODES = new Set([
  'InsufficientInstanceCapacity',
  'InsufficientCapacity',
  'InsufficientHostCapacity',
  'InsufficientAddressCapacity',
  'InsufficientFreeAddressesInSubnet',
  'Unsupported', // the instance type is not offered in that zone
]);
/** Account quotas: no pool can take more until the quota is raised or instances go. */
const QUOTA_CODES = new Set(['InstanceLimitExceeded', 'VcpuLimitExceeded', 'MaxSpotInstanceCountExceeded']);
const THROTTLE_CODES = new Set(['RequestLimitExceeded', 'Throttling', 'ThrottlingException']);

/**
 * A token bucket on the clock it was made with. `force` takes a token even when none is
 * left (the debt is repaid by the refill): for calls that must not be starved, such as the
 * ownership check before a termination.
 */
export class TokenBucket {
  #tokens: number;
  #at: number;
  constructor(
    readonly capacity: number,
    readonly perSecond: number,
    readonly clock: Clock = systemClock,
  ) {
    this.#tokens = capacity;
    this.#at = clock.now().getTime();
  }
  #refill(): void {
    const now = this.clock.now().getTime();
    this.#tokens = Math.min(this.capacity, this.#tokens + (Math.max(0, now - this.#at) / 1000) * this.perSecond);
    this.#at = now;
  }
  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
  force(): void {
    this.#refill();
    this.#tokens -= 1;
  }
  /** Milliseconds until `take` can succeed. */
  msUntilToken(): number {
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) / this.perSecond) * 1000);
  }
}

/** One DescribeInstances of every registered cluster's tagged instances. */
interface Snapshot {
  asOf: Date;
  covered: ReadonlySet<string>;
  instances: ProviderInstance[];
}

/**
 * What the providers of one account (endpoint, region, access key) share in this process:
 * the DescribeInstances budget, the clusters to list, and the latest snapshot of them.
 */
export class DescribeShare {
  /** Cluster id → when a provider last asked for it; clusters not asked for 10 min drop out. */
  readonly clusters = new Map<string, number>();
  snapshot: Snapshot | null = null;
  inflight: Promise<Snapshot> | null = null;
  constructor(readonly budget: TokenBucket) {}
}

const shares = new Map<string, DescribeShare>();

/** The share of every provider with these credentials in this process. */
export function sharedDescribe(endpoint: string | undefined, region: string, accessKeyId: string, clock: Clock): DescribeShare {
  const key = sha256(`${endpoint ?? 'aws'}\n${region}\n${accessKeyId}`);
  let s = shares.get(key);
  if (!s) {
    s = new DescribeShare(new TokenBucket(EC2_DEFAULTS.describeBurst, EC2_DEFAULTS.describePerSecond, clock));
    shares.set(key, s);
  }
  return s;
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/**
 * The ClientToken of one RunInstances call (≤ 64 ASCII characters, EC2's limit). A launch
 * that is a single call into the cluster's only pool uses the intent id itself; otherwise
 * (several pools, or a share that fell through from a failed pool) the token is the intent
 * id plus a hash of (pool, instance type, source pool), so it is the same on every retry of
 * the same call and different for every other call of the intent (reusing one token with
 * other parameters is IdempotentParameterMismatch).
 */
export function clientToken(intentId: string, parts: readonly string[] | null): string {
  const base = (room: number) => (intentId.length <= room ? intentId : `g-${sha256(intentId).slice(0, Math.min(40, room - 2))}`);
  if (parts === null) return base(64);
  return `${base(64 - 11)}.${sha256([intentId, ...parts].join('\n')).slice(0, 10)}`;
}

interface Normalized {
  region: string;
  instanceType: string;
  imageId: string;
  userTags: Record<string, string>;
  keyName: string | null;
  subnets: string[];
  zones: string[];
  securityGroups: string[];
  securityGroupIds: string[];
  iamProfile: { Arn: string } | { Name: string } | null;
  blockDevices: BlockDeviceMapping[];
  eips: string[];
}

const nonEmpty = (xs: readonly (string | null | undefined)[] | null | undefined): string[] =>
  [...new Set((xs ?? []).map((x) => (typeof x === 'string' ? x.trim() : '')).filter((x) => x.length > 0))];

function invalid(field: string, why: string): ProviderError {
  return new ProviderError('InvalidSettings', `autoscale.aws.${field} ${why}`, { code: 'provider_invalid_settings' });
}

/** Checks and normalizes the settings once; errors name the field and its limit. */
function normalize(s: Ec2Settings): Normalized {
  const req = (field: 'instance_type' | 'image_id' | 'access_key_id' | 'secret_access_key') => {
    const v = s[field];
    if (typeof v !== 'string' || v.trim() === '') throw invalid(field, 'is required');
    return v.trim();
  };
  req('access_key_id');
  req('secret_access_key');
  const userTags: Record<string, string> = {};
  for (const [k, v] of Object.entries(s.tags ?? {})) {
    if (k.length < 1 || k.length > 128) throw invalid('tags', `key "${k.slice(0, 40)}" must be 1–128 characters`);
    if (/^aws:/i.test(k)) throw invalid('tags', `key "${k}" uses the reserved prefix aws:`);
    if (typeof v !== 'string' || v.length > 256) throw invalid('tags', `value of "${k}" must be a string of at most 256 characters`);
    if (k === TAG_CLUSTER || k === TAG_MANAGED || k === TAG_INTENT) continue; // ours win
    putOwn(userTags, k, v);
  }
  if (Object.keys(userTags).length > MAX_USER_TAGS) throw invalid('tags', `has ${Object.keys(userTags).length} tags; at most ${MAX_USER_TAGS}, the Clusters API's limit (EC2 allows 50 per instance; Gantry adds 3 of its own)`);
  const prof = s.iam_instance_profile;
  const arn = prof?.arn?.trim();
  const name = prof?.name?.trim();
  const blockDevices: BlockDeviceMapping[] = [];
  for (const [i, m] of (s.block_device_mappings ?? []).entries()) {
    const device = m.device_name?.trim();
    if (!device) throw invalid(`block_device_mappings[${i}].device_name`, 'is required');
    const bdm: BlockDeviceMapping = { DeviceName: device };
    // Any non-empty value, or true, suppresses the AMI's device (EC2 NoDevice).
    const noDevice: unknown = m.no_device;
    if (noDevice === true || (typeof noDevice === 'string' && noDevice.trim() !== '')) bdm.NoDevice = '';
    else if (m.virtual_name?.trim()) bdm.VirtualName = m.virtual_name.trim();
    else if (m.ebs) {
      const e = m.ebs;
      bdm.Ebs = {};
      if (e.snapshot_id?.trim()) bdm.Ebs.SnapshotId = e.snapshot_id.trim();
      if (e.volume_size) bdm.Ebs.VolumeSize = e.volume_size;
      if (e.volume_type?.trim()) bdm.Ebs.VolumeType = e.volume_type.trim() as NonNullable<BlockDeviceMapping['Ebs']>['VolumeType'];
      if (e.iops) bdm.Ebs.Iops = e.iops;
      if (typeof e.encrypted === 'boolean') bdm.Ebs.Encrypted = e.encrypted;
      if (typeof e.delete_on_termination === 'boolean') bdm.Ebs.DeleteOnTermination = e.delete_on_termination;
    }
    blockDevices.push(bdm);
  }
  return {
    region: s.region?.trim() || 'us-east-1',
    instanceType: req('instance_type'),
    imageId: req('image_id'),
    userTags,
    keyName: s.key_name?.trim() || null,
    subnets: nonEmpty(s.subnet_ids),
    zones: nonEmpty(s.availability_zones),
    securityGroups: nonEmpty(s.security_groups),
    securityGroupIds: nonEmpty(s.security_group_ids),
    iamProfile: arn ? { Arn: arn } : name ? { Name: name } : null,
    blockDevices,
    eips: nonEmpty(s.eips),
  };
}

/** Everything we need from an SDK or network error, classified once. */
interface Classified {
  kind: 'capacity' | 'quota' | 'throttle' | 'transient' | 'fatal';
  code: string;
  message: string;
}

function classify(e: unknown): Classified {
  const err = e as { name?: string; Code?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = err?.$metadata?.httpStatusCode;
  const code = (status !== undefined ? (err.Code ?? err.name) : (err?.code ?? err?.name)) ?? 'Unknown';
  const message = String(err?.message ?? e);
  if (THROTTLE_CODES.has(code)) return { kind: 'throttle', code, message };
  if (CAPACITY_CODES.has(code)) return { kind: 'capacity', code, message };
  if (QUOTA_CODES.has(code)) return { kind: 'quota', code, message };
  // No HTTP status: the request failed on the network (reset, refused, timed out).
  if (status === undefined || status >= 500) return { kind: 'transient', code, message };
  return { kind: 'fatal', code, message };
}

interface Group {
  target: string;
  n: number;
  /** The pool whose failure moved this share here; null for the plan's own shares. */
  from: string | null;
}

interface Memo {
  count: number;
  groups: Group[];
  at: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Ec2Provider implements Provider {
  readonly kind = 'ec2' as const;
  readonly #client: EC2Client;
  readonly #cfg: Normalized;
  readonly #opts: typeof EC2_DEFAULTS & { endpoint?: string };
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #random: () => number;
  readonly #share: DescribeShare;
  readonly #cache = new Map<string, Listing>();
  /** Instances this provider launched lately, kept in listings until a describe shows them. */
  readonly #recent = new Map<string, { clusterId: string; inst: ProviderInstance; at: number }>();
  readonly #breakers = new Map<string, { failures: number; openUntil: number; code: string }>();
  readonly #throttle = new Map<string, { until: number; streak: number }>();
  readonly #memo = new Map<string, Memo>();
  /** instance id → allocation id of its Elastic IP, as last seen or made. */
  readonly #eipOf = new Map<string, string>();
  #quota: QuotaState | null = null;
  #eipShortage = 0;
  #addressesAt = -Infinity;

  constructor(settings: Ec2Settings, opts: Ec2ProviderOptions = {}) {
    this.#cfg = normalize(settings);
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLogger();
    this.#random = opts.random ?? Math.random;
    const { clock: _c, log: _l, random: _r, describeShare: _s, ...rest } = opts;
    const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
    this.#opts = { ...EC2_DEFAULTS, ...defined };
    this.#share = opts.describeShare ?? sharedDescribe(opts.endpoint, this.#cfg.region, settings.access_key_id.trim(), this.#clock);
    this.#client = new EC2Client({
      region: this.#cfg.region,
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      credentials: { accessKeyId: settings.access_key_id.trim(), secretAccessKey: settings.secret_access_key.trim() },
      // Retries are ours: same ClientToken on transient errors, breakers on capacity, backoff on throttling.
      maxAttempts: 1,
      requestHandler: {
        requestTimeout: this.#opts.requestTimeoutMs,
        connectionTimeout: Math.min(this.#opts.requestTimeoutMs, 5_000),
        throwOnRequestTimeout: true,
      },
    });
  }

  /** Never the credentials. */
  toJSON(): Record<string, unknown> {
    const c = this.#cfg;
    return { kind: this.kind, region: c.region, instanceType: c.instanceType, imageId: c.imageId, subnets: c.subnets, zones: c.zones };
  }
  [inspect.custom](): string {
    return `Ec2Provider ${JSON.stringify(this.toJSON())}`;
  }

  #now(): number {
    return this.#clock.now().getTime();
  }

  // ---- launch -----------------------------------------------------------------------------

  async launch(spec: LaunchSpec): Promise<LaunchOutcome> {
    if (!Number.isInteger(spec.count) || spec.count < 1 || spec.count > 1000) {
      throw new ProviderError('InvalidLaunch', `launch count must be an integer in 1–1000, got ${spec.count}`);
    }
    if (!/^[\x21-\x7e]{1,200}$/.test(spec.intentId)) {
      throw new ProviderError('InvalidLaunch', 'intentId must be 1–200 printable ASCII characters without spaces');
    }
    if (!/^[\x21-\x7e]{1,200}$/.test(spec.clusterId)) {
      throw new ProviderError('InvalidLaunch', 'clusterId must be 1–200 printable ASCII characters without spaces');
    }
    const bytes = Buffer.byteLength(spec.userData, 'utf8');
    if (bytes > USER_DATA_MAX_BYTES) {
      throw new ProviderError('UserDataTooLarge', `user data is ${bytes} bytes; EC2 accepts at most ${USER_DATA_MAX_BYTES} (16 KB) before base64`);
    }
    this.#assertNotThrottled('RunInstances');
    const log = this.#log.child({ intentId: spec.intentId });

    let found: ProviderInstance[] = [];
    if (spec.resumed) {
      found = await this.#describe([
        { Name: `tag:${TAG_CLUSTER}`, Values: [spec.clusterId] },
        { Name: `tag:${TAG_INTENT}`, Values: [spec.intentId] },
      ]);
      const alive = found.filter((i) => ALIVE_STATES.has(i.state));
      if (alive.length >= spec.count) {
        log.info({ instanceIds: alive.map((i) => i.instanceId) }, 'resumed launch intent already satisfied');
        return { instances: alive };
      }
    }

    // The cluster's other instances: for the caps and for the uniform spread.
    const { listing, error: listError } = await this.#recentListing(spec.clusterId);
    const others = (listing?.instances ?? []).filter((i) => ALIVE_STATES.has(i.state) && i.intentId !== spec.intentId);
    const now = this.#now();
    let want = spec.count;
    let capped: ProviderError | null = null;
    const q = this.#quota;
    if (!listing && (this.#cfg.eips.length > 0 || (q && now < q.recheckAt))) {
      throw listError ?? new ThrottledError('DescribeBudget', 'cannot check the fleet cap: no listing of the cluster is available now', { retryAt: now + this.#share.budget.msUntilToken() });
    }
    if (this.#cfg.eips.length > 0) {
      const room = this.#cfg.eips.length - others.length;
      if (room <= 0) throw new QuotaError('EipsExhausted', `every one of the cluster's ${this.#cfg.eips.length} eips is taken`, { cap: this.#cfg.eips.length });
      if (room < want) {
        want = room;
        capped = new QuotaError('EipsExhausted', `the cluster's ${this.#cfg.eips.length} eips allow ${room} more instances`, { cap: this.#cfg.eips.length });
      }
    }
    if (q && now < q.recheckAt) {
      const room = q.cap - others.length;
      if (room <= 0) throw new QuotaError(q.code, `account quota (${q.code}) caps the cluster at ${q.cap} instances; next probe after ${new Date(q.recheckAt).toISOString()}`, { cap: q.cap });
      if (room < want) {
        want = room;
        capped = new QuotaError(q.code, `account quota (${q.code}) caps the cluster at ${q.cap} instances`, { cap: q.cap });
      }
    }

    const memo = this.#memo.get(spec.intentId);
    const groups = memo && memo.count === want ? memo.groups.map((g) => ({ ...g })) : this.#plan(spec.intentId, want, others);
    if (!memo || memo.count !== want) this.#remember(spec.intentId, want, groups);
    const single = this.#targets().length === 1;

    const got: ProviderInstance[] = [];
    const failed = new Set<string>();
    let stop: ProviderError | null = null;
    let lastCapacity: CapacityError | null = null;
    let other: ProviderError | null = null;
    const queue = [...groups];
    const countIn = (t: string) =>
      others.filter((i) => this.#targetOf(i) === t).length + got.filter((i) => this.#targetOf(i) === t).length;
    const redistribute = (g: Group) => {
      const open = this.#targets().filter((t) => !failed.has(t) && !this.#breakerOpen(t));
      if (open.length === 0) return;
      const add = new Map<string, number>();
      for (let k = 0; k < g.n; k++) {
        const t = open.reduce((best, x) => (countIn(x) + (add.get(x) ?? 0) < countIn(best) + (add.get(best) ?? 0) ? x : best));
        add.set(t, (add.get(t) ?? 0) + 1);
      }
      for (const [t, n] of add) {
        const queued = queue.find((q2) => q2.target === t && q2.from === g.target);
        if (queued) queued.n += n;
        else queue.push({ target: t, n, from: g.target });
      }
      g.n = 0;
    };

    while (queue.length > 0) {
      const g = queue.shift()!;
      if (g.n === 0 || stop) continue;
      if (failed.has(g.target) || this.#breakerOpen(g.target)) {
        if (!lastCapacity) lastCapacity = this.#capacityError();
        redistribute(g);
        continue;
      }
      const token = clientToken(spec.intentId, single && g.from === null ? null : [g.target, this.#cfg.instanceType, g.from ?? '']);
      try {
        const insts = await this.#runGroup(spec, g, token);
        this.#breakers.delete(this.#pool(g.target));
        if (this.#quota && insts.length > 0) {
          log.info({ code: this.#quota.code }, 'launch succeeded: account quota no longer capping the cluster');
          this.#quota = null;
        }
        got.push(...insts);
        this.#upsertCache(spec.clusterId, insts);
        log.info({ pool: this.#pool(g.target), clientToken: token, instanceIds: insts.map((i) => i.instanceId) }, 'instances launched');
      } catch (e) {
        const err = e instanceof ProviderError ? e : new ProviderError('Unknown', String(e), { cause: e });
        if (err instanceof CapacityError) {
          failed.add(g.target);
          this.#trip(g.target, err.cloudCode, log);
          lastCapacity = err;
          redistribute(g);
        } else if (err instanceof QuotaError) {
          const cap = others.length + got.length;
          this.#quota = { code: err.cloudCode, cap, since: this.#now(), recheckAt: this.#now() + this.#opts.quotaRecheckMs, message: err.message };
          log.error({ code: err.cloudCode, cap }, 'account quota reached: the cluster is capped until the quota is raised');
          stop = new QuotaError(err.cloudCode, `${err.message} (cluster capped at ${cap} instances)`, { cap, cause: err });
        } else if (err instanceof ThrottledError) {
          stop = err;
        } else if (err.cloudCode === 'IdempotentInstanceTerminated') {
          other = err; // this share was launched earlier and is gone: settled, not launched again
        } else {
          log.warn({ pool: this.#pool(g.target), code: err.cloudCode, err: err.message }, 'launch call failed');
          stop = err;
        }
      }
    }

    const byId = new Map<string, ProviderInstance>();
    for (const i of [...found.filter((x) => ALIVE_STATES.has(x.state)), ...got]) byId.set(i.instanceId, i);
    const instances = [...byId.values()];
    const missing = spec.count - instances.length;
    if (missing <= 0) return { instances };
    const error = stop ?? (lastCapacity ? this.#capacityError(lastCapacity) : null) ?? capped ?? other ?? new ProviderError('Shortfall', `launched ${instances.length} of ${spec.count}`);
    if (instances.length === 0) throw error;
    return { instances, shortfall: { count: missing, reason: shortfallReason(error), error } };
  }

  /** One RunInstances call, retried with the same token on transient failures. */
  async #runGroup(spec: LaunchSpec, g: Group, token: string): Promise<ProviderInstance[]> {
    const c = this.#cfg;
    const tags: Tag[] = Object.entries({
      ...(Object.keys(c.userTags).length > 0 ? c.userTags : { Name: `gantry runner (cluster ${spec.clusterId})` }),
      [TAG_CLUSTER]: spec.clusterId,
      [TAG_MANAGED]: 'true',
      [TAG_INTENT]: spec.intentId,
    }).map(([Key, Value]) => ({ Key, Value }));
    const input: RunInstancesCommandInput = {
      ClientToken: token,
      ImageId: c.imageId,
      InstanceType: c.instanceType as _InstanceType,
      MinCount: g.n,
      MaxCount: g.n,
      UserData: Buffer.from(spec.userData, 'utf8').toString('base64'),
      TagSpecifications: [
        { ResourceType: 'instance', Tags: tags },
        { ResourceType: 'volume', Tags: tags },
      ],
    };
    if (c.subnets.length > 0) input.SubnetId = g.target;
    else if (c.zones.length > 0) input.Placement = { AvailabilityZone: g.target };
    if (c.keyName) input.KeyName = c.keyName;
    if (c.securityGroupIds.length > 0) input.SecurityGroupIds = c.securityGroupIds;
    if (c.securityGroups.length > 0) input.SecurityGroups = c.securityGroups;
    if (c.iamProfile) input.IamInstanceProfile = c.iamProfile;
    if (c.blockDevices.length > 0) input.BlockDeviceMappings = c.blockDevices;
    try {
      const out = await this.#retrying(() => this.#send('RunInstances', () => this.#client.send(new RunInstancesCommand(input))));
      return (out.Instances ?? []).map(toInstance);
    } catch (e) {
      if (e instanceof ProviderError && e.cloudCode === 'IdempotentParameterMismatch') {
        // The token was used before with other parameters (e.g. another share): those instances are this call's.
        this.#log.warn({ clientToken: token }, 'ClientToken reused with other parameters: adopting its instances');
        return (
          await this.#describe([
            { Name: 'client-token', Values: [token] },
            { Name: `tag:${TAG_CLUSTER}`, Values: [spec.clusterId] },
          ])
        ).filter((i) => ALIVE_STATES.has(i.state));
      }
      throw e;
    }
  }

  /** Assigns `count` instances to open pools, each to the pool with the fewest (fleet + planned). */
  #plan(intentId: string, count: number, others: readonly ProviderInstance[]): Group[] {
    const targets = this.#targets();
    const open = targets.filter((t) => !this.#breakerOpen(t));
    if (open.length === 0) throw this.#capacityError();
    // Ties go round a rotation fixed by the intent, so single-instance launches do not all pick the first pool.
    const start = parseInt(sha256(intentId).slice(0, 8), 16) % open.length;
    const order = [...open.slice(start), ...open.slice(0, start)];
    const have = new Map(order.map((t) => [t, others.filter((i) => this.#targetOf(i) === t).length]));
    const add = new Map<string, number>();
    for (let k = 0; k < count; k++) {
      let best = order[0]!;
      for (const t of order) if (have.get(t)! + (add.get(t) ?? 0) < have.get(best)! + (add.get(best) ?? 0)) best = t;
      add.set(best, (add.get(best) ?? 0) + 1);
    }
    return targets.filter((t) => add.has(t)).map((t) => ({ target: t, n: add.get(t)!, from: null }));
  }

  #remember(intentId: string, count: number, groups: Group[]): void {
    const now = this.#now();
    for (const [k, m] of this.#memo) if (now - m.at > 3_600_000 || this.#memo.size > 1000) this.#memo.delete(k);
    this.#memo.set(intentId, { count, groups: groups.map((g) => ({ ...g })), at: now });
  }

  /** The placement pools: subnets, else zones, else one pool `*` (EC2 picks). */
  #targets(): string[] {
    const c = this.#cfg;
    return c.subnets.length > 0 ? c.subnets : c.zones.length > 0 ? c.zones : ['*'];
  }
  #targetOf(i: ProviderInstance): string | undefined {
    const c = this.#cfg;
    return c.subnets.length > 0 ? i.subnetId : c.zones.length > 0 ? i.availabilityZone : '*';
  }
  #pool(target: string): string {
    return `${target}/${this.#cfg.instanceType}`;
  }

  // ---- breakers, quota, throttling -----------------------------------------------------------

  #breakerOpen(target: string): boolean {
    const b = this.#breakers.get(this.#pool(target));
    return b !== undefined && b.openUntil > this.#now();
  }

  #trip(target: string, code: string, log: Logger): void {
    const pool = this.#pool(target);
    const prev = this.#breakers.get(pool);
    const failures = (prev?.failures ?? 0) + 1;
    const coolOff = Math.min(this.#opts.breakerMaxMs, this.#opts.breakerBaseMs * 2 ** (failures - 1));
    const openUntil = this.#now() + coolOff;
    this.#breakers.set(pool, { failures, openUntil, code });
    log.warn({ pool, code, failures, openUntil: new Date(openUntil).toISOString() }, 'capacity breaker open: launches go to other pools');
  }

  #capacityError(cause?: CapacityError): CapacityError {
    const open = [...this.#breakers.values()].filter((b) => b.openUntil > this.#now());
    const retryAt = open.length > 0 ? Math.min(...open.map((b) => b.openUntil)) : null;
    return new CapacityError(cause?.cloudCode ?? open[0]?.code ?? 'InsufficientInstanceCapacity', `no capacity for ${this.#cfg.instanceType} in any pool (${this.#targets().join(', ')})${cause ? `: ${cause.message}` : ''}`, { cause, retryAt });
  }

  #assertNotThrottled(action: string): void {
    const t = this.#throttle.get(action);
    if (t && t.until > this.#now()) {
      throw new ThrottledError('RequestLimitExceeded', `EC2 ${action} is backing off after throttling until ${new Date(t.until).toISOString()}`, { retryAt: t.until });
    }
  }

  /**
   * Sends one call, translating its failure. Throttling backs off with "equal jitter"
   * (half the exponential delay fixed, half random): full jitter, the usual advice for
   * RequestLimitExceeded, can draw a near-zero delay, which for a loop that ticks every 10 s means no backoff at all.
   */
  async #send<T>(action: string, call: () => Promise<T>): Promise<T> {
    this.#assertNotThrottled(action);
    try {
      const out = await call();
      this.#throttle.delete(action);
      return out;
    } catch (e) {
      const c = classify(e);
      const msg = `EC2 ${action}: ${c.code}: ${c.message}`;
      if (c.kind === 'throttle') {
        const streak = (this.#throttle.get(action)?.streak ?? 0) + 1;
        const exp = Math.min(this.#opts.throttleMaxMs, this.#opts.throttleBaseMs * 2 ** (streak - 1));
        const until = this.#now() + Math.round(exp / 2 + (this.#random() * exp) / 2);
        this.#throttle.set(action, { until, streak });
        this.#log.warn({ action, streak, until: new Date(until).toISOString() }, 'EC2 throttled the call: backing off');
        throw new ThrottledError(c.code, msg, { cause: e, retryAt: until });
      }
      if (c.kind === 'capacity') throw new CapacityError(c.code, msg, { cause: e });
      if (c.kind === 'quota') throw new QuotaError(c.code, msg, { cause: e, cap: 0 });
      throw new ProviderError(c.code, msg, { cause: e, retryable: c.kind === 'transient' });
    }
  }

  /** Retries a mutating call on transient failures (network, timeout, 5xx); the call itself must be idempotent. */
  async #retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof ProviderError) || e.constructor !== ProviderError || !e.retryable || attempt >= this.#opts.attempts) throw e;
        this.#log.warn({ attempt, code: e.cloudCode }, 'EC2 call failed in transit: retrying with the same parameters');
        await sleep(this.#opts.retryDelayMs * attempt);
      }
    }
  }

  health(): ProviderHealth {
    const now = this.#now();
    const breakers: BreakerState[] = [...this.#breakers.entries()]
      .filter(([, b]) => b.openUntil > now)
      .map(([pool, b]) => ({ pool, failures: b.failures, openUntil: b.openUntil, code: b.code }));
    const pools = this.#targets().map((t) => this.#pool(t));
    const capacityUnavailable = pools.every((p) => breakers.some((b) => b.pool === p));
    const throttled = [...this.#throttle.values()].map((t) => t.until).filter((u) => u > now);
    const throttledUntil = throttled.length > 0 ? Math.max(...throttled) : null;
    const q = this.#quota;
    const alerts: ProviderAlert[] = [];
    if (q) alerts.push({ code: 'quota_exceeded', message: `EC2 ${q.code}: the cluster is capped at ${q.cap} instances until the account quota is raised` });
    if (capacityUnavailable) alerts.push({ code: 'capacity_unavailable', message: `no capacity for ${this.#cfg.instanceType} in ${pools.join(', ')}` });
    if (throttledUntil !== null) alerts.push({ code: 'throttled', message: `EC2 throttles this account's calls; backing off until ${new Date(throttledUntil).toISOString()}` });
    if (this.#eipShortage > 0) alerts.push({ code: 'eip_unavailable', message: `${this.#eipShortage} running instances have no free Elastic IP from eips` });
    return {
      capacityUnavailable,
      unavailablePools: breakers.map((b) => b.pool),
      // Past the recheck time the cap is lifted so the policy asks again, and that launch probes the quota.
      instanceQuota: q && now < q.recheckAt ? q.cap : null,
      throttledUntil,
      breakers,
      quota: q ? { ...q } : null,
      alerts,
    };
  }

  // ---- list -------------------------------------------------------------------------------

  async list(clusterId: string): Promise<Listing> {
    const now = this.#now();
    const ttl = this.#opts.describeTtlMs;
    const cached = this.#cache.get(clusterId);
    if (cached && now - cached.asOf.getTime() < ttl) return cached;
    const share = this.#share;
    share.clusters.set(clusterId, now);
    const usable = (s: Snapshot | null): s is Snapshot => s !== null && s.covered.has(clusterId) && now - s.asOf.getTime() < ttl;
    if (usable(share.snapshot)) return this.#cut(clusterId, share.snapshot);
    if (share.inflight) {
      const s = await share.inflight;
      if (s.covered.has(clusterId)) return this.#cut(clusterId, s);
    }
    const t = this.#throttle.get('DescribeInstances');
    if (t && t.until > now) {
      if (cached) return cached;
      this.#assertNotThrottled('DescribeInstances');
    }
    if (!share.budget.take()) {
      if (cached) return cached;
      throw new ThrottledError('DescribeBudget', "Gantry's DescribeInstances budget for these credentials is spent", { retryAt: now + share.budget.msUntilToken() });
    }
    for (const [id, last] of share.clusters) if (now - last > 600_000) share.clusters.delete(id);
    const p = this.#snapshot([...share.clusters.keys()]);
    share.inflight = p;
    try {
      return this.#cut(clusterId, await p);
    } finally {
      if (share.inflight === p) share.inflight = null;
    }
  }

  /** Describes every registered cluster's instances (the first page's token is already taken). */
  async #snapshot(clusters: string[]): Promise<Snapshot> {
    const asOf = this.#clock.now();
    const instances: ProviderInstance[] = [];
    for (let k = 0; k < clusters.length; k += 200) {
      instances.push(...(await this.#describe([{ Name: `tag:${TAG_CLUSTER}`, Values: clusters.slice(k, k + 200) }], k === 0)));
    }
    const snap: Snapshot = { asOf, covered: new Set(clusters), instances };
    const prev = this.#share.snapshot;
    if (!prev || prev.asOf.getTime() <= asOf.getTime()) this.#share.snapshot = snap;
    return snap;
  }

  /**
   * One cluster's listing from a snapshot, plus the instances this provider launched in the
   * last two minutes that the snapshot does not show yet (describes are eventually
   * consistent); then Elastic IPs for its running instances.
   */
  async #cut(clusterId: string, snap: Snapshot): Promise<Listing> {
    const prev = this.#cache.get(clusterId);
    if (prev && prev.asOf.getTime() >= snap.asOf.getTime()) return prev;
    const instances = snap.instances.filter((i) => i.tags[TAG_CLUSTER] === clusterId);
    const ids = new Set(instances.map((i) => i.instanceId));
    const now = this.#now();
    for (const [id, r] of this.#recent) {
      if (now - r.at > 120_000 || ids.has(id)) this.#recent.delete(id);
      else if (r.clusterId === clusterId) instances.push(r.inst);
    }
    const listing: Listing = { instances, asOf: snap.asOf };
    this.#cache.set(clusterId, listing);
    if (this.#cfg.eips.length > 0) {
      try {
        await this.#associateEips(clusterId, listing);
      } catch (e) {
        this.#log.warn({ err: e instanceof Error ? e.message : String(e) }, 'Elastic IP association failed; retried on the next listing');
      }
    }
    return listing;
  }

  /**
   * A listing no older than a minute for planning launches. When none can be had now
   * (throttled, network), the cached one or null: the spread is then planned on what is known,
   * and the caps that need a count (eips, quota) refuse the launch.
   */
  async #recentListing(clusterId: string): Promise<{ listing: Listing | null; error: ProviderError | null }> {
    const cached = this.#cache.get(clusterId);
    if (cached && this.#now() - cached.asOf.getTime() < 60_000) return { listing: cached, error: null };
    try {
      return { listing: await this.list(clusterId), error: null };
    } catch (e) {
      if (e instanceof ProviderError && e.retryable) return { listing: cached ?? null, error: e };
      throw e;
    }
  }

  /** DescribeInstances with these filters, every page. The first page's token was taken when `paid`. */
  async #describe(filters: Filter[], paid = false): Promise<ProviderInstance[]> {
    const out: ProviderInstance[] = [];
    let next: string | undefined;
    do {
      if (!paid) this.#share.budget.force();
      paid = false;
      const page = await this.#send('DescribeInstances', () =>
        this.#client.send(new DescribeInstancesCommand({ Filters: filters, MaxResults: this.#opts.describePageSize, NextToken: next })),
      );
      for (const r of page.Reservations ?? []) for (const i of r.Instances ?? []) out.push(toInstance(i));
      next = page.NextToken || undefined;
    } while (next);
    return out;
  }

  #upsertCache(clusterId: string, insts: readonly ProviderInstance[]): void {
    const now = this.#now();
    for (const i of insts) this.#recent.set(i.instanceId, { clusterId, inst: i, at: now });
    const cached = this.#cache.get(clusterId);
    if (!cached) return;
    const byId = new Map(cached.instances.map((i) => [i.instanceId, i]));
    for (const i of insts) byId.set(i.instanceId, i);
    this.#cache.set(clusterId, { instances: [...byId.values()], asOf: cached.asOf });
  }

  // ---- terminate --------------------------------------------------------------------------

  async terminate(clusterId: string, instanceIds: readonly string[]): Promise<string[]> {
    const ids = [...new Set(instanceIds.filter((id) => typeof id === 'string' && id.length > 0))];
    if (ids.length === 0) return [];
    const log = this.#log;
    // Ownership is checked now, at the cloud, not from a cache: never terminate what we did not tag.
    const seen: ProviderInstance[] = [];
    for (let k = 0; k < ids.length; k += 200) {
      seen.push(
        ...(await this.#describe([
          { Name: 'instance-id', Values: ids.slice(k, k + 200) },
          { Name: `tag:${TAG_CLUSTER}`, Values: [clusterId] },
        ])),
      );
    }
    const owned = seen.filter((i) => ids.includes(i.instanceId) && i.tags[TAG_CLUSTER] === clusterId && i.tags[TAG_MANAGED] === 'true');
    const refused = ids.filter((id) => !owned.some((o) => o.instanceId === id));
    if (refused.length > 0) log.warn({ instanceIds: refused }, 'not terminating instances that do not carry this cluster\'s ownership tag');
    const done = owned.filter((i) => i.state === 'terminated').map((i) => i.instanceId);
    const live = owned.filter((i) => i.state !== 'terminated').map((i) => i.instanceId);
    const states = new Map<string, InstanceState>();
    for (let k = 0; k < live.length; k += 1000) {
      const chunk = live.slice(k, k + 1000);
      const out = await this.#retrying(() => this.#send('TerminateInstances', () => this.#client.send(new TerminateInstancesCommand({ InstanceIds: chunk }))));
      for (const s of out.TerminatingInstances ?? []) {
        const st = s.CurrentState?.Name as InstanceState | undefined;
        if (s.InstanceId && (st === 'shutting-down' || st === 'terminated')) {
          done.push(s.InstanceId);
          states.set(s.InstanceId, st);
        }
      }
    }
    if (live.length > 0) log.info({ instanceIds: [...states.keys()] }, 'instances terminated');
    for (const [id, st] of states) {
      const r = this.#recent.get(id);
      if (r) r.inst = { ...r.inst, state: st };
    }
    const cached = this.#cache.get(clusterId);
    if (cached) {
      this.#cache.set(clusterId, {
        asOf: cached.asOf,
        instances: cached.instances.map((i) => (states.has(i.instanceId) ? { ...i, state: states.get(i.instanceId)! } : i)),
      });
    }
    for (const id of done) this.#eipOf.delete(id);
    return done;
  }

  // ---- Elastic IPs ------------------------------------------------------------------------

  /**
   * Gives every running instance of the cluster an Elastic IP from `eips` that is not
   * associated yet (AllowReassociation=false: an address in use elsewhere is never taken).
   * DescribeAddresses is called only while some running instance has no known address, and
   * at most every `addressesIntervalMs`.
   */
  async #associateEips(clusterId: string, listing: Listing): Promise<void> {
    const alive = new Set(listing.instances.filter((i) => ALIVE_STATES.has(i.state)).map((i) => i.instanceId));
    for (const id of this.#eipOf.keys()) if (!alive.has(id)) this.#eipOf.delete(id);
    const needy = () =>
      listing.instances.filter((i) => i.state === 'running' && !this.#eipOf.has(i.instanceId)).sort((a, b) => a.launchedAt.getTime() - b.launchedAt.getTime());
    if (needy().length === 0) {
      this.#eipShortage = 0;
      return;
    }
    const now = this.#now();
    if (now - this.#addressesAt < this.#opts.addressesIntervalMs) return;
    this.#addressesAt = now;
    const allocs = this.#cfg.eips.filter((e) => e.startsWith('eipalloc-'));
    const ips = this.#cfg.eips.filter((e) => !e.startsWith('eipalloc-'));
    const addresses: Address[] = [];
    for (const [name, values] of [['allocation-id', allocs], ['public-ip', ips]] as const) {
      if (values.length === 0) continue;
      const out = await this.#send('DescribeAddresses', () => this.#client.send(new DescribeAddressesCommand({ Filters: [{ Name: name, Values: [...values] }] })));
      addresses.push(...(out.Addresses ?? []));
    }
    for (const a of addresses) if (a.InstanceId && a.AllocationId) this.#eipOf.set(a.InstanceId, a.AllocationId);
    const free = addresses.filter((a) => !a.AssociationId && !a.InstanceId && a.AllocationId);
    const want = needy();
    for (const inst of want) {
      const addr = free.shift();
      if (!addr) break;
      try {
        await this.#send('AssociateAddress', () =>
          this.#client.send(new AssociateAddressCommand({ AllocationId: addr.AllocationId, InstanceId: inst.instanceId, AllowReassociation: false })),
        );
        this.#eipOf.set(inst.instanceId, addr.AllocationId!);
        inst.publicIp = addr.PublicIp ?? inst.publicIp;
        this.#log.info({ instanceId: inst.instanceId, allocationId: addr.AllocationId }, 'Elastic IP associated');
      } catch (e) {
        this.#log.warn({ instanceId: inst.instanceId, allocationId: addr.AllocationId, err: e instanceof Error ? e.message : String(e) }, 'Elastic IP association failed');
      }
    }
    this.#eipShortage = needy().length;
    if (this.#eipShortage > 0) this.#log.error({ instances: this.#eipShortage }, 'running instances without a free Elastic IP from eips');
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}

function toInstance(i: Instance): ProviderInstance {
  const tags: Record<string, string> = {};
  for (const t of i.Tags ?? []) if (t.Key !== undefined) tags[t.Key] = t.Value ?? '';
  const out: ProviderInstance = {
    instanceId: i.InstanceId ?? '',
    state: (i.State?.Name ?? 'pending') as InstanceState,
    launchedAt: i.LaunchTime ?? new Date(0),
    tags,
  };
  if (i.SubnetId) out.subnetId = i.SubnetId;
  if (i.Placement?.AvailabilityZone) out.availabilityZone = i.Placement.AvailabilityZone;
  if (i.InstanceType) out.instanceType = i.InstanceType;
  if (i.PrivateIpAddress) out.privateIp = i.PrivateIpAddress;
  if (i.PublicIpAddress) out.publicIp = i.PublicIpAddress;
  if (tags[TAG_INTENT]) out.intentId = tags[TAG_INTENT];
  if (i.ClientToken) out.clientToken = i.ClientToken;
  return out;
}
