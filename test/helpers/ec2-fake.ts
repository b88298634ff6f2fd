/**
 * A fake EC2 endpoint on 127.0.0.1 that speaks the EC2 Query protocol well enough for the
 * real @aws-sdk/client-ec2 to talk to it: form-encoded POSTs (`Action=…&Version=2016-11-15`),
 * SigV4-signed (checked against the credentials it was given), XML replies in the EC2
 * namespace, and EC2's error envelope
 * `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>` with
 * EC2's HTTP statuses (400 client errors, 401/403 auth, 500 capacity and internal errors,
 * 503 throttling and unavailability).
 *
 * Actions: RunInstances (ClientToken idempotency as EC2 documents it: same token and same
 * parameters → the same reservation; other parameters → IdempotentParameterMismatch; every
 * instance of the token terminated → IdempotentInstanceTerminated; failed calls do not bind a
 * token), DescribeInstances (filters, InstanceId.N, pagination), TerminateInstances,
 * AssociateAddress, DescribeAddresses.
 *
 * Every request is recorded with its form fields both flat (`TagSpecification.1.Tag.2.Key`)
 * and nested (`body.TagSpecification[0].Tag[1].Key`) for field-by-field assertions. Faults are
 * injected per action: error replies, capacity errors per subnet/zone/type, an account
 * instance limit, throttling (fixed count or an EC2-like token bucket), slow replies, and
 * replies dropped after the action took effect.
 *
 * State transitions are deterministic: with `autoRun` (default) an instance launched by one
 * request is `running` from the next request on, and a terminated one goes `shutting-down` →
 * `terminated` the same way.
 */
import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../../lib/clock.ts';

export type FakeState = 'pending' | 'running' | 'shutting-down' | 'terminated' | 'stopping' | 'stopped';
const STATE_CODE: Record<FakeState, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

/** Nested form fields: numeric path segments become (0-based) arrays. */
export type FormValue = string | FormValue[] | { [k: string]: FormValue };

export interface RecordedRequest {
  action: string;
  /** Every form field as sent, e.g. `{ 'TagSpecification.1.Tag.2.Key': 'gantry:cluster-id' }`. */
  params: Record<string, string>;
  /** The same, nested: `body.TagSpecification[0].Tag[1].Key`. */
  body: Record<string, FormValue>;
  /** From the SigV4 credential scope. */
  accessKeyId: string | null;
  region: string | null;
  at: Date;
}

export interface FakeInstance {
  instanceId: string;
  reservationId: string;
  imageId: string;
  instanceType: string;
  state: FakeState;
  launchTime: Date;
  availabilityZone: string;
  subnetId?: string;
  vpcId?: string;
  privateIp: string;
  publicIp?: string;
  keyName?: string;
  securityGroupIds: string[];
  securityGroups: string[];
  iamInstanceProfileArn?: string;
  blockDevices: { deviceName: string; volumeId: string; deleteOnTermination: boolean }[];
  tags: Record<string, string>;
  volumeTags: Record<string, string>;
  clientToken?: string;
  /** Decoded user data. */
  userData?: string;
  amiLaunchIndex: number;
  /** Sequence number of the request that last changed its state (drives autoRun). */
  changedAt: number;
}

export interface FakeAddress {
  allocationId: string;
  publicIp: string;
  associationId?: string;
  instanceId?: string;
}

export interface Fault {
  /** Action the fault applies to, or `*` for every action. */
  action: string;
  /** Answer with this EC2 error code instead of acting. */
  code?: string;
  message?: string;
  /** HTTP status; defaults to EC2's for the code. */
  status?: number;
  /** Act, then drop the connection without a reply (a reply lost on the way back). */
  drop?: boolean;
  /** Act, then reply after this many (real) milliseconds. */
  delayMs?: number;
  /** How many requests it hits; default 1. Infinity for a lasting fault. */
  times?: number;
  /** Only requests for which this is true. */
  when?: (req: RecordedRequest) => boolean;
}

export interface Ec2FakeOptions {
  region?: string;
  /** Access key id → secret. Requests must be signed with one of them. Default: any signed request. */
  credentials?: Record<string, string>;
  /** Known subnets and their zones. When set, other subnet ids are InvalidSubnetID.NotFound. */
  subnets?: Record<string, string>;
  /** Known zones (for Placement.AvailabilityZone). Default: the region + a, b, c. */
  zones?: string[];
  clock?: Clock;
  autoRun?: boolean;
}

