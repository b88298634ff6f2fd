/**
 * The `ec2` provider with the real @aws-sdk/client-ec2 against the fake EC2 Query endpoint
 * (test/helpers/ec2-fake.ts): every request goes over HTTP to 127.0.0.1, SigV4-signed with
 * dummy credentials the fake verifies, and is asserted field by field as the fake parsed it.
 */
import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import t, { type Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { createLogger } from '../../../lib/logger.ts';
import { DescribeShare, Ec2Provider, TokenBucket, clientToken, type Ec2ProviderOptions, type Ec2Settings } from '../../../autoscaler/providers/ec2.ts';
import { reconcile } from '../../../autoscaler/providers/reconcile.ts';
import { CapacityError, ProviderError, QuotaError, TAG_CLUSTER, TAG_INTENT, TAG_MANAGED, ThrottledError } from '../../../autoscaler/providers/types.ts';
import { Ec2Fake, type Ec2FakeOptions, type FormValue } from '../../helpers/ec2-fake.ts';

const AKID = 'AKIDGANTRYTEST0000001';
const SECRET = 'dummy-secret-Zq9x+never/logged';
const REGION = 'eu-west-1';
const CL = '65a1b2c3d4e5f60718293a4b';
const SUBNETS = { 'subnet-aaaa': 'eu-west-1a', 'subnet-bbbb': 'eu-west-1b', 'subnet-cccc': 'eu-west-1c' };
const TYPE = 'c5.large';

interface Setup {
  fake: Ec2Fake;
  p: Ec2Provider;
  clock: ManualClock;
  logs: string[];
  provider(settings?: Partial<Ec2Settings>, opts?: Partial<Ec2ProviderOptions>): Ec2Provider;
}

async function setup(t: Test, settings: Partial<Ec2Settings> = {}, opts: Partial<Ec2ProviderOptions> = {}, fakeOpts: Ec2FakeOptions = {}): Promise<Setup> {
  const clock = new ManualClock(Date.UTC(2026, 5, 1, 9));
  const fake = await Ec2Fake.start({ region: REGION, credentials: { [AKID]: SECRET }, subnets: SUBNETS, clock, ...fakeOpts });
  const logs: string[] = [];
  const log = createLogger({
    level: 'debug',
    name: 'ec2-test',
    destination: new Writable({
      write(chunk, _enc, cb) {
        logs.push(String(chunk));
        cb();
      },
    }),
  });
  const made: Ec2Provider[] = [];
  const provider = (s: Partial<Ec2Settings> = {}, o: Partial<Ec2ProviderOptions> = {}) => {
    const p = new Ec2Provider(
      { region: REGION, access_key_id: AKID, secret_access_key: SECRET, instance_type: TYPE, image_id: 'ami-0f1e2d3c4b5a69788', ...settings, ...s },
      { endpoint: fake.endpoint, clock, log, random: () => 1, retryDelayMs: 5, describeShare: new DescribeShare(new TokenBucket(1000, 1000, clock)), ...opts, ...o },
    );
    made.push(p);
    return p;
  };
  const p = provider();
  t.teardown(async () => {
    for (const x of made) await x.close();
    await fake.close();
  });
  return { fake, p, clock, logs, provider };
}

const spec = (intentId: string, count: number, extra: object = {}) => ({ clusterId: CL, intentId, count, userData: '#cloud-config\nwrite_files: []\n', ...extra });
const tagsOf = (tagSpec: FormValue | undefined): Record<string, string> =>
  Object.fromEntries(((tagSpec as { Tag: { Key: string; Value: string }[] }).Tag ?? []).map((x) => [x.Key, x.Value]));
const get = (v: FormValue | undefined, ...path: (string | number)[]): FormValue | undefined =>
  path.reduce<FormValue | undefined>((acc, k) => (acc as Record<string | number, FormValue> | undefined)?.[k], v);

t.test('RunInstances carries every field of the cluster settings, one call per subnet', async (t) => {
  const { fake, p } = await setup(t, {
    subnet_ids: ['subnet-aaaa', 'subnet-bbbb', 'subnet-cccc', ''],
    security_group_ids: ['sg-0aaa', 'sg-0bbb'],
    security_groups: [''],
    key_name: 'ops-key',
    iam_instance_profile: { name: 'ignored-when-arn-given', arn: 'arn:aws:iam::123456789012:instance-profile/gantry-runner' },
    block_device_mappings: [
      { device_name: '/dev/xvdb', no_device: '', virtual_name: '', ebs: { volume_size: 100, volume_type: 'gp3', iops: 3000, encrypted: true, delete_on_termination: true, snapshot_id: '' } },
      { device_name: '/dev/sdc', no_device: 'true' },
      { device_name: '/dev/sdd', virtual_name: 'ephemeral0' },
    ],
    tags: { Name: 'runner fleet', team: 'data', [TAG_CLUSTER]: 'user-tries-to-override' },
  });
  const userData = '#cloud-config\n# ünïcode and "quotes" & <angle>\n' + 'x'.repeat(3000) + '\n';
  const out = await p.launch({ clusterId: CL, intentId: `${CL}-intent-1`, count: 3, userData });
  t.equal(out.instances.length, 3);
  t.notOk(out.shortfall);

  const calls = fake.calls('RunInstances');
  t.equal(calls.length, 3, 'one RunInstances per subnet');
  t.same(calls.map((c) => c.params.SubnetId).sort(), ['subnet-aaaa', 'subnet-bbbb', 'subnet-cccc'], 'uniform spread: one instance per subnet');
  const tokens = new Set<string>();
  for (const c of calls) {
    const b = c.body;
    t.equal(c.accessKeyId, AKID, 'signed with the cluster key (the fake verified the SigV4 signature)');
    t.equal(c.region, REGION);
    t.equal(b.MinCount, '1');
    t.equal(b.MaxCount, '1');
    t.equal(b.ImageId, 'ami-0f1e2d3c4b5a69788');
    t.equal(b.InstanceType, TYPE);
    t.equal(b.KeyName, 'ops-key');
    t.equal(b.ClientToken, clientToken(`${CL}-intent-1`, [String(b.SubnetId), TYPE, '']), 'token derived from intent, subnet and type');
    t.ok(String(b.ClientToken).startsWith(`${CL}-intent-1.`));
    t.ok(String(b.ClientToken).length <= 64);
    tokens.add(String(b.ClientToken));
    t.same(b.SecurityGroupId, ['sg-0aaa', 'sg-0bbb']);
    t.equal(b.SecurityGroup, undefined, 'empty security group names are not sent');
    t.same(b.IamInstanceProfile, { Arn: 'arn:aws:iam::123456789012:instance-profile/gantry-runner' });
    t.equal(b.Placement, undefined, 'subnets decide the zone');
    t.same(b.BlockDeviceMapping, [
      { DeviceName: '/dev/xvdb', Ebs: { VolumeSize: '100', VolumeType: 'gp3', Iops: '3000', Encrypted: 'true', DeleteOnTermination: 'true' } },
      { DeviceName: '/dev/sdc', NoDevice: '' },
      { DeviceName: '/dev/sdd', VirtualName: 'ephemeral0' },
    ]);
    t.equal(Buffer.from(String(b.UserData), 'base64').toString('utf8'), userData, 'user data is base64 of the rendered text');
    const specs = b.TagSpecification as FormValue[];
    t.same(
      specs.map((s) => get(s, 'ResourceType')),
      ['instance', 'volume'],
    );
    const want = { Name: 'runner fleet', team: 'data', [TAG_CLUSTER]: CL, [TAG_MANAGED]: 'true', [TAG_INTENT]: `${CL}-intent-1` };
    t.same(tagsOf(specs[0]), want, 'instance tags: ownership tags win over the cluster tags');
    t.same(tagsOf(specs[1]), want, 'volume tags: the same');
  }
  t.equal(tokens.size, 3, 'every call has its own token');

  for (const i of out.instances) {
    const f = fake.instances.get(i.instanceId)!;
    t.equal(f.userData, userData);
    t.equal(f.tags[TAG_CLUSTER], CL);
    t.equal(f.volumeTags[TAG_CLUSTER], CL);
    t.same(f.blockDevices.map((d) => d.deviceName), ['/dev/xvda', '/dev/xvdb']);
    t.equal(i.state, 'pending');
    t.equal(i.intentId, `${CL}-intent-1`);
    t.equal(i.availabilityZone, SUBNETS[i.subnetId as keyof typeof SUBNETS]);
    t.equal(i.clientToken, f.clientToken);
    t.match(i.privateIp, /^10\.0\./);
  }
});

t.test('one pool: the ClientToken is the intent id; zones spread through Placement; profile by name; default Name tag', async (t) => {
  const { fake, provider } = await setup(t);
  const single = provider({ iam_instance_profile: { name: 'gantry-runner', arn: '' }, tags: {} });
  const out = await single.launch(spec('intent-single', 2));
  t.equal(out.instances.length, 2);
  const [c] = fake.calls('RunInstances');
  t.equal(c!.body.ClientToken, 'intent-single');
  t.equal(c!.body.MinCount, '2');
  t.equal(c!.body.MaxCount, '2');
  t.equal(c!.body.SubnetId, undefined);
  t.equal(c!.body.Placement, undefined);
  t.same(c!.body.IamInstanceProfile, { Name: 'gantry-runner' });
  t.equal(tagsOf(get(c!.body.TagSpecification, 0)).Name, `gantry runner (cluster ${CL})`, 'no cluster tags → a default Name');

  const zoned = provider({ availability_zones: ['eu-west-1a', 'eu-west-1b'] });
  await zoned.launch({ ...spec('intent-zones', 4), clusterId: 'zoned-cluster' });
  const zcalls = fake.calls('RunInstances').slice(1);
  t.same(zcalls.map((z) => [get(z.body.Placement, 'AvailabilityZone'), z.body.MinCount, z.body.MaxCount]).sort(), [
    ['eu-west-1a', '2', '2'],
    ['eu-west-1b', '2', '2'],
  ]);
});

t.test('the spread is uniform over the fleet, not only within one launch', async (t) => {
  const { fake, p, clock } = await setup(t, { subnet_ids: Object.keys(SUBNETS) });
  await p.launch(spec('i-1', 1));
  await p.launch(spec('i-2', 1));
  clock.advance(10_000);
  await p.list(CL);
  await p.launch(spec('i-3', 4));
  const per = new Map<string, number>();
  for (const i of fake.live()) per.set(i.subnetId!, (per.get(i.subnetId!) ?? 0) + 1);
  t.same([...per.values()].sort(), [2, 2, 2], '6 instances, 2 per subnet');
});

t.test('a reply lost after the launch: retried with the same token, no duplicate', async (t) => {
  const { fake, p, provider } = await setup(t);
  fake.inject({ action: 'RunInstances', drop: true });
  const out = await p.launch(spec('intent-lost', 2));
  const calls = fake.calls('RunInstances');
  t.equal(calls.length, 2, 'the dropped call was retried');
  t.equal(calls[0]!.body.ClientToken, calls[1]!.body.ClientToken, 'with the same ClientToken');
  t.equal(fake.live().length, 2, 'EC2 launched once');
  t.same(out.instances.map((i) => i.instanceId).sort(), fake.live().map((i) => i.instanceId).sort());

  // Every attempt lost: launch fails (retryable); the loop tries the intent again later.
  fake.inject({ action: 'RunInstances', drop: true, times: 3 });
  const err = await p.launch(spec('intent-lost-2', 2)).catch((e: unknown) => e);
  t.type(err, ProviderError);
  t.equal((err as ProviderError).retryable, true);
  t.equal(fake.live().length, 4, 'the first lost attempt did launch');
  const again = await p.launch(spec('intent-lost-2', 2));
  t.equal(fake.live().length, 4, 'retrying the intent returns those instances');
  t.equal(again.instances.length, 2);

  // A slow reply past the request timeout is the same story.
  const slow = provider({}, { requestTimeoutMs: 300 });
  fake.inject({ action: 'RunInstances', delayMs: 1_000 });
  const s = await slow.launch(spec('intent-slow', 1));
  t.equal(s.instances.length, 1);
  t.equal(fake.calls('RunInstances').filter((c) => c.body.ClientToken === 'intent-slow').length, 2);
  t.equal(fake.live().length, 5);

  // A new leader resuming the intent finds its instances by tag and launches nothing.
  const before = fake.calls('RunInstances').length;
  const fresh = provider();
  const resumed = await fresh.launch(spec('intent-lost', 2, { resumed: true }));
  t.same(resumed.instances.map((i) => i.instanceId).sort(), out.instances.map((i) => i.instanceId).sort());
  t.equal(fake.calls('RunInstances').length, before, 'no RunInstances for a settled intent');
});

t.test('a token reused with other parameters adopts what it launched; a terminated token launches nothing', async (t) => {
  const { fake, p, provider } = await setup(t);
  const first = await p.launch(spec('intent-reuse', 2));
  const other = provider();
  const again = await other.launch(spec('intent-reuse', 1)); // another leader, another count: same token
  t.same(again.instances.map((i) => i.instanceId).sort(), first.instances.map((i) => i.instanceId).sort());
  t.ok(fake.calls('DescribeInstances').some((c) => c.params['Filter.1.Name'] === 'client-token' && c.params['Filter.1.Value.1'] === 'intent-reuse'));
  t.equal(fake.live().length, 2);

  await p.terminate(CL, first.instances.map((i) => i.instanceId));
  await p.list(CL); // the fake moves shutting-down → terminated on the next request
  const err = await provider().launch(spec('intent-reuse', 2)).catch((e: unknown) => e);
  t.type(err, ProviderError);
  t.equal((err as ProviderError).cloudCode, 'IdempotentInstanceTerminated');
  t.equal(fake.live(['pending', 'running']).length, 0, 'nothing relaunched under a spent token');
});

t.test('a capacity error trips the (subnet, type) breaker and the share falls through', async (t) => {
  const { fake, p, clock } = await setup(t, { subnet_ids: Object.keys(SUBNETS) });
  const clear = fake.capacity({ subnetId: 'subnet-aaaa', instanceType: TYPE });
  const t0 = clock.now().getTime();
  const out = await p.launch(spec('intent-ice', 3));
  t.equal(out.instances.length, 3, 'all three launched');
  t.notOk(out.shortfall);
  t.notOk(out.instances.some((i) => i.subnetId === 'subnet-aaaa'));
  const calls = fake.calls('RunInstances');
  t.equal(calls.filter((c) => c.body.SubnetId === 'subnet-aaaa').length, 1, 'the failing subnet was asked once');
  const fallback = calls.find((c) => String(c.body.ClientToken) === clientToken('intent-ice', [String(c.body.SubnetId), TYPE, 'subnet-aaaa']));
  t.ok(fallback, 'the moved share has its own token, derived from the source subnet');
  let h = p.health();
  t.same(h.breakers, [{ pool: `subnet-aaaa/${TYPE}`, failures: 1, openUntil: t0 + 120_000, code: 'InsufficientInstanceCapacity' }]);
  t.same(h.unavailablePools, [`subnet-aaaa/${TYPE}`]);
  t.equal(h.capacityUnavailable, false);

  await p.launch(spec('intent-ice-2', 2));
  t.equal(fake.calls('RunInstances').filter((c) => c.body.SubnetId === 'subnet-aaaa').length, 1, 'no launch into an open breaker');

  clock.advance(120_001); // half-open: one try, still no capacity → the cool-off doubles
  await p.launch(spec('intent-ice-3', 1));
  t.equal(fake.calls('RunInstances').filter((c) => c.body.SubnetId === 'subnet-aaaa').length, 2);
  h = p.health();
  t.equal(h.breakers[0]!.failures, 2);
  t.equal(h.breakers[0]!.openUntil, clock.now().getTime() + 240_000);

  clear();
  clock.advance(240_001);
  const back = await p.launch(spec('intent-ice-4', 1));
  t.equal(back.instances[0]!.subnetId, 'subnet-aaaa', 'the emptiest subnet is used again once capacity returns');
  t.same(p.health().breakers, [], 'a success closes the breaker');

  // Every pool out of capacity: a CapacityError, then no calls at all until the cool-off ends.
  for (const s of Object.keys(SUBNETS)) fake.capacity({ subnetId: s });
  const n = fake.calls('RunInstances').length;
  const e1 = await p.launch(spec('intent-ice-5', 2)).catch((e: unknown) => e);
  t.type(e1, CapacityError);
  t.equal(fake.calls('RunInstances').length, n + 3, 'each pool tried once');
  const e2 = await p.launch(spec('intent-ice-6', 2)).catch((e: unknown) => e);
  t.type(e2, CapacityError);
  t.equal((e2 as CapacityError).retryAt, clock.now().getTime() + 120_000);
  t.equal(fake.calls('RunInstances').length, n + 3, 'no tight retry loop');
  h = p.health();
  t.equal(h.capacityUnavailable, true);
  t.ok(h.alerts.some((a) => a.code === 'capacity_unavailable'));
});

t.test('a quota error caps the fleet, raises an alert, and is probed again later', async (t) => {
  const { fake, p, clock } = await setup(t, {}, { quotaRecheckMs: 300_000 });
  fake.setInstanceLimit(3);
  await p.launch(spec('q-1', 2));
  const err = await p.launch(spec('q-2', 3)).catch((e: unknown) => e);
  t.type(err, QuotaError);
  t.equal((err as QuotaError).cloudCode, 'InstanceLimitExceeded');
  t.equal((err as QuotaError).cap, 2);
  let h = p.health();
  t.equal(h.instanceQuota, 2, 'the policy sees the cap');
  t.match(h.quota, { code: 'InstanceLimitExceeded', cap: 2 });
  t.ok(h.alerts.some((a) => a.code === 'quota_exceeded'));

  const n = fake.calls('RunInstances').length;
  const err2 = await p.launch(spec('q-3', 1)).catch((e: unknown) => e);
  t.type(err2, QuotaError);
  t.equal(fake.calls('RunInstances').length, n, 'no error storm: no call while capped');

  clock.advance(300_001);
  t.equal(p.health().instanceQuota, null, 'past the recheck time the cap lifts so one launch can probe');
  fake.setInstanceLimit(20);
  const probe = await p.launch(spec('q-4', 1));
  t.equal(probe.instances.length, 1);
  h = p.health();
  t.equal(h.quota, null, 'a successful launch clears the quota');
  t.notOk(h.alerts.some((a) => a.code === 'quota_exceeded'));
});

t.test('a quota hit in the middle of a spread launch returns what was launched', async (t) => {
  const { fake, p } = await setup(t, { subnet_ids: Object.keys(SUBNETS) }, {}, {});
  fake.setInstanceLimit(1, 'VcpuLimitExceeded');
  const out = await p.launch(spec('q-spread', 3));
  t.equal(out.instances.length, 1);
  t.match(out.shortfall, { count: 2, reason: 'quota' });
  t.type(out.shortfall!.error, QuotaError);
  t.equal(p.health().instanceQuota, 1);
  t.equal(fake.calls('RunInstances').length, 2, 'stopped after the quota error');
});

t.test('throttling backs off: no calls until the backoff ends, doubling per throttle', async (t) => {
  const { fake, p, clock } = await setup(t, {}, { throttleBaseMs: 1_000 });
  fake.throttle('DescribeInstances', 1);
  const t0 = clock.now().getTime();
  const e1 = await p.list(CL).catch((e: unknown) => e);
  t.type(e1, ThrottledError);
  t.equal((e1 as ThrottledError).retryAt, t0 + 1_000);
  t.equal(p.health().throttledUntil, t0 + 1_000);
  t.ok(p.health().alerts.some((a) => a.code === 'throttled'));
  const e2 = await p.list(CL).catch((e: unknown) => e);
  t.type(e2, ThrottledError);
  t.equal(fake.calls('DescribeInstances').length, 1, 'the backoff is honoured without asking EC2');

  clock.advance(1_001);
  fake.throttle('DescribeInstances', 1);
  await p.list(CL).catch(() => undefined);
  t.equal(p.health().throttledUntil, clock.now().getTime() + 2_000, 'the second throttle in a row backs off twice as long');
  clock.advance(2_001);
  const listing = await p.list(CL);
  t.same(listing.instances, []);
  t.equal(p.health().throttledUntil, null, 'a success resets the backoff');

  // With a listing cached, a throttled refresh serves it, stale but with its true asOf.
  clock.advance(10_000);
  fake.throttle('DescribeInstances', 1);
  await p.list(CL).catch(() => undefined);
  const stale = await p.list(CL);
  t.same(stale.asOf, listing.asOf);

  fake.throttle('RunInstances', 1);
  const e3 = await p.launch(spec('throttled-launch', 1)).catch((e: unknown) => e);
  t.type(e3, ThrottledError);
  const n = fake.calls('RunInstances').length;
  await p.launch(spec('throttled-launch', 1)).catch(() => undefined);
  t.equal(fake.calls('RunInstances').length, n, 'launches wait out the backoff too');
});

t.test('terminate refuses instances that do not carry our ownership tag', async (t) => {
  const { fake, p } = await setup(t);
  const out = await p.launch(spec('term-1', 2));
  const [mine, mine2] = out.instances.map((i) => i.instanceId) as [string, string];
  const untagged = fake.addInstance().instanceId;
  const otherCluster = fake.addInstance({ tags: { [TAG_CLUSTER]: 'another-cluster', [TAG_MANAGED]: 'true' } }).instanceId;
  const lookalike = fake.addInstance({ tags: { [TAG_CLUSTER]: CL } }).instanceId; // our cluster tag, but not launched by us

  const done = await p.terminate(CL, [mine, untagged, otherCluster, lookalike, 'i-0doesnotexist0000']);
  t.same(done, [mine]);
  const terms = fake.calls('TerminateInstances');
  t.equal(terms.length, 1);
  t.same(terms[0]!.body.InstanceId, [mine], 'only ours reached TerminateInstances');
  const check = fake.calls('DescribeInstances').at(-1)!;
  t.equal(check.params['Filter.2.Name'], `tag:${TAG_CLUSTER}`, 'ownership verified at EC2 right before terminating');
  t.equal(fake.instances.get(mine)!.state, 'shutting-down');
  for (const id of [mine2, untagged, otherCluster, lookalike]) t.equal(fake.instances.get(id)!.state, 'running', `${id} untouched`);

  await p.list(CL);
  const again = await p.terminate(CL, [mine]);
  t.same(again, [mine], 'already terminated counts as terminated');
  t.equal(fake.calls('TerminateInstances').length, 1, 'without another call');
});

t.test('DescribeInstances: cached and coalesced per cluster, and a shared budget per account', async (t) => {
  const { fake, p, clock, provider } = await setup(t);
  await Promise.all(Array.from({ length: 50 }, () => p.list(CL)));
  t.equal(fake.calls('DescribeInstances').length, 1, '50 concurrent lists, one call');
  for (let i = 0; i < 50; i++) await p.list(CL);
  t.equal(fake.calls('DescribeInstances').length, 1, 'within the 5 s TTL: cached');
  clock.advance(5_000);
  await p.list(CL);
  t.equal(fake.calls('DescribeInstances').length, 2);

  // 40 clusters sharing one key, a leader ticking every 10 s for 2 minutes, and EC2's own
  // DescribeInstances bucket (50, refilled at 10/s) in the fake. One describe serves every
  // cluster of the account, so after the first tick (clusters registering one by one, bounded
  // by Gantry's budget of 10) it is one call per tick, and every cluster gets fresh listings.
  fake.rateLimit('DescribeInstances', 50, 10);
  const share = new DescribeShare(new TokenBucket(10, 2, clock));
  const clusters = Array.from({ length: 40 }, (_, k) => ({ id: `cluster-${k}`, p: provider({}, { describeShare: share }) }));
  await clusters[7]!.p.launch({ ...spec('budget-intent', 2), clusterId: 'cluster-7' });
  const perTick: number[] = [];
  const got = new Map<string, number>();
  let throttledByUs = 0;
  let foreignSeen = 0;
  for (let tick = 0; tick < 12; tick++) {
    const before = fake.calls('DescribeInstances').length;
    for (const c of clusters) {
      try {
        const l = await c.p.list(c.id);
        foreignSeen += l.instances.filter((i) => i.tags[TAG_CLUSTER] !== c.id).length;
        got.set(c.id, (got.get(c.id) ?? 0) + 1);
      } catch (e) {
        if (!(e instanceof ThrottledError)) throw e;
        throttledByUs++;
      }
    }
    perTick.push(fake.calls('DescribeInstances').length - before);
    clock.advance(10_000);
  }
  t.ok(perTick[0]! <= 10, `first tick: clusters register one by one, bounded by the budget (${perTick[0]} calls)`);
  t.equal(foreignSeen, 0, "a cluster's listing holds only its own instances");
  t.ok(throttledByUs > 0 && throttledByUs <= 30, 'the budget held the rest back for one tick');
  t.same(perTick.slice(1), Array(11).fill(1), 'then one DescribeInstances per tick for all 40 clusters');
  t.same(new Set(got.values()), new Set([11, 12]), 'every cluster listed on every tick after its first');
  t.equal((await clusters[7]!.p.list('cluster-7')).instances.length, 2);
  t.ok(clusters.every((c) => c.p.health().throttledUntil === null), 'EC2 never throttled us');
});

t.test('Elastic IPs: a free address from eips for each running instance, and eips cap the fleet', async (t) => {
  const { fake, p, clock } = await setup(t);
  const foreign = fake.addInstance();
  const a1 = fake.addAddress({ publicIp: '203.0.113.10' });
  const a2 = fake.addAddress({ publicIp: '203.0.113.11', instanceId: foreign.instanceId });
  const a3 = fake.addAddress({ publicIp: '203.0.113.12' });
  const withEips = new Ec2Provider(
    { region: REGION, access_key_id: AKID, secret_access_key: SECRET, instance_type: TYPE, image_id: 'ami-1', eips: [a1.allocationId, a2.allocationId, '203.0.113.12'] },
    { endpoint: fake.endpoint, clock, describeShare: new DescribeShare(new TokenBucket(100, 100, clock)), retryDelayMs: 5 },
  );
  t.teardown(() => withEips.close());
  void p;
  const out = await withEips.launch(spec('eip-1', 2));
  t.equal(out.instances.length, 2);
  t.equal(fake.calls('AssociateAddress').length, 0, 'not while pending');
  clock.advance(10_000);
  const listing = await withEips.list(CL); // the fake has them running now
  const assoc = fake.calls('AssociateAddress');
  t.equal(assoc.length, 2);
  t.same(assoc.map((c) => c.body.AllocationId).sort(), [a1.allocationId, a3.allocationId].sort(), 'only addresses not associated yet');
  t.ok(assoc.every((c) => c.body.AllowReassociation === 'false'), 'never steals an address');
  t.equal(a2.instanceId, foreign.instanceId, 'the address in use elsewhere stays there');
  t.same(listing.instances.map((i) => i.publicIp).sort(), ['203.0.113.10', '203.0.113.12']);
  const describes = fake.calls('DescribeAddresses');
  t.same(describes.map((d) => d.params['Filter.1.Name']).sort(), ['allocation-id', 'public-ip']);

  clock.advance(60_000);
  await withEips.list(CL);
  t.equal(fake.calls('DescribeAddresses').length, describes.length, 'no DescribeAddresses once every running instance has its address');
  t.equal(fake.calls('AssociateAddress').length, 2);

  const more = await withEips.launch(spec('eip-2', 2));
  t.equal(more.instances.length, 1, 'three eips, two instances: room for one');
  t.match(more.shortfall, { count: 1, reason: 'quota' });
  const full = await withEips.launch(spec('eip-3', 1)).catch((e: unknown) => e);
  t.type(full, QuotaError);
  t.equal((full as QuotaError).cap, 3);
});

t.test('errors are typed, settings are checked, and the secret never shows', async (t) => {
  const { fake, p, logs, provider } = await setup(t);
  const wrong = provider({ secret_access_key: 'not-the-secret' });
  const e = await wrong.list(CL).catch((x: unknown) => x);
  t.type(e, ProviderError);
  t.equal((e as ProviderError).cloudCode, 'SignatureDoesNotMatch');
  t.equal((e as ProviderError).retryable, false);

  const big = await p.launch(spec('too-big', 1, { userData: 'x'.repeat(16 * 1024 + 1) })).catch((x: unknown) => x);
  t.type(big, ProviderError);
  t.match((big as Error).message, /16385 bytes; EC2 accepts at most 16384/);
  t.equal(fake.calls('RunInstances').length, 0, 'refused before any call');

  t.throws(() => provider({ image_id: '' }), /autoscale\.aws\.image_id is required/);
  t.throws(() => provider({ tags: { 'aws:cloudformation': 'x' } }), /reserved prefix aws:/);
  const tags = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, k) => [`k${k}`, 'v']));
  t.doesNotThrow(() => provider({ tags: tags(40) }), 'as many tags as the Clusters API takes');
  t.throws(() => provider({ tags: tags(41) }), /has 41 tags; at most 40/);
  t.throws(() => provider({ tags: tags(48) }), /at most 40/);
  t.throws(() => provider({ block_device_mappings: [{ device_name: '' }] }), /block_device_mappings\[0\]\.device_name is required/);

  fake.inject({ action: 'RunInstances', code: 'InvalidAMIID.NotFound', message: "The image id '[ami-0f1e2d3c4b5a69788]' does not exist" });
  const ami = await p.launch(spec('bad-ami', 1)).catch((x: unknown) => x);
  t.type(ami, ProviderError);
  t.equal((ami as ProviderError).cloudCode, 'InvalidAMIID.NotFound');
  t.equal(fake.calls('RunInstances').length, 1, 'a client error is not retried');

  await p.launch(spec('fine', 1));
  const everything = [logs.join(''), JSON.stringify(p), inspect(p), String(e), String((e as Error).stack), JSON.stringify(p.health())].join('\n');
  t.notOk(everything.includes(SECRET), 'the secret appears in no log, error, or dump');
  t.ok(logs.some((l) => l.includes('instances launched')), 'logs were captured');
});

