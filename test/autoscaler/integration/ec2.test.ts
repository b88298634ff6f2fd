/**
 * The autoscaler's leader loop with the `ec2` provider, against the wire-level fake EC2
 * (the real SDK signs and sends every request): a cluster created through the API is brought
 * to runners_min, instances whose runner never connects are failed at the boot deadline and
 * replaced, and deleting the cluster terminates its instances.
 */
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { startTestApi } from '../../helpers/api.ts';
import { Ec2Fake } from '../../helpers/ec2-fake.ts';
import { until } from '../../helpers/runner.ts';

t.test('runners_min launched through EC2; dead boots replaced; delete terminates', async (t) => {
  const fake = await Ec2Fake.start({ region: 'eu-west-1', subnets: { 'subnet-0a1b2c3d': 'eu-west-1a', 'subnet-1a2b3c4d': 'eu-west-1b' } });
  t.teardown(() => fake.close());
  const api = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: {
      GANTRY_EC2_ENDPOINT: fake.endpoint,
      GANTRY_SECRET_KEYS: `k1:${randomBytes(32).toString('base64')}`,
      GANTRY_AUTOSCALE_TICK_MS: '200',
      GANTRY_AUTOSCALE_TUNING: JSON.stringify({ bootDeadlineMs: 3000, tauUpMs: 1000, tauDownMs: 2000, staleAfterMs: 5000 }),
      GANTRY_RUNNER_ENDPOINT: 'cp.example.internal:9090',
    },
  });
  const created = await api.request('POST', '/2/clusters', {
    json: {
      name: 'fleet',
      autoscale: {
        aws: {
          region: 'eu-west-1',
          access_key_id: 'AKIAFAKEFAKEFAKE',
          secret_access_key: 'fake-secret-never-logged',
          instance_type: 'm5.large',
          image_id: 'ami-0123456789abcdef0',
          subnet_ids: ['subnet-0a1b2c3d', 'subnet-1a2b3c4d'],
          tags: { team: 'data' },
        },
        runners_min: 2,
        runners_max: 4,
        runners_per_instance: 1,
      },
    },
  });
  t.equal(created.status, 200, created.status === 200 ? 'cluster created through the API' : created.text);
  const clusterId = (created.body as { id: string }).id;
  const rows = async () =>
    (
      await api.store.db.query<{ instance_id: string; type: string; intent_id: string | null }>(
        'SELECT instance_id, type, intent_id FROM cluster_instances WHERE cluster_id = $1 ORDER BY created_at',
        [clusterId],
      )
    ).rows;

  await until('two instances launched', async () => (await rows()).filter((r) => r.type === 'ADD').length === 2, 15_000, 100);
  const runs = fake.calls('RunInstances');
  t.ok(runs.length >= 1, 'RunInstances was called');
  const first = runs[0]!.params;
  t.ok(first.ClientToken, 'with a ClientToken (the persisted launch intent)');
  const tags = Object.entries(first).filter(([k]) => /^TagSpecification\.1\.Tag\.\d+\.Key$/.test(k)).map(([, v]) => v);
  t.ok(tags.includes('gantry:cluster-id') && tags.includes('team'), 'ownership tag and the cluster tags');
  const userData = Buffer.from(first.UserData ?? '', 'base64').toString();
  t.match(userData, /^#cloud-config/, 'the default Flatcar cloud-config as user data');
  t.ok(userData.includes(clusterId) && userData.includes('cp.example.internal:9090'), 'rendered with the cluster id and control-plane address');
  const SUBNETS = ['subnet-0a1b2c3d', 'subnet-1a2b3c4d'];
  t.same(runs.filter((r) => !SUBNETS.includes(r.params['SubnetId'] ?? '')).map((r) => r.params['SubnetId']), [], 'every launch names a configured subnet');
  const firstIds = (await rows()).map((r) => r.instance_id);
  // The launch spreads the fleet over its pools: one instance in each subnet.
  const subnetOf = (id: string) => fake.live().find((i) => i.instanceId === id)?.subnetId;
  t.same(firstIds.map(subnetOf).sort(), SUBNETS, 'both configured subnets used, one instance each');

  // No runner ever connects (there is no real machine): at the boot deadline the instances are
  // failed, terminated, and replaced to keep runners_min.
  await until('the dead boots are terminated', async () => {
    const terminated = new Set(fake.calls('TerminateInstances').flatMap((c) => Object.entries(c.params).filter(([k]) => k.startsWith('InstanceId.')).map(([, v]) => v)));
    return firstIds.every((id) => terminated.has(id));
  }, 20_000, 200);
  await until('replacements launched', async () => (await rows()).filter((r) => r.type === 'ADD' && !firstIds.includes(r.instance_id)).length === 2, 20_000, 100);
  t.same((await rows()).filter((r) => firstIds.includes(r.instance_id)).map((r) => r.type), ['TERMINATE', 'TERMINATE'], 'recorded as TERMINATE');
  const replacements = (await rows()).filter((r) => r.type === 'ADD' && !firstIds.includes(r.instance_id)).map((r) => r.instance_id);
  t.same(replacements.map(subnetOf).sort(), SUBNETS, 'the replacements are spread over both subnets too');

  // Delete: every instance is terminated at once.
  const del = await api.request('DELETE', `/2/clusters/${clusterId}`);
  t.equal(del.status, 200, del.status === 200 ? 'cluster deleted' : del.text);
  await until('every instance terminated after delete', async () => (await rows()).every((r) => r.type === 'TERMINATE'), 20_000, 100);
  t.same(fake.live(['pending', 'running']).map((i) => i.instanceId), [], 'none left running in the cloud');
});