const NS = 'http://ec2.amazonaws.com/doc/2016-11-15/';
const VERSION = '2016-11-15';
const OWNER = '123456789012';

/** EC2's HTTP status for an error code (its error reference: server errors 500/503, auth 401/403). */
export function statusFor(code: string): number {
  if (/^Insufficient.*Capacity$/.test(code) || code === 'InternalError' || code === 'InternalFailure') return 500;
  if (code === 'RequestLimitExceeded' || code === 'Unavailable' || code === 'ServiceUnavailable') return 503;
  if (code === 'AuthFailure') return 401;
  if (code === 'SignatureDoesNotMatch' || code === 'UnauthorizedOperation') return 403;
  return 400;
}

class Ec2Error extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
const el = (name: string, v: string | number | boolean | undefined | null) => (v === undefined || v === null ? '' : `<${name}>${esc(String(v))}</${name}>`);
const set = (name: string, items: string[]) => (items.length === 0 ? `<${name}/>` : `<${name}>${items.map((i) => `<item>${i}</item>`).join('')}</${name}>`);
const hex = (n: number) => randomBytes(n).toString('hex');

/** Turns `A.1.B.2.C=v` fields into `{ A: [{ B: [undefined, { C: 'v' }] }] }` (1-based → 0-based). */
export function nestForm(params: Record<string, string>): Record<string, FormValue> {
  const root: Record<string, FormValue> = {};
  for (const [k, v] of Object.entries(params)) {
    const parts = k.split('.');
    let cur: FormValue = root;
    parts.forEach((p, i) => {
      const key: string | number = /^\d+$/.test(p) ? Number(p) - 1 : p;
      const c = cur as Record<string | number, FormValue>;
      if (i === parts.length - 1) c[key] = v;
      else {
        c[key] ??= /^\d+$/.test(parts[i + 1]!) ? [] : {};
        cur = c[key]!;
      }
    });
  }
  return root;
}

/** Values of a numbered list field: `list(params, 'InstanceId')` → InstanceId.1, InstanceId.2, … */
function list(params: Record<string, string>, prefix: string): string[] {
  const out: string[] = [];
  for (let i = 1; params[`${prefix}.${i}`] !== undefined; i++) out.push(params[`${prefix}.${i}`]!);
  return out;
}

function filters(params: Record<string, string>): { name: string; values: string[] }[] {
  const out: { name: string; values: string[] }[] = [];
  for (let i = 1; params[`Filter.${i}.Name`] !== undefined; i++) out.push({ name: params[`Filter.${i}.Name`]!, values: list(params, `Filter.${i}.Value`) });
  return out;
}

function hmac(key: Buffer | string, s: string): Buffer {
  return createHmac('sha256', key).update(s, 'utf8').digest();
}

export class Ec2Fake {
  readonly region: string;
  readonly requests: RecordedRequest[] = [];
  readonly instances = new Map<string, FakeInstance>();
  readonly addresses: FakeAddress[] = [];
  /** ClientToken → what it launched. */
  readonly tokens = new Map<string, { fingerprint: string; instanceIds: string[]; reservationId: string }>();
  instanceLimit: { limit: number; code: string } | null = null;
  readonly #server: http.Server;
  readonly #opts: Ec2FakeOptions;
  readonly #clock: Clock;
  #faults: (Fault & { left: number })[] = [];
  #buckets = new Map<string, { tokens: number; at: number; burst: number; perSecond: number }>();
  #seq = 0;
  #ip = 10;
  #endpoint = '';

  private constructor(opts: Ec2FakeOptions) {
    this.#opts = opts;
    this.region = opts.region ?? 'us-east-1';
    this.#clock = opts.clock ?? systemClock;
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    // The SDK keeps connections alive; with Node's 5 s default the server may close an idle
    // one just as the SDK sends on it (ECONNRESET, a request the fake never sees), which
    // makes counts of calls depend on wall-clock gaps. Idle connections stay until close().
    this.#server.keepAliveTimeout = 0;
  }