t.test('listings page through NextToken', async (t) => {
  const { fake, provider } = await setup(t);
  for (let k = 0; k < 12; k++) fake.addInstance({ tags: { [TAG_CLUSTER]: CL, [TAG_MANAGED]: 'true' } });
  fake.addInstance({ tags: { [TAG_CLUSTER]: 'someone-else' } });
  const p = provider({}, { describePageSize: 5 });
  const listing = await p.list(CL);
  t.equal(listing.instances.length, 12);
  const calls = fake.calls('DescribeInstances');
  t.equal(calls.length, 3, '5 + 5 + 2');
  t.same(calls.map((c) => c.body.MaxResults), ['5', '5', '5']);
  t.equal(calls[0]!.body.NextToken, undefined);
  t.ok(calls[1]!.body.NextToken && calls[2]!.body.NextToken);
});

t.test('the reconciler on real listings: adopts a lost launch, reaps orphans and failed boots, sees reclaims', async (t) => {
  const { fake, p, clock } = await setup(t);
  // A launch whose every reply was lost: the leader has no instance ids, only its intent.
  fake.inject({ action: 'RunInstances', drop: true, times: 3 });
  await p.launch(spec('rec-lost', 2)).catch(() => undefined);
  // A booted instance that never connected, one reclaimed by EC2, and an orphan with our tag.
  const booted = (await p.launch(spec('rec-boot', 1))).instances[0]!;
  const reclaimed = (await p.launch(spec('rec-spot', 1))).instances[0]!;
  const orphan = fake.addInstance({ tags: { [TAG_CLUSTER]: CL, [TAG_MANAGED]: 'true', [TAG_INTENT]: 'long-gone-intent' }, launchTime: new Date(clock.now().getTime() - 3_600_000) });
  clock.advance(700_000);
  fake.setState(reclaimed.instanceId, 'terminated');
  const recorded = [
    { instanceId: booted.instanceId, type: 'ADD' as const, launchedAt: booted.launchedAt, bootDeadline: new Date(booted.launchedAt.getTime() + 600_000), intentId: 'rec-boot' },
    { instanceId: reclaimed.instanceId, type: 'LIVE' as const, launchedAt: reclaimed.launchedAt, bootDeadline: null, intentId: 'rec-spot' },
  ];
  const listing = await p.list(CL);
  const actions = reconcile({ clusterId: CL, recorded, listing, knownIntents: ['rec-lost', 'rec-boot', 'rec-spot'], now: clock.now() });
  const lost = fake.live().filter((i) => i.tags[TAG_INTENT] === 'rec-lost').map((i) => i.instanceId).sort();
  t.equal(lost.length, 2);
  t.same(actions.filter((a) => a.kind === 'adopt').map((a) => a.instanceId).sort(), lost, 'the lost launch is adopted');
  t.same(actions.filter((a) => a.kind === 'gone').map((a) => a.instanceId), [reclaimed.instanceId]);
  t.same(actions.filter((a) => a.kind === 'fail').map((a) => a.instanceId), [booted.instanceId]);
  const kill = actions.filter((a) => a.kind === 'terminate').map((a) => a.instanceId).sort();
  t.same(kill, [booted.instanceId, orphan.instanceId].sort());
  t.same((await p.terminate(CL, kill)).sort(), kill, 'both carry our tag: terminated');
  t.equal(fake.live(['pending', 'running']).length, 2, 'only the adopted instances still run');
});