  static async start(opts: Ec2FakeOptions = {}): Promise<Ec2Fake> {
    const f = new Ec2Fake(opts);
    await new Promise<void>((resolve) => f.#server.listen(0, '127.0.0.1', resolve));
    f.#endpoint = `http://127.0.0.1:${(f.#server.address() as AddressInfo).port}`;
    return f;
  }

  get endpoint(): string {
    return this.#endpoint;
  }

  /** The recorded requests of one action, oldest first. */
  calls(action: string): RecordedRequest[] {
    return this.requests.filter((r) => r.action === action);
  }

  /** Adds a fault; returns a function that removes it. */
  inject(f: Fault): () => void {
    const entry = { ...f, left: f.times ?? 1 };
    this.#faults.push(entry);
    return () => {
      this.#faults = this.#faults.filter((x) => x !== entry);
    };
  }

  /** RunInstances into this subnet / zone / type fails with a capacity error until cleared. */
  capacity(where: { subnetId?: string; availabilityZone?: string; instanceType?: string }, code = 'InsufficientInstanceCapacity'): () => void {
    return this.inject({
      action: 'RunInstances',
      code,
      times: Infinity,
      when: (r) =>
        (where.subnetId === undefined || r.params.SubnetId === where.subnetId) &&
        (where.availabilityZone === undefined || this.#zoneOf(r.params) === where.availabilityZone) &&
        (where.instanceType === undefined || (r.params.InstanceType ?? 'm1.small') === where.instanceType),
      message: `We currently do not have sufficient ${where.instanceType ?? 'instance'} capacity in the Availability Zone you requested. Our system will be working on provisioning additional capacity.`,
    });
  }

  /** The account's running-instance limit (InstanceLimitExceeded or VcpuLimitExceeded past it). */
  setInstanceLimit(limit: number | null, code = 'InstanceLimitExceeded'): void {
    this.instanceLimit = limit === null ? null : { limit, code };
  }

  /** The next `times` calls of `action` are throttled (RequestLimitExceeded, 503). */
  throttle(action: string, times = 1): () => void {
    return this.inject({ action, code: 'RequestLimitExceeded', message: 'Request limit exceeded.', times });
  }

  /** An EC2-like token bucket for `action` on the fake's clock: calls past it are throttled. */
  rateLimit(action: string, burst: number, perSecond: number): void {
    this.#buckets.set(action, { tokens: burst, at: this.#clock.now().getTime(), burst, perSecond });
  }

  /** Adds an instance as if launched by someone else (no tags unless given). */
  addInstance(p: Partial<FakeInstance> = {}): FakeInstance {
    const inst = this.#newInstance({ reservationId: `r-${hex(8)}`, instanceType: 't3.micro', imageId: 'ami-other', availabilityZone: `${this.region}a`, amiLaunchIndex: 0, ...p });
    inst.state = p.state ?? 'running';
    this.instances.set(inst.instanceId, inst);
    return inst;
  }

  addAddress(p: Partial<FakeAddress> & { publicIp: string }): FakeAddress {
    const a: FakeAddress = { allocationId: `eipalloc-${hex(8)}`, ...p };
    if (a.instanceId) {
      a.associationId ??= `eipassoc-${hex(8)}`;
      const inst = this.instances.get(a.instanceId);
      if (inst) inst.publicIp = a.publicIp;
    }
    this.addresses.push(a);
    return a;
  }

  /** Changes an instance's state out of band (console stop, spot reclaim). */
  setState(instanceId: string, state: FakeState): void {
    const inst = this.instances.get(instanceId);
    if (!inst) throw new Error(`no instance ${instanceId}`);
    inst.state = state;
    inst.changedAt = this.#seq;
  }

  /** Instances in one of these states (default: not terminated). */
  live(states: FakeState[] = ['pending', 'running', 'stopping', 'stopped', 'shutting-down']): FakeInstance[] {
    return [...this.instances.values()].filter((i) => states.includes(i.state));
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  // ---- request handling ---------------------------------------------------------------------

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const params = Object.fromEntries(new URLSearchParams(raw.toString('utf8')));
    const seq = ++this.#seq;
    const auth = this.#authenticate(req, raw);
    const rec: RecordedRequest = {
      action: params.Action ?? '',
      params,
      body: nestForm(Object.fromEntries(Object.entries(params).filter(([k]) => k !== 'Action' && k !== 'Version'))),
      accessKeyId: auth.accessKeyId,
      region: auth.region,
      at: this.#clock.now(),
    };
    this.requests.push(rec);
    if (this.#opts.autoRun !== false) this.#advance(seq);
    const requestId = randomUUID();
    const reply = (status: number, xml: string) => {
      if (res.destroyed) return;
      res.writeHead(status, { 'content-type': 'text/xml;charset=UTF-8', 'x-amzn-requestid': requestId });
      res.end(`<?xml version="1.0" encoding="UTF-8"?>\n${xml}`);
    };
    const fail = (code: string, message: string, status = statusFor(code)) =>
      reply(status, `<Response><Errors><Error>${el('Code', code)}${el('Message', message)}</Error></Errors>${el('RequestID', requestId)}</Response>`);

    if (auth.error) return fail(auth.error.code, auth.error.message);
    if (req.method !== 'POST') return fail('InvalidAction', 'The EC2 Query API takes POST here.');
    if (params.Version !== VERSION) return fail('NoSuchVersion', `An invalid or unsupported version was specified: ${params.Version ?? '(none)'}`);
    const fault = this.#faults.find((f) => f.left > 0 && (f.action === '*' || f.action === rec.action) && (!f.when || f.when(rec)));
    if (fault) fault.left -= 1;
    if (fault?.code) return fail(fault.code, fault.message ?? fault.code, fault.status);
    const bucket = this.#buckets.get(rec.action);
    if (bucket) {
      const now = this.#clock.now().getTime();
      bucket.tokens = Math.min(bucket.burst, bucket.tokens + ((now - bucket.at) / 1000) * bucket.perSecond);
      bucket.at = now;
      if (bucket.tokens < 1) return fail('RequestLimitExceeded', 'Request limit exceeded.');
      bucket.tokens -= 1;
    }
    let xml: string;
    try {
      xml = this.#act(rec, requestId, seq);
    } catch (e) {
      if (e instanceof Ec2Error) return fail(e.code, e.message);
      return fail('InternalError', 'An internal error has occurred');
    }
    if (fault?.drop) {
      req.socket.destroy();
      return;
    }
    if (fault?.delayMs) await new Promise((r) => setTimeout(r, fault.delayMs));
    reply(200, xml);
  }

  /** Checks the SigV4 header; with `credentials`, recomputes the signature. */
  #authenticate(req: http.IncomingMessage, raw: Buffer): { accessKeyId: string | null; region: string | null; error?: Ec2Error } {
    const h = req.headers.authorization ?? '';
    const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/ec2\/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$/.exec(h);
    if (!m) return { accessKeyId: null, region: null, error: new Ec2Error('AuthFailure', 'AWS was not able to validate the provided access credentials') };
    const [, akid, date, region, signed, signature] = m as unknown as [string, string, string, string, string, string];
    if (region !== this.region) return { accessKeyId: akid, region, error: new Ec2Error('AuthFailure', `Credential should be scoped to a valid region, not '${region}'.`) };
    const creds = this.#opts.credentials;
    if (creds) {
      const secret = creds[akid];
      if (secret === undefined) return { accessKeyId: akid, region, error: new Ec2Error('AuthFailure', 'AWS was not able to validate the provided access credentials') };
      const payloadHash = createHash('sha256').update(raw).digest('hex');
      if ((req.headers['x-amz-content-sha256'] ?? payloadHash) !== payloadHash) {
        return { accessKeyId: akid, region, error: new Ec2Error('SignatureDoesNotMatch', 'The provided payload hash does not match the body.') };
      }
      const names = signed.split(';');
      const canonicalHeaders = names.map((n) => `${n}:${String(req.headers[n] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
      const canonical = [req.method, req.url?.split('?')[0] ?? '/', req.url?.split('?')[1] ?? '', canonicalHeaders, signed, payloadHash].join('\n');
      const amzDate = String(req.headers['x-amz-date'] ?? '');
      const sts = ['AWS4-HMAC-SHA256', amzDate, `${date}/${region}/ec2/aws4_request`, createHash('sha256').update(canonical).digest('hex')].join('\n');
      const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), 'ec2'), 'aws4_request');
      if (hmac(key, sts).toString('hex') !== signature) {
        return { accessKeyId: akid, region, error: new Ec2Error('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.') };
      }
    }
    return { accessKeyId: akid, region };
  }

  /** pending → running and shutting-down → terminated for instances changed by an earlier request. */
  #advance(seq: number): void {
    for (const i of this.instances.values()) {
      if (i.changedAt >= seq) continue;
      if (i.state === 'pending') i.state = 'running';
      else if (i.state === 'shutting-down') i.state = 'terminated';
      else continue;
      i.changedAt = seq;
    }
  }

  #act(rec: RecordedRequest, requestId: string, seq: number): string {
    switch (rec.action) {
      case 'RunInstances':
        return this.#runInstances(rec.params, requestId, seq);
      case 'DescribeInstances':
        return this.#describeInstances(rec.params, requestId);
      case 'TerminateInstances':
        return this.#terminateInstances(rec.params, requestId, seq);
      case 'AssociateAddress':
        return this.#associateAddress(rec.params, requestId);
      case 'DescribeAddresses':
        return this.#describeAddresses(rec.params, requestId);
      default:
        throw new Ec2Error('InvalidAction', `The action ${rec.action || '(none)'} is not valid for this web service.`);
    }
  }

  #zoneOf(p: Record<string, string>): string {
    if (p.SubnetId) return this.#opts.subnets?.[p.SubnetId] ?? `${this.region}a`;
    return p['Placement.AvailabilityZone'] ?? this.#opts.zones?.[0] ?? `${this.region}a`;
  }

  #newInstance(p: Partial<FakeInstance> & Pick<FakeInstance, 'reservationId' | 'instanceType' | 'imageId' | 'availabilityZone' | 'amiLaunchIndex'>): FakeInstance {
    this.#ip += 1;
    return {
      instanceId: `i-${hex(9).slice(0, 17)}`,
      state: 'pending',
      launchTime: this.#clock.now(),
      privateIp: `10.0.${Math.floor(this.#ip / 250)}.${this.#ip % 250}`,
      securityGroupIds: [],
      securityGroups: [],
      blockDevices: [{ deviceName: '/dev/xvda', volumeId: `vol-${hex(9).slice(0, 17)}`, deleteOnTermination: true }],
      tags: {},
      volumeTags: {},
      changedAt: this.#seq,
      ...p,
    };
  }

  #runInstances(p: Record<string, string>, requestId: string, seq: number): string {
    const token = p.ClientToken;
    const { ClientToken: _t, Action: _a, Version: _v, ...rest } = p;
    const fingerprint = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
    if (token !== undefined) {
      if (token.length > 64) throw new Ec2Error('InvalidParameterValue', 'ClientToken must be at most 64 characters.');
      const prev = this.tokens.get(token);
      if (prev) {
        if (prev.fingerprint !== fingerprint) throw new Ec2Error('IdempotentParameterMismatch', 'Arguments on this idempotent request are inconsistent with arguments used in previous request(s).');
        const insts = prev.instanceIds.map((id) => this.instances.get(id)!);
        if (insts.every((i) => i.state === 'terminated')) throw new Ec2Error('IdempotentInstanceTerminated', 'The instances launched with this client token have been terminated.');
        return this.#reservationXml('RunInstancesResponse', requestId, prev.reservationId, insts);
      }
    }
    if (!p.ImageId) throw new Ec2Error('MissingParameter', 'The request must contain the parameter ImageId');
    const min = Number(p.MinCount);
    const max = Number(p.MaxCount);
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max < min) {
      throw new Ec2Error('InvalidParameterValue', `Invalid MinCount/MaxCount: ${p.MinCount}/${p.MaxCount}`);
    }
    if (p.SubnetId && this.#opts.subnets && !(p.SubnetId in this.#opts.subnets)) {
      throw new Ec2Error('InvalidSubnetID.NotFound', `The subnet ID '${p.SubnetId}' does not exist`);
    }
    const zone = this.#zoneOf(p);
    const zones = this.#opts.zones ?? ['a', 'b', 'c'].map((s) => `${this.region}${s}`);
    if (!p.SubnetId && p['Placement.AvailabilityZone'] && !zones.includes(zone)) {
      throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${zone}]`);
    }
    const tags: Record<string, string> = {};
    const volumeTags: Record<string, string> = {};
    for (let i = 1; p[`TagSpecification.${i}.ResourceType`] !== undefined; i++) {
      const type = p[`TagSpecification.${i}.ResourceType`]!;
      const target = type === 'instance' ? tags : type === 'volume' ? volumeTags : null;
      if (!target) throw new Ec2Error('InvalidParameterValue', `'${type}' is not a valid taggable resource type for this operation.`);
      for (let j = 1; p[`TagSpecification.${i}.Tag.${j}.Key`] !== undefined; j++) {
        const k = p[`TagSpecification.${i}.Tag.${j}.Key`]!;
        if (/^aws:/i.test(k)) throw new Ec2Error('InvalidParameterValue', `Tag keys starting with 'aws:' are reserved for internal use`);
        target[k] = p[`TagSpecification.${i}.Tag.${j}.Value`] ?? '';
      }
    }
    if (Object.keys(tags).length > 50 || Object.keys(volumeTags).length > 50) throw new Ec2Error('TagLimitExceeded', 'The maximum number of tags per resource is 50.');
    let userData: string | undefined;
    if (p.UserData !== undefined) {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(p.UserData) || p.UserData.length % 4 !== 0) throw new Ec2Error('InvalidParameterValue', 'Invalid BASE64 encoding of user data.');
      const bytes = Buffer.from(p.UserData, 'base64');
      if (bytes.length > 16384) throw new Ec2Error('InvalidParameterValue', 'User data is limited to 16384 bytes');
      userData = bytes.toString('utf8');
    }
    let n = max;
    if (this.instanceLimit) {
      const running = this.live(['pending', 'running']).length;
      const room = this.instanceLimit.limit - running;
      if (room < min) {
        throw new Ec2Error(
          this.instanceLimit.code,
          `You have requested more instances (${min}) than your current instance limit of ${this.instanceLimit.limit} allows for the specified instance type.`,
        );
      }
      n = Math.min(max, room);
    }
    const reservationId = `r-${hex(9).slice(0, 17)}`;
    const iamName = p['IamInstanceProfile.Name'];
    const insts: FakeInstance[] = [];
    for (let k = 0; k < n; k++) {
      const inst = this.#newInstance({
        reservationId,
        imageId: p.ImageId,
        instanceType: p.InstanceType ?? 'm1.small',
        availabilityZone: zone,
        amiLaunchIndex: k,
        changedAt: seq,
        tags: { ...tags },
        volumeTags: { ...volumeTags },
      });
      if (p.SubnetId) {
        inst.subnetId = p.SubnetId;
        inst.vpcId = 'vpc-0fake';
      }
      if (p.KeyName) inst.keyName = p.KeyName;
      inst.securityGroupIds = list(p, 'SecurityGroupId');
      inst.securityGroups = list(p, 'SecurityGroup');
      if (p['IamInstanceProfile.Arn'] || iamName) inst.iamInstanceProfileArn = p['IamInstanceProfile.Arn'] ?? `arn:aws:iam::${OWNER}:instance-profile/${iamName}`;
      for (let b = 1; p[`BlockDeviceMapping.${b}.DeviceName`] !== undefined; b++) {
        if (p[`BlockDeviceMapping.${b}.NoDevice`] !== undefined || p[`BlockDeviceMapping.${b}.VirtualName`] !== undefined) continue;
        inst.blockDevices.push({
          deviceName: p[`BlockDeviceMapping.${b}.DeviceName`]!,
          volumeId: `vol-${hex(9).slice(0, 17)}`,
          deleteOnTermination: p[`BlockDeviceMapping.${b}.Ebs.DeleteOnTermination`] !== 'false',
        });
      }
      if (token !== undefined) inst.clientToken = token;
      if (userData !== undefined) inst.userData = userData;
      this.instances.set(inst.instanceId, inst);
      insts.push(inst);
    }
    if (token !== undefined) this.tokens.set(token, { fingerprint, instanceIds: insts.map((i) => i.instanceId), reservationId });
    return this.#reservationXml('RunInstancesResponse', requestId, reservationId, insts);
  }

  #describeInstances(p: Record<string, string>, requestId: string): string {
    const ids = list(p, 'InstanceId');
    const missing = ids.filter((id) => !this.instances.has(id));
    if (missing.length > 0) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance IDs '${missing.join(', ')}' do not exist`);
    let found = ids.length > 0 ? ids.map((id) => this.instances.get(id)!) : [...this.instances.values()];
    for (const f of filters(p)) {
      const has = (v: string | undefined) => v !== undefined && f.values.includes(v);
      let pred: (i: FakeInstance) => boolean;
      if (f.name === 'instance-id') pred = (i) => has(i.instanceId);
      else if (f.name === 'instance-state-name') pred = (i) => has(i.state);
      else if (f.name === 'client-token') pred = (i) => has(i.clientToken);
      else if (f.name === 'subnet-id') pred = (i) => has(i.subnetId);
      else if (f.name === 'availability-zone') pred = (i) => has(i.availabilityZone);
      else if (f.name === 'instance-type') pred = (i) => has(i.instanceType);
      else if (f.name === 'tag-key') pred = (i) => Object.keys(i.tags).some((k) => f.values.includes(k));
      else if (f.name.startsWith('tag:')) pred = (i) => has(i.tags[f.name.slice(4)]);
      else throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`);
      found = found.filter(pred);
    }
    let next: string | undefined;
    if (p.MaxResults !== undefined) {
      const max = Number(p.MaxResults);
      if (ids.length > 0) throw new Ec2Error('InvalidParameterCombination', 'The parameter instancesSet cannot be used with the parameter maxResults');
      if (!Number.isInteger(max) || max < 5 || max > 1000) throw new Ec2Error('InvalidParameterValue', `Value (${p.MaxResults}) for parameter maxResults is invalid. Expecting a value between 5 and 1000.`);
      const start = p.NextToken ? Number(Buffer.from(p.NextToken, 'base64').toString('utf8')) : 0;
      if (!Number.isInteger(start) || start < 0) throw new Ec2Error('InvalidParameterValue', 'The token is invalid.');
      if (start + max < found.length) next = Buffer.from(String(start + max)).toString('base64');
      found = found.slice(start, start + max);
    }
    const byRes = new Map<string, FakeInstance[]>();
    for (const i of found) byRes.set(i.reservationId, [...(byRes.get(i.reservationId) ?? []), i]);
    const reservations = [...byRes.entries()].map(
      ([rid, insts]) => `${el('reservationId', rid)}${el('ownerId', OWNER)}<groupSet/>${set('instancesSet', insts.map((i) => this.#instanceXml(i)))}`,
    );
    return `<DescribeInstancesResponse xmlns="${NS}">${el('requestId', requestId)}${set('reservationSet', reservations)}${el('nextToken', next)}</DescribeInstancesResponse>`;
  }

  #terminateInstances(p: Record<string, string>, requestId: string, seq: number): string {
    const ids = list(p, 'InstanceId');
    if (ids.length === 0) throw new Ec2Error('MissingParameter', 'The request must contain the parameter InstanceId');
    const missing = ids.filter((id) => !this.instances.has(id));
    if (missing.length > 0) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance IDs '${missing.join(', ')}' do not exist`);
    const items = ids.map((id) => {
      const i = this.instances.get(id)!;
      const prev = i.state;
      if (prev !== 'terminated' && prev !== 'shutting-down') {
        i.state = 'shutting-down';
        i.changedAt = seq;
        for (const a of this.addresses) {
          if (a.instanceId === id) {
            delete a.instanceId;
            delete a.associationId;
          }
        }
        delete i.publicIp;
      }
      return `${el('instanceId', id)}<currentState>${el('code', STATE_CODE[i.state])}${el('name', i.state)}</currentState><previousState>${el('code', STATE_CODE[prev])}${el('name', prev)}</previousState>`;
    });
    return `<TerminateInstancesResponse xmlns="${NS}">${el('requestId', requestId)}${set('instancesSet', items)}</TerminateInstancesResponse>`;
  }

  #associateAddress(p: Record<string, string>, requestId: string): string {
    const addr = p.AllocationId ? this.addresses.find((a) => a.allocationId === p.AllocationId) : this.addresses.find((a) => a.publicIp === p.PublicIp);
    if (!addr) {
      if (p.AllocationId) throw new Ec2Error('InvalidAllocationID.NotFound', `The allocation ID '${p.AllocationId}' does not exist`);
      throw new Ec2Error('InvalidAddress.NotFound', `Address '${p.PublicIp ?? ''}' not found.`);
    }
    const inst = p.InstanceId ? this.instances.get(p.InstanceId) : undefined;
    if (!inst) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${p.InstanceId ?? ''}' does not exist`);
    if (inst.state !== 'running') throw new Ec2Error('IncorrectInstanceState', `The instance '${inst.instanceId}' is not in a valid state for this operation.`);
    if (addr.instanceId && addr.instanceId !== inst.instanceId && p.AllowReassociation !== 'true') {
      throw new Ec2Error('Resource.AlreadyAssociated', `resource ${addr.allocationId} is already associated with associate-id ${addr.associationId}`);
    }
    if (addr.instanceId && addr.instanceId !== inst.instanceId) delete this.instances.get(addr.instanceId)?.publicIp;
    addr.instanceId = inst.instanceId;
    addr.associationId = `eipassoc-${hex(8)}`;
    inst.publicIp = addr.publicIp;
    return `<AssociateAddressResponse xmlns="${NS}">${el('requestId', requestId)}${el('return', true)}${el('associationId', addr.associationId)}</AssociateAddressResponse>`;
  }

  #describeAddresses(p: Record<string, string>, requestId: string): string {
    let found = [...this.addresses];
    const allocs = list(p, 'AllocationId');
    const ips = list(p, 'PublicIp');
    for (const id of allocs) if (!found.some((a) => a.allocationId === id)) throw new Ec2Error('InvalidAllocationID.NotFound', `The allocation ID '${id}' does not exist`);
    for (const ip of ips) if (!found.some((a) => a.publicIp === ip)) throw new Ec2Error('InvalidAddress.NotFound', `Address '${ip}' not found.`);
    if (allocs.length > 0) found = found.filter((a) => allocs.includes(a.allocationId));
    if (ips.length > 0) found = found.filter((a) => ips.includes(a.publicIp));
    for (const f of filters(p)) {
      const has = (v: string | undefined) => v !== undefined && f.values.includes(v);
      if (f.name === 'allocation-id') found = found.filter((a) => has(a.allocationId));
      else if (f.name === 'public-ip') found = found.filter((a) => has(a.publicIp));
      else if (f.name === 'instance-id') found = found.filter((a) => has(a.instanceId));
      else if (f.name === 'association-id') found = found.filter((a) => has(a.associationId));
      else if (f.name === 'domain') found = found.filter(() => f.values.includes('vpc'));
      else throw new Ec2Error('InvalidParameterValue', `The filter '${f.name}' is invalid`);
    }
    const items = found.map((a) => `${el('publicIp', a.publicIp)}${el('allocationId', a.allocationId)}${el('domain', 'vpc')}${el('instanceId', a.instanceId)}${el('associationId', a.associationId)}`);
    return `<DescribeAddressesResponse xmlns="${NS}">${el('requestId', requestId)}${set('addressesSet', items)}</DescribeAddressesResponse>`;
  }

  #reservationXml(root: string, requestId: string, reservationId: string, insts: FakeInstance[]): string {
    return `<${root} xmlns="${NS}">${el('requestId', requestId)}${el('reservationId', reservationId)}${el('ownerId', OWNER)}<groupSet/>${set('instancesSet', insts.map((i) => this.#instanceXml(i)))}</${root}>`;
  }

  #instanceXml(i: FakeInstance): string {
    const groups = [...i.securityGroupIds.map((g) => `${el('groupId', g)}${el('groupName', g)}`), ...i.securityGroups.map((g) => `${el('groupId', `sg-${createHash('sha1').update(g).digest('hex').slice(0, 8)}`)}${el('groupName', g)}`)];
    const bdm = i.blockDevices.map(
      (b) => `${el('deviceName', b.deviceName)}<ebs>${el('volumeId', b.volumeId)}${el('status', 'attached')}${el('attachTime', i.launchTime.toISOString())}${el('deleteOnTermination', b.deleteOnTermination)}</ebs>`,
    );
    return [
      el('instanceId', i.instanceId),
      el('imageId', i.imageId),
      `<instanceState>${el('code', STATE_CODE[i.state])}${el('name', i.state)}</instanceState>`,
      el('privateDnsName', `ip-${i.privateIp.replace(/\./g, '-')}.ec2.internal`),
      '<dnsName/>',
      el('keyName', i.keyName),
      el('amiLaunchIndex', i.amiLaunchIndex),
      el('instanceType', i.instanceType),
      el('launchTime', i.launchTime.toISOString()),
      `<placement>${el('availabilityZone', i.availabilityZone)}${el('tenancy', 'default')}</placement>`,
      `<monitoring>${el('state', 'disabled')}</monitoring>`,
      el('subnetId', i.subnetId),
      el('vpcId', i.vpcId),
      el('privateIpAddress', i.privateIp),
      el('ipAddress', i.publicIp),
      set('groupSet', groups),
      el('architecture', 'x86_64'),
      el('rootDeviceType', 'ebs'),
      el('rootDeviceName', '/dev/xvda'),
      set('blockDeviceMapping', bdm),
      i.iamInstanceProfileArn ? `<iamInstanceProfile>${el('arn', i.iamInstanceProfileArn)}${el('id', 'AIPAFAKEFAKEFAKE')}</iamInstanceProfile>` : '',
      el('clientToken', i.clientToken),
      set('tagSet', Object.entries(i.tags).map(([k, v]) => `${el('key', k)}${el('value', v)}`)),
      el('hypervisor', 'xen'),
    ].join('');
  }
}
