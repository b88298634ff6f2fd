import { Writable } from 'node:stream';
import t, { type Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { newId } from '../../../lib/ids.ts';
import { createLogger } from '../../../lib/logger.ts';
import { SecretBox, SecretDecryptError } from '../../../lib/secretbox.ts';
import { runAdmin, UsageError } from '../../../control-plane/admin.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import type { Store } from '../../../control-plane/store/index.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';
import { codeOk, isError } from '../../helpers/assert.ts';
import type { ApiUser, Reply } from '../../helpers/api.ts';

/**
 * The Clusters API (/2/clusters) over HTTP on both engines: every endpoint, defaults,
 * partial updates with tag merge, sharing and the queue check on tasks and schedules,
 * secrets sealed at rest and absent from replies and logs, key rotation, terminate, delete,
 * stats and the operators' view of every cluster. One control plane per engine logs at trace level into a buffer that the last
 * subtest searches for secrets.
 */

const ID = /^[0-9a-f]{24}$/;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const K1 = Buffer.alloc(32, 11).toString('base64');
const K2 = Buffer.alloc(32, 22).toString('base64');

const ACCESS_KEY = 'AKIAIOSFODNN7EXAMPLE';
const SECRET_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const DOCKER_AUTH = Buffer.from('robot:s3cr3t-Pa55word').toString('base64');
const DOCKER_EMAIL = 'robot-mail@example.com';
const SECRETS = [ACCESS_KEY, SECRET_KEY, DOCKER_AUTH, 's3cr3t-Pa55word', DOCKER_EMAIL];

const AWS = {
  region: 'eu-west-1',
  access_key_id: ACCESS_KEY,
  secret_access_key: SECRET_KEY,
  instance_type: 'c5.xlarge',
  image_id: 'ami-0123456789abcdef0',
  tags: { Name: 'Gantry worker', team: 'data' },
  key_name: 'ops',
  subnet_ids: ['subnet-0a1b2c3d', 'subnet-1a2b3c4d', ''],
  security_group_ids: ['sg-0123abcd'],
  iam_instance_profile: { name: 'gantry-runner', arn: '' },
  block_device_mappings: [
    { device_name: '/dev/xvdb', virtual_name: 'ephemeral0' },
    { device_name: 'xvdc', ebs: { volume_size: 100, volume_type: 'gp3', delete_on_termination: true, encrypted: true, iops: 0, snapshot_id: '' } },
  ],
  user_data: '#cloud-config\n# id {{ .ClusterId }} token {{.ClusterToken}}\n',
  eips: ['203.0.113.7', '203.0.113.8'],
};

/** What GET shows of AWS: the settings as given (empty entries dropped), secrets only as set/not set. */
const AWS_SHOWN = {
  region: 'eu-west-1',
  instance_type: 'c5.xlarge',
  image_id: 'ami-0123456789abcdef0',
  tags: { Name: 'Gantry worker', team: 'data' },
  key_name: 'ops',
  subnet_ids: ['subnet-0a1b2c3d', 'subnet-1a2b3c4d'],
  security_group_ids: ['sg-0123abcd'],
  iam_instance_profile: { name: 'gantry-runner' },
  block_device_mappings: [
    { device_name: '/dev/xvdb', virtual_name: 'ephemeral0' },
    { device_name: 'xvdc', ebs: { volume_size: 100, volume_type: 'gp3', delete_on_termination: true, encrypted: true } },
  ],
  user_data: AWS.user_data,
  eips: ['203.0.113.7', '203.0.113.8'],
  access_key_id_set: true,
  secret_access_key_set: true,
};

class LogBuffer extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, cb: () => void) {
    this.text += chunk.toString();
    cb();
  }
}

function noSecrets(t: Test, text: string, what: string) {
  for (const s of SECRETS) t.notOk(text.includes(s), `${what} holds no secret (${s.slice(0, 6)}…)`);
}

for (const engine of ENGINES) {
  t.test(`clusters API on ${engine}`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1, 12, 0, 0));
    const store = await freshStore(t, engine, clock);
    store.useSecrets(SecretBox.fromSpec(`k1:${K1}`));
    const logs = new LogBuffer();
    const log = createLogger({ name: 'gantry-test', level: 'trace', destination: logs });
    const env = { GANTRY_OPERATORS: `ops-${engine}@example.com`, GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'trace', GANTRY_CLUSTER_MAX_TIMEOUTS: 'long=86400' };
    const config = loadConfig(env);
    const cp = await startControlPlane(config, log, { store, clock, scheduler: false });
    t.teardown(() => cp.stop());

    async function req(method: string, path: string, o: { json?: unknown; token?: string | null; body?: string; headers?: Record<string, string>; base?: string } = {}): Promise<Reply> {
      const headers: Record<string, string> = { Accept: 'application/json', ...o.headers };
      if (o.token) headers.Authorization = `OAuth ${o.token}`;
      let body: string | undefined = o.body;
      if (o.json !== undefined) {
        headers['Content-Type'] ??= 'application/json';
        body = JSON.stringify(o.json);
      }
      const res = await fetch((o.base ?? cp.url) + path, { method, headers, body });
      const text = await res.text();
      return { status: res.status, headers: res.headers, text, body: (res.headers.get('content-type') ?? '').includes('json') ? JSON.parse(text) : text };
    }
    let n = 0;
    async function newUser(): Promise<ApiUser> {
      const u = await store.accounts.createUser(`c${++n}-${engine}@example.com`);
      const p = await store.accounts.createProject(u.id, 'p');
      const { token } = await store.accounts.createToken(u.id);
      return { userId: u.id, projectId: p.id, token, project: (m, path, ro = {}) => req(m, `/2/projects/${p.id}${path}`, { ...ro, token: ro.token ?? token } as never) };
    }
    const owner = await newUser();
    const bob = await newUser();
    const carol = await newUser();
    const as = (u: ApiUser) => ({
      get: (path: string) => req('GET', `/2${path}`, { token: u.token }),
      post: (path: string, json: unknown = {}) => req('POST', `/2${path}`, { token: u.token, json }),
      put: (path: string, json: unknown) => req('PUT', `/2${path}`, { token: u.token, json }),
      del: (path: string) => req('DELETE', `/2${path}`, { token: u.token }),
    });
    const api = as(owner);
    const clusterCount = async () => (await store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM clusters')).rows[0]!.n;
    const rawRow = async (id: string) => (await store.db.query<Record<string, unknown>>('SELECT * FROM clusters WHERE id = $1', [id])).rows[0]!;
    const create = async (t: Test, body: Record<string, unknown>, u = owner) => {
      const r = await as(u).post('/clusters', body);
      t.equal(r.status, 200, r.text);
      return r.body as { id: string; token: string; cluster: Record<string, any> };
    };
    const addInstance = (clusterId: string, instanceId: string, type: string, terminatedAt: Date | null = null) =>
      store.db.query(
        `INSERT INTO cluster_instances (id, cluster_id, instance_id, provider, type, version, launched_at, terminated_at, created_at, updated_at)
         VALUES ($1, $2, $3, 'ec2', $4, '1.2.3', $5, $6, $5, $5)`,
        [newId(), clusterId, instanceId, type, clock.now(), terminatedAt],
      );
    const instanceTypes = async (clusterId: string) =>
      Object.fromEntries(
        (await store.db.query<{ instance_id: string; type: string }>('SELECT instance_id, type FROM cluster_instances WHERE cluster_id = $1', [clusterId])).rows.map(
          (r) => [r.instance_id, r.type],
        ),
      );

    t.test('authentication and unknown clusters', async (t) => {
      isError(t, await req('GET', '/2/clusters'), 401, /Missing OAuth token/);
      isError(t, await api.get('/clusters/nothex'), 404, 'Cluster not found');
      isError(t, await api.get(`/clusters/${newId()}/stats`), 404, 'Cluster not found');
      t.same((await api.get('/clusters')).body, { clusters: [] }, 'an empty list is a list');
    });

    t.test('create with defaults: id, runner token once, memory 512 MB, disk 10 GB', async (t) => {
      const r = await api.post('/clusters', { name: 'plain', cpu_share: 51 });
      t.equal(r.status, 200, r.text);
      t.same(Object.keys(r.body).sort(), ['cluster', 'id', 'msg', 'token']);
      t.equal(r.body.msg, 'Cluster created');
      t.match(r.body.id, ID);
      t.match(r.body.token, /^[0-9a-f]{48}$/);
      const now = clock.now().toISOString();
      const shown = {
        id: r.body.id,
        name: 'plain',
        user_id: owner.userId,
        memory: 512 * MiB,
        disk_space: 10 * GiB,
        created_at: now,
        updated_at: now,
        runners_total: 0,
        runners_available: 0,
        machines: [],
        container: { cap_add: [], pids_limit: 1024, read_only_rootfs: false, tmp_size: 64 * MiB, user: null, nofile: 4096, network: 'bridge' },
        shared_to: [],
        autoscale: { disable: false, runners_min: 0, runners_max: 0, runners_per_instance: 0, docker_auth_set: false, docker_email_set: false },
      };
      t.same(r.body.cluster, shown);
      t.same((await api.get(`/clusters/${r.body.id}`)).body, { cluster: shown }, 'GET shows the same');
      t.same((await api.get('/clusters')).body.clusters, [
        { id: r.body.id, name: 'plain', user_id: owner.userId, memory: 512 * MiB, disk_space: 10 * GiB, created_at: now, updated_at: now },
      ]);
      t.ok(await store.clusters.authenticate(r.body.id, r.body.token), 'the token authenticates runners');
      t.equal(await store.clusters.runnerToken(r.body.id), r.body.token, 'a sealed copy renders {{.ClusterToken}}');
      t.notOk(JSON.stringify(await rawRow(r.body.id)).includes(r.body.token), 'the token is not stored in plain');
      t.notOk((await api.get(`/clusters/${r.body.id}`)).text.includes(r.body.token), 'and never shown again');
      isError(t, await api.post('/clusters', { name: 'plain' }), 409, /already exists/);
    });

    t.test('create with every field; secrets sealed at rest and never shown', async (t) => {
      const body = {
        name: 'fleet',
        memory: 1024 * MiB,
        disk_space: 20 * GiB,
        shared_to: [bob.userId],
        autoscale: { aws: AWS, disable: true, runners_min: 2, runners_max: 40, runners_per_instance: 1, docker_auth: DOCKER_AUTH, docker_email: DOCKER_EMAIL },
      };
      const r = await api.post('/clusters', body);
      t.equal(r.status, 200, r.text);
      noSecrets(t, r.text, 'the create reply');
      const c = r.body.cluster;
      t.match(c, { name: 'fleet', memory: 1024 * MiB, disk_space: 20 * GiB, shared_to: [bob.userId] });
      t.same(c.autoscale, {
        provider: 'ec2',
        disable: true,
        runners_min: 2,
        runners_max: 40,
        runners_per_instance: 1,
        docker_auth_set: true,
        docker_email_set: true,
        aws: AWS_SHOWN,
      });
      const got = await api.get(`/clusters/${r.body.id}`);
      noSecrets(t, got.text, 'GET');
      t.same(got.body.cluster, c);
      noSecrets(t, (await api.get('/clusters')).text, 'the list');

      const row = await rawRow(r.body.id);
      noSecrets(t, JSON.stringify(row), 'the stored row');
      for (const col of ['aws_access_key_id_enc', 'aws_secret_access_key_enc', 'docker_auth_enc', 'docker_email_enc', 'token_enc']) {
        t.match(row[col], /^g1\.k1\.[\w-]{16}\.[\w-]{22}\.[\w-]+$/, `${col} is sealed under k1`);
      }
      t.equal(row.user_data, AWS.user_data, 'user data kept byte for byte');
      t.same(await store.clusters.runnerSecrets(r.body.id), { dockerAuth: DOCKER_AUTH, dockerEmail: DOCKER_EMAIL }, 'runners get them opened');
      t.same(await store.clusters.awsCredentials(r.body.id), { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY });
      // A sealed value moved to another field does not open: it is bound to its place.
      await store.db.query('UPDATE clusters SET docker_email_enc = docker_auth_enc WHERE id = $1', [r.body.id]);
      await t.rejects(store.clusters.runnerSecrets(r.body.id), SecretDecryptError);
      await store.db.query('UPDATE clusters SET docker_email_enc = $2 WHERE id = $1', [r.body.id, row.docker_email_enc]);
      t.same(await store.clusters.runnerSecrets(r.body.id), { dockerAuth: DOCKER_AUTH, dockerEmail: DOCKER_EMAIL });
      t.same(await store.clusters.runnerSecrets((await create(t, { name: 'no-secrets' })).id), {}, 'none set: none returned');
    });

    t.test('the reference sample shape: fields inside autoscale, defaults for region and type', async (t) => {
      const r = await create(t, {
        name: 'sample',
        memory: 536870912,
        disk: 10737418240,
        autoscale: { aws: { access_key_id: ACCESS_KEY, secret_access_key: SECRET_KEY, subnet_ids: [''], security_groups: [''] }, runners_min: 0 },
        runners_max: 5,
      });
      t.match(r.cluster.autoscale, { aws: { region: 'us-east-1', instance_type: 'c3.xlarge', access_key_id_set: true }, runners_max: 5 });
      t.same(r.cluster.autoscale.aws.subnet_ids, [], 'the sample\'s empty strings are no entries');
    });

    t.test('bad input: 400 naming the field and the limit, and nothing is stored', async (t) => {
      const before = await clusterCount();
      const aws = (extra: Record<string, unknown>) => ({ name: 'bad', autoscale: { aws: { ...AWS, ...extra } } });
      const cases: [unknown, number, RegExp][] = [
        [{}, 400, /^name is required/],
        [{ name: 'has space' }, 400, /^name must be 1 to 64 letters/],
        [{ name: 'x'.repeat(65) }, 400, /^name must be at most 64 bytes/],
        [{ name: 'default' }, 400, /reserved/],
        [{ name: 'long' }, 400, /reserved/],
        [{ name: newId() }, 400, /must not look like a cluster id/],
        [{ name: 'bad', memory: 512 }, 400, /^memory must be an integer from 16777216 to 1099511627776, got 512/],
        [{ name: 'bad', memory: 600000000 }, 400, /^memory is in bytes and must be a whole number of MiB/],
        [{ name: 'bad', memory: '1gb' }, 400, /^memory must be an integer/],
        [{ name: 'bad', disk: 1000 }, 400, /^disk must be an integer from 1073741824/],
        [{ name: 'bad', disk: GiB, disk_space: GiB }, 400, /disk or disk_space, not both/],
        [{ name: 'bad', colour: 'blue' }, 400, /^colour is not a cluster field/],
        [{ name: 'bad', shared_to: 'x' }, 400, /^shared_to must be an array of user ids/],
        [{ name: 'bad', shared_to: [newId()] }, 400, /^shared_to\[0\]: no user with id/],
        [{ name: 'bad', shared_to: [owner.userId] }, 400, /^shared_to\[0\] is the owner/],
        [{ name: 'bad', autoscale: [] }, 400, /^autoscale must be an object/],
        [{ name: 'bad', autoscale: { runner_min: 1 } }, 400, /^autoscale\.runner_min is not a cluster field/],
        [{ name: 'bad', autoscale: { runners_min: -1 } }, 400, /^autoscale\.runners_min must be an integer from 0 to 100000/],
        [{ name: 'bad', autoscale: { runners_per_instance: 2000 } }, 400, /^autoscale\.runners_per_instance must be an integer from 0 to 1024, got 2000/],
        [{ name: 'bad', autoscale: { disable: 'yes' } }, 400, /^autoscale\.disable must be true or false/],
        [{ name: 'bad', autoscale: { runners_min: 1 }, runners_min: 1 }, 400, /in autoscale or at the top level, not both/],
        [{ name: 'bad', autoscale: { runners_min: 5, runners_max: 4 } }, 400, /runners_min \(5\) must not exceed autoscale\.runners_max \(4\)/],
        [{ name: 'bad', autoscale: { docker_auth: 'not base64!' } }, 400, /^autoscale\.docker_auth must be base64 of username:password/],
        [{ name: 'bad', docker_email: 'a b@c' }, 400, /^docker_email must be an email address/],
        [{ name: 'bad', autoscale: { aws: {} } }, 400, /access_key_id and autoscale\.aws\.secret_access_key are required/],
        [aws({ secret_access_key: undefined }), 400, /are required for aws/],
        [aws({ region: 'Moon-1' }), 400, /^autoscale\.aws\.region must be an AWS region like us-east-1, got "Moon-1"/],
        [aws({ access_key_id: 'akia-lower' }), 400, /^autoscale\.aws\.access_key_id must be an AWS access key id/],
        [aws({ image_id: 'ami-XYZ' }), 400, /^autoscale\.aws\.image_id must be an AMI id/],
        [aws({ subnet_ids: ['subnet-0a1b2c3d', 'vpc-1'] }), 400, /^autoscale\.aws\.subnet_ids\[1\] must be subnet ids/],
        [aws({ availability_zones: ['eu-west-1a'] }), 400, /subnet_ids or availability_zones, not both/],
        [aws({ security_groups: ['web'] }), 400, /security_groups or security_group_ids, not both/],
        [aws({ eips: ['300.1.1.1'] }), 400, /^autoscale\.aws\.eips\[0\] must be Elastic IP addresses/],
        [aws({ tags: { 'aws:x': '1' } }), 400, /keys starting with aws: or gantry: are reserved/],
        [aws({ tags: { a: 1 } }), 400, /^autoscale\.aws\.tags\.a must be a string of at most 256/],
        [aws({ tags: Object.fromEntries(Array.from({ length: 41 }, (_, i) => [`t${i}`, 'v'])) }), 400, /at most 40 tags, got 41/],
        [aws({ iam_instance_profile: { name: 'a', arn: 'arn:aws:iam::123456789012:instance-profile/a' } }), 400, /give name or arn, not both/],
        [aws({ block_device_mappings: [{ ebs: {} }] }), 400, /block_device_mappings\[0\]\.device_name is required/],
        [aws({ block_device_mappings: [{ device_name: 'xvdb', ebs: { volume_type: 'fast' } }] }), 400, /volume_type must be one of standard, gp2/],
        [aws({ user_data: '#cloud-config\n{{.Secret}}' }), 400, /\{\{\.Secret\}\} is not supported; only \{\{\.DockerAuth\}\}/],
        [aws({ user_data: '{{if .ClusterId}}x{{end}}' }), 400, /is not supported/],
        [aws({ user_data: 'x {{ .ClusterId' }), 400, /not closed/],
        [aws({ user_data: 'x'.repeat(16385) }), 400, /^autoscale\.aws\.user_data must be at most 16384 bytes, got 16385/],
        [aws({ colour: 1 }), 400, /^autoscale\.aws\.colour is not a cluster field/],
        [{ name: 'bad', autoscale: { aws: { ...AWS, eips: ['203.0.113.7'] }, runners_min: 3, runners_per_instance: 2 } }, 400, /eips holds 1 addresses but runners_min 3 at 2 runners per instance needs 2 instances/],
      ];
      for (const [body, status, msg] of cases) {
        const r = await api.post('/clusters', body);
        isError(t, r, status, msg, JSON.stringify(body).slice(0, 80));
        noSecrets(t, r.text, 'the error');
      }
      isError(t, await req('POST', '/2/clusters', { token: owner.token, body: '{"name":"x"}' }), 406, /Content-Type must be application\/json/);
      isError(t, await req('POST', '/2/clusters', { token: owner.token, body: '{', headers: { 'Content-Type': 'application/json' } }), 400, /not valid JSON/);
      t.equal(await clusterCount(), before, 'no cluster was stored');
    });

    t.test('update: partial, tags merge, secrets replaced, bad input changes nothing', async (t) => {
      const { id } = await create(t, { name: 'upd', autoscale: { aws: AWS, docker_auth: DOCKER_AUTH } });
      const get = async () => (await api.get(`/clusters/${id}`)).body.cluster;
      const before = await get();
      clock.advance(1000);
      const r = await api.put(`/clusters/${id}`, { autoscale: { aws: { region: 'us-west-2' } } });
      t.equal(r.status, 200, r.text);
      t.equal(r.body.msg, 'Cluster updated');
      const after = await get();
      t.same(after, { ...before, updated_at: clock.now().toISOString(), autoscale: { ...before.autoscale, aws: { ...before.autoscale.aws, region: 'us-west-2' } } }, 'only the region (and updated_at) changed');
      t.same(r.body.cluster, after, 'the reply shows the cluster after');

      await api.put(`/clusters/${id}`, { autoscale: { aws: { tags: { team: 'ml', env: 'prod' } } } });
      t.same((await get()).autoscale.aws.tags, { Name: 'Gantry worker', team: 'ml', env: 'prod' }, 'tags merge, overwriting the same key');
      await api.put(`/clusters/${id}`, { autoscale: { aws: { tags: { Name: null } } } });
      t.same((await get()).autoscale.aws.tags, { team: 'ml', env: 'prod' }, 'a null tag value removes that tag');
      await api.put(`/clusters/${id}`, { autoscale: { aws: { key_name: null, eips: [] } } });
      const cleared = (await get()).autoscale.aws;
      t.notOk('key_name' in cleared, 'null removes an optional setting');
      t.same(cleared.eips, [], 'arrays replace');

      await api.put(`/clusters/${id}`, { memory: 2 * GiB, runners_max: 9 });
      t.match(await get(), { memory: 2 * GiB, autoscale: { runners_max: 9, aws: { region: 'us-west-2', access_key_id_set: true } } });

      const newAuth = Buffer.from('other:pw').toString('base64');
      await api.put(`/clusters/${id}`, { autoscale: { docker_auth: newAuth, aws: { secret_access_key: 'newSecretValue123' } } });
      t.same(await store.clusters.runnerSecrets(id), { dockerAuth: newAuth });
      t.equal((await store.clusters.awsCredentials(id))?.secretAccessKey, 'newSecretValue123');
      await api.put(`/clusters/${id}`, { autoscale: { docker_auth: null } });
      t.same(await store.clusters.runnerSecrets(id), {}, 'docker_auth null clears it');
      t.equal((await get()).autoscale.docker_auth_set, false);

      // What GET shows can be sent back as is (read-only fields are ignored): nothing changes.
      const shown = await get();
      clock.advance(1000);
      t.equal((await api.put(`/clusters/${id}`, shown)).status, 200, 'a GET body round-trips');
      t.same(await get(), { ...shown, updated_at: clock.now().toISOString() });

      const settled = await get();
      const rowBefore = await rawRow(id);
      const bad: [unknown, RegExp][] = [
        [{}, /Nothing to update/],
        [{ memory: 2 * GiB + 1 }, /whole number of MiB/],
        [{ memory: GiB, autoscale: { runners_min: -1 } }, /runners_min must be an integer/],
        [{ memory: GiB, autoscale: { runners_min: 10 } }, /runners_min \(10\) must not exceed autoscale\.runners_max \(9\)/],
        [{ memory: GiB, autoscale: { aws: { region: null } } }, /region cannot be removed/],
        [{ memory: GiB, autoscale: { aws: { access_key_id: null } } }, /cannot be removed/],
        [{ memory: GiB, autoscale: { aws: null } }, /autoscale\.aws cannot be removed/],
        [{ memory: GiB, autoscale: { aws: { security_groups: ['web'] } } }, /not both/],
        [{ name: 'plain' }, /already exists/],
      ];
      for (const [body, msg] of bad) {
        const res = await api.put(`/clusters/${id}`, body);
        isError(t, res, /already exists/.test(String(msg)) ? 409 : 400, msg, JSON.stringify(body));
      }
      t.same(await get(), settled, 'nothing changed');
      t.same(await rawRow(id), rowBefore, 'not even the stored row');
      isError(t, await api.put(`/clusters/${newId()}`, { memory: GiB }), 404, 'Cluster not found');

      // Turning autoscaling on later needs the keys, and gets the reference's defaults.
      const plain = await create(t, { name: 'later' });
      isError(t, await api.put(`/clusters/${plain.id}`, { autoscale: { aws: { region: 'eu-north-1' } } }), 400, /required for aws/);
      const on = await api.put(`/clusters/${plain.id}`, { autoscale: { aws: { access_key_id: ACCESS_KEY, secret_access_key: SECRET_KEY } } });
      t.match(on.body.cluster.autoscale, { provider: 'ec2', aws: { region: 'us-east-1', instance_type: 'c3.xlarge' } });

      // A rename is allowed while nothing holds the old name.
      const renamed = await api.put(`/clusters/${plain.id}`, { name: 'later-2' });
      t.equal(renamed.body.cluster.name, 'later-2');
      await codeOk(t, owner, 'rn-code');
      t.equal((await owner.project('POST', '/tasks', { json: { tasks: [{ code_name: 'rn-code', cluster: 'later-2' }] } })).status, 200);
      isError(t, await api.put(`/clusters/${plain.id}`, { name: 'later-3' }), 409, /cannot be renamed while tasks are queued or running/);
    });

    t.test('sharing: shared users see and queue; only the owner changes; others see nothing', async (t) => {
      const { id } = await create(t, { name: 'team', shared_to: [bob.userId], autoscale: { aws: AWS, docker_auth: DOCKER_AUTH } });
      const b = as(bob);
      const c = as(carol);
      const listed = async (u: ApiUser) => (await as(u).get('/clusters')).body.clusters.map((x: { id: string }) => x.id) as string[];
      t.ok((await listed(bob)).includes(id), 'bob lists the shared cluster');
      t.notOk((await listed(bob)).includes((await store.clusters.byName('plain'))!.id), 'but not the owner\'s others');
      t.notOk((await c.get('/clusters')).body.clusters.some((x: { id: string }) => x.id === id), 'carol does not');
      const seen = await b.get(`/clusters/${id}`);
      t.equal(seen.status, 200);
      t.notOk('autoscale' in seen.body.cluster || 'shared_to' in seen.body.cluster, 'a shared user does not see the owner\'s settings');
      t.equal((await b.get(`/clusters/${id}/stats`)).status, 200, 'but sees stats');
      isError(t, await c.get(`/clusters/${id}`), 404, 'Cluster not found');
      isError(t, await c.get(`/clusters/${id}/stats`), 404);
      isError(t, await b.put(`/clusters/${id}`, { memory: GiB }), 403, /^Only the cluster's owner can update it/);
      isError(t, await b.del(`/clusters/${id}`), 403, /owner can delete it/);
      isError(t, await b.post(`/clusters/${id}/terminate`, { instance_ids: ['i-1'] }), 403, /owner can terminate its instances/);
      isError(t, await b.post(`/clusters/${id}/credentials`), 403, /owner can rotate its runner token/);
      isError(t, await c.put(`/clusters/${id}`, { memory: GiB }), 404, 'Cluster not found');

      // Queueing: own, shared and default go; another user's cluster is refused.
      for (const u of [owner, bob, carol]) await codeOk(t, u, 'share-w');
      const queue = (u: ApiUser, cluster: string) => u.project('POST', '/tasks', { json: { tasks: [{ code_name: 'share-w', cluster }] } });
      const taskCluster = async (r: Reply) =>
        (await store.db.query<{ cluster: string }>('SELECT cluster FROM tasks WHERE id = $1', [r.body.tasks[0].id])).rows[0]!.cluster;
      t.equal((await queue(owner, 'team')).status, 200, 'the owner queues');
      const byBob = await queue(bob, 'team');
      t.equal(byBob.status, 200, 'a shared user queues');
      t.equal(await taskCluster(byBob), 'team');
      const byId = await queue(bob, id);
      t.equal(byId.status, 200, 'a cluster may be named by id');
      t.equal(await taskCluster(byId), 'team', 'and is stored by name');
      t.equal((await queue(carol, 'default')).status, 200, 'default is open to all');
      isError(t, await queue(carol, 'team'), 403, /^tasks\[0\]\.cluster: cluster "team" belongs to another user and is not shared with you/);
      isError(t, await queue(carol, id), 403, /belongs to another user/);
      isError(t, await carol.project('POST', '/tasks/webhook?code_name=share-w&cluster=team', { body: 'x', headers: { 'Content-Type': 'text/plain' } }), 403, /^cluster: cluster "team"/);
      isError(
        t,
        await carol.project('POST', '/schedules', { json: { schedules: [{ code_name: 'share-w', cluster: 'team', run_every: 3600 }] } }),
        403,
        /^schedules\[0\]\.cluster: cluster "team" belongs to another user/,
      );
      t.equal((await bob.project('POST', '/schedules', { json: { schedules: [{ code_name: 'share-w', cluster: 'team', run_every: 3600 }] } })).status, 200);
      // An operator's cluster (made by the admin command, no owner) is open to every user.
      await store.clusters.create('ops-pool');
      const carols = await queue(carol, 'ops-pool');
      t.equal(carols.status, 200);

      // Unsharing takes effect at once; a retry of bob's task on it is refused too.
      t.equal((await api.put(`/clusters/${id}`, { shared_to: [] })).status, 200);
      isError(t, await queue(bob, 'team'), 403);
      await store.db.query(`UPDATE tasks SET status = 'error' WHERE id = $1`, [byBob.body.tasks[0].id]);
      isError(t, await bob.project('POST', `/tasks/${byBob.body.tasks[0].id}/retry`, { json: {} }), 403, /^cluster: cluster "team"/);
      t.notOk((await listed(bob)).includes(id), 'and bob no longer lists it');

      // Names others' work already uses cannot be taken over.
      // (Queued work names a cluster no one has only from before unknown names were refused.)
      isError(t, await queue(carol, 'carols-future'), 400, /^tasks\[0\]\.cluster: no cluster named "carols-future"/);
      await store.db.query(`UPDATE tasks SET cluster = 'carols-future' WHERE id = $1`, [carols.body.tasks[0].id]);
      isError(t, await api.post('/clusters', { name: 'carols-future' }), 409, /used by queued tasks or schedules of other users/);
      t.equal((await as(carol).post('/clusters', { name: 'carols-future' })).status, 200, 'carol herself may create it');
    });

    t.test('unknown cluster names are refused', async (t) => {
      await codeOk(t, owner, 'strict-w');
      const q = (cluster: string) =>
        req('POST', `/2/projects/${owner.projectId}/tasks`, { token: owner.token, json: { tasks: [{ code_name: 'strict-w' }, { code_name: 'strict-w', cluster }] } });
      isError(t, await q('nowhere'), 400, /^tasks\[1\]\.cluster: no cluster named "nowhere"; create it with POST \/2\/clusters/);
      t.equal((await q('plain')).status, 200, 'an own cluster is fine');
      t.equal((await q('default')).status, 200, 'default is fine without a row');
    });

    t.test('terminate: marks KILL, all or nothing, clear errors', async (t) => {
      const { id } = await create(t, { name: 'term', autoscale: { aws: AWS } });
      await addInstance(id, 'i-live', 'LIVE');
      await addInstance(id, 'i-boot', 'ADD');
      await addInstance(id, 'i-gone', 'TERMINATE', clock.now());
      const other = await create(t, { name: 'term-other' });
      await addInstance(other.id, 'i-elsewhere', 'LIVE');
      const before = await instanceTypes(id);
      isError(t, await api.post(`/clusters/${id}/terminate`, { instance_ids: ['i-live', 'i-nope', 'i-elsewhere'] }), 404,
        'No instance "i-nope", "i-elsewhere" in this cluster; nothing was marked for termination');
      t.same(await instanceTypes(id), before, 'nothing was marked');
      isError(t, await api.post(`/clusters/${id}/terminate`, {}), 400, /^instance_ids is required/);
      isError(t, await api.post(`/clusters/${id}/terminate`, { instance_ids: 'i-live' }), 400, /^instance_ids is required/);
      isError(t, await api.post(`/clusters/${id}/terminate`, { instance_ids: [7] }), 400, /^instance_ids\[0\] must be an instance id/);
      isError(t, await api.post(`/clusters/${id}/terminate`, { instance_ids: Array(1001).fill('i-live') }), 400, /at most 1000 ids, got 1001/);
      clock.advance(5000);
      const r = await api.post(`/clusters/${id}/terminate`, { instance_ids: ['i-live', 'i-gone', 'i-live'] });
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Instances scheduled for terminated', marked: ['i-live'], already: ['i-gone'] });
      t.same(await instanceTypes(id), { 'i-live': 'KILL', 'i-boot': 'ADD', 'i-gone': 'TERMINATE' });
      const killAt = (await store.db.query<{ kill_at: Date }>(`SELECT kill_at FROM cluster_instances WHERE instance_id = 'i-live'`)).rows[0]!.kill_at;
      t.equal(new Date(killAt).toISOString(), clock.now().toISOString(), 'kill_at is now');
      t.same((await api.post(`/clusters/${id}/terminate`, { instance_ids: ['i-live'] })).body.already, ['i-live'], 'again: already KILL');
    });

    t.test('operators: every cluster with all=true, any cluster read, instances terminated, nothing else changed', async (t) => {
      const ops = await store.accounts.createUser(`ops-${engine}@example.com`);
      const o = as({ userId: ops.id, projectId: '', token: (await store.accounts.createToken(ops.id)).token, project: () => Promise.reject(new Error('unused')) });
      const theirs = await create(t, { name: 'carols-fleet', autoscale: { aws: AWS, docker_auth: DOCKER_AUTH } }, carol);
      await addInstance(theirs.id, 'i-carol-1', 'LIVE');
      await addInstance(theirs.id, 'i-carol-2', 'LIVE');

      const own = (await o.get('/clusters')).body.clusters;
      t.same(own, [], 'without all=true an operator lists only their own clusters (none)');
      const every = await o.get('/clusters?all=true&per_page=100');
      t.equal(every.status, 200, every.text);
      const names = every.body.clusters.map((x: { name: string }) => x.name);
      t.ok(names.includes('carols-fleet') && names.includes('plain') && names.includes('ops-pool'), 'all=true lists every user\'s clusters and the operator-made ones');
      t.equal(new Set(names).size, names.length, 'each once');
      t.same(every.body.clusters.map((x: { name: string }) => x.name), (await store.db.query<{ name: string }>('SELECT name FROM clusters WHERE deleted_at IS NULL ORDER BY id')).rows.map((r) => r.name), 'every live cluster, oldest first');
      t.same((await o.get('/clusters?all=true&per_page=1&page=1')).body.clusters.map((x: { name: string }) => x.name), [names[1]], 'paged');
      isError(t, await as(bob).get('/clusters?all=true'), 403, 'all=true lists every cluster, for operators only (GANTRY_OPERATORS)');
      t.same((await o.get('/clusters?all=0')).body.clusters, [], 'all=0 is the own list, like every flag of the API');

      const seen = await o.get(`/clusters/${theirs.id}`);
      t.equal(seen.status, 200, seen.text);
      t.equal(seen.body.cluster.autoscale.aws.instance_type, 'c5.xlarge', 'an operator sees the settings');
      t.equal(seen.body.cluster.autoscale.docker_auth_set, true, 'and whether a secret is set');
      t.same(seen.body.cluster.machines.map((m: { instance_id: string }) => m.instance_id).sort(), ['i-carol-1', 'i-carol-2'], 'and the instances');
      for (const secret of SECRETS) t.notOk(seen.text.includes(secret), 'but never a secret');
      t.equal((await o.get(`/clusters/${theirs.id}/stats`)).body.cluster.instances.length, 2, 'stats');
      t.equal((await o.get(`/clusters/${theirs.id}/load`)).status, 200, 'recorded load');

      const marked = await o.post(`/clusters/${theirs.id}/terminate`, { instance_ids: ['i-carol-1'] });
      t.equal(marked.status, 200, marked.text);
      t.same(marked.body.marked, ['i-carol-1'], 'an operator terminates an instance');
      t.same(await instanceTypes(theirs.id), { 'i-carol-1': 'KILL', 'i-carol-2': 'LIVE' });

      const before = await rawRow(theirs.id);
      isError(t, await o.put(`/clusters/${theirs.id}`, { memory: GiB }), 403, /^Only the cluster's owner can update it/);
      isError(t, await o.post(`/clusters/${theirs.id}/credentials`), 403, /owner can rotate its runner token/);
      isError(t, await o.del(`/clusters/${theirs.id}`), 403, /owner can delete it/);
      t.same(await rawRow(theirs.id), before, 'nothing else changed');
      t.same(await instanceTypes(theirs.id), { 'i-carol-1': 'KILL', 'i-carol-2': 'LIVE' }, 'and no instance was touched by the refusals');
      isError(t, await as(bob).get(`/clusters/${theirs.id}`), 404, 'Cluster not found');
      isError(t, await as(bob).post(`/clusters/${theirs.id}/terminate`, { instance_ids: ['i-carol-2'] }), 404, 'Cluster not found');
    });

    t.test('stats: ewma, queued, runner slots live and per instance', async (t) => {
      const { id } = await create(t, { name: 'stats', autoscale: { aws: AWS } });
      await addInstance(id, 'i-a', 'LIVE');
      await addInstance(id, 'i-b', 'KILL');
      await addInstance(id, 'i-old', 'TERMINATE', new Date(clock.now().getTime() - 2 * 3600_000));
      await addInstance(id, 'i-new', 'TERMINATE', new Date(clock.now().getTime() - 60_000));
      const runner = (rid: string, instance: string, slots: number, connected = true) =>
        store.db.query('INSERT INTO runners (id, cluster_id, instance_id, slots, connected, created_at) VALUES ($1, $2, $3, $4, $5, $6)', [rid, id, instance, slots, connected, clock.now()]);
      await runner(`ra-${engine}`, 'i-a', 4);
      await runner(`rb-${engine}`, 'i-b', 2);
      await runner(`rc-${engine}`, 'i-a', 8, false);
      await codeOk(t, owner, 'stats-w');
      const queued = await owner.project('POST', '/tasks', { json: { tasks: [1, 2, 3, 4].map(() => ({ code_name: 'stats-w', cluster: 'stats' })) } });
      const busy = queued.body.tasks[0].id as string;
      const row = (await store.db.query<{ code_id: string }>(`UPDATE tasks SET status = 'running' WHERE id = $1 RETURNING code_id`, [busy])).rows[0]!;
      await store.db.query(
        `INSERT INTO task_leases (id, task_id, attempt, runner_id, code_id, granted_at, expires_at, state, cluster) VALUES ($1, $2, 1, $3, $4, $5, $5, 'running', 'stats')`,
        [newId(), busy, `ra-${engine}`, row.code_id, clock.now()],
      );
      await store.db.query('INSERT INTO autoscaler_state (cluster_id, state, ewma, updated_at) VALUES ($1, $2::jsonb, $3, $4)', [id, '{}', 32.876, clock.now()]);
      const r = await api.get(`/clusters/${id}/stats`);
      t.equal(r.status, 200, r.text);
      const ts = clock.now().toISOString();
      const inst = (instance_id: string, type: string, total: number, available: number, extra: Record<string, unknown> = {}) => ({
        instance_id, type, provider: 'ec2', runners_total: total, runners_available: available, version: '1.2.3', launched_at: ts, created_at: ts, updated_at: ts, ...extra,
      });
      t.same(r.body, {
        cluster: {
          id,
          name: 'stats',
          ewma: 32.88,
          queued: 3,
          runners_total: 6,
          runners_available: 3,
          instances: [
            inst('i-a', 'LIVE', 4, 3),
            inst('i-b', 'KILL', 2, 0),
            inst('i-new', 'TERMINATE', 0, 0, { terminated_at: new Date(clock.now().getTime() - 60_000).toISOString() }),
          ],
        },
      }, 'a KILL instance\'s runners are alive but take no work; terminated instances show for an hour');
      const got = (await api.get(`/clusters/${id}`)).body.cluster;
      t.match(got, { runners_total: 6, runners_available: 3 });
      t.same(got.machines.map((m: { instance_id: string }) => m.instance_id), ['i-a', 'i-b'], 'machines: instances not terminated');
    });

    t.test('delete: soft, instances marked for termination, queued tasks cancelled, name freed', async (t) => {
      const { id, token } = await create(t, { name: 'doomed', autoscale: { aws: AWS } });
      await addInstance(id, 'i-1', 'LIVE');
      await addInstance(id, 'i-2', 'ADD');
      await addInstance(id, 'i-3', 'TERMINATE', clock.now());
      await codeOk(t, owner, 'doomed-w');
      const q = await owner.project('POST', '/tasks', { json: { tasks: [{ code_name: 'doomed-w', cluster: 'doomed' }] } });
      const r = await api.del(`/clusters/${id}`);
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Cluster deleted', instances_terminating: ['i-1', 'i-2'], tasks_cancelled: 1 });
      t.same(await instanceTypes(id), { 'i-1': 'KILL', 'i-2': 'KILL', 'i-3': 'TERMINATE' });
      t.match((await store.db.query('SELECT status, msg FROM tasks WHERE id = $1', [q.body.tasks[0].id])).rows[0], { status: 'cancelled', msg: /cluster was deleted/ });
      t.ok((await rawRow(id)).deleted_at, 'the row stays, marked deleted');
      isError(t, await api.get(`/clusters/${id}`), 404, 'Cluster not found');
      isError(t, await api.del(`/clusters/${id}`), 404);
      t.notOk((await api.get('/clusters')).body.clusters.some((c: { id: string }) => c.id === id));
      t.notOk(await store.clusters.authenticate(id, token), 'its runners are refused');
      t.notOk(await store.clusters.byName('doomed'));
      t.equal((await api.post('/clusters', { name: 'doomed' })).status, 200, 'the name can be used again');
    });

    t.test('runner token rotation', async (t) => {
      const { id, token } = await create(t, { name: 'rot' });
      const r = await api.post(`/clusters/${id}/credentials`);
      t.equal(r.status, 200, r.text);
      t.equal(r.body.id, id);
      t.match(r.body.token, /^[0-9a-f]{48}$/);
      t.notOk(await store.clusters.authenticate(id, token), 'the old token is refused');
      t.ok(await store.clusters.authenticate(id, r.body.token), 'the new one works');
      t.equal(await store.clusters.runnerToken(id), r.body.token);
      const g = await api.get(`/clusters/${id}/credentials`);
      isError(t, g, 405, /kept only as a hash.*POST to this URL to rotate/);
      t.equal(g.headers.get('allow'), 'POST');
    });

    t.test('key rotation: old key second still opens; reencrypt moves everything to the new key', async (t) => {
      const { id } = await create(t, { name: 'keys', autoscale: { aws: AWS, docker_auth: DOCKER_AUTH, docker_email: DOCKER_EMAIL } });
      store.useSecrets(SecretBox.fromSpec(`k2:${K2},k1:${K1}`));
      t.same(await store.clusters.runnerSecrets(id), { dockerAuth: DOCKER_AUTH, dockerEmail: DOCKER_EMAIL }, 'values under k1 open with k1 second');
      const out = await runAdmin(store, ['cluster', 'reencrypt']);
      t.match(out, /^re-encrypted \d+ secret\(s\); 0 already under the first key$/);
      const sealed = (await store.db.query<Record<string, string | null>>(
        'SELECT aws_access_key_id_enc, aws_secret_access_key_enc, docker_auth_enc, docker_email_enc, token_enc FROM clusters',
      )).rows.flatMap((r) => Object.values(r)).filter((v): v is string => v !== null);
      t.ok(sealed.length > 10);
      t.ok(sealed.every((v) => v.startsWith('g1.k2.')), 'every sealed value is now under k2');
      t.match(await runAdmin(store, ['cluster', 'reencrypt']), /^re-encrypted 0 secret\(s\); \d+ already under the first key$/, 'a second run has nothing to do');
      store.useSecrets(SecretBox.fromSpec(`k2:${K2}`));
      t.same(await store.clusters.runnerSecrets(id), { dockerAuth: DOCKER_AUTH, dockerEmail: DOCKER_EMAIL }, 'k1 can go');
      t.same(await store.clusters.awsCredentials(id), { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY });
      // Without the right key, reading fails clearly (and the API, which never opens secrets, still works).
      store.useSecrets(SecretBox.fromSpec(`k1:${K1}`));
      await t.rejects(store.clusters.runnerSecrets(id), /key id k2, which is not among the configured keys \(k1\)/);
      t.equal((await api.get(`/clusters/${id}`)).status, 200);
      const failed = await runAdmin(store, ['cluster', 'reencrypt']).catch((e: unknown) => e);
      t.type(failed, UsageError);
      t.match((failed as Error).message, /cannot re-encrypt docker_auth of cluster [0-9a-f]{24}: a secret was sealed with key id k2, which is not among the configured keys \(k1\)/);
      t.match((failed as Error).message, /\n\(keep the old keys until these are fixed\)$/);
      store.useSecrets(SecretBox.fromSpec(`k2:${K2}`));
    });

    t.test('no secret or token reached a log line', async (t) => {
      // Its own secret-bearing requests, so it holds run alone (--grep) as well as after the others.
      const from = logs.text.length;
      const { id } = await create(t, { name: 'logged', autoscale: { aws: AWS, docker_auth: DOCKER_AUTH, docker_email: DOCKER_EMAIL } });
      t.equal((await api.put(`/clusters/${id}`, { autoscale: { aws: { secret_access_key: SECRET_KEY }, docker_auth: DOCKER_AUTH } })).status, 200);
      t.equal((await api.post(`/clusters/${id}/credentials`)).status, 200);
      t.equal((await api.get(`/clusters/${id}`)).status, 200);
      const own = logs.text.slice(from).split('\n').filter((l) => l.includes(`"clusterId":"${id}"`));
      t.ok(own.some((l) => l.includes('"msg":"cluster created"')), 'the trace-level log was captured');
      t.ok(own.some((l) => l.includes('"msg":"cluster updated"') && /"fields":\["/.test(l)), 'logs name the fields that changed');
      t.ok(own.some((l) => l.includes('"msg":"cluster runner token rotated"')), 'and the token rotation');
      noSecrets(t, logs.text, 'the logs');
      const tokens = (await store.db.query<{ id: string }>('SELECT id FROM clusters WHERE token_enc IS NOT NULL AND deleted_at IS NULL')).rows;
      for (const { id } of tokens) t.notOk(logs.text.includes((await store.clusters.runnerToken(id))!), 'no runner token in the logs');
    });
  });
}

t.test('without a key, clusters without secrets still work and secrets are refused clearly', async (t) => {
  const store: Store = await freshStore(t, 'pglite');
  const { cluster, token } = await store.clusters.create('bare');
  t.ok(await store.clusters.authenticate(cluster.id, token));
  t.equal(await store.clusters.runnerToken(cluster.id), undefined, 'no sealed token copy without a key');
  const u = await store.accounts.createUser('nokey@example.com');
  await t.rejects(
    store.clusters.createCluster(u.id, {
      name: 'sec', memoryMb: 512, diskBytes: 10 * GiB, aws: null, userData: null, disable: false, runnersMin: 0, runnersMax: 0,
      runnersPerInstance: 0, sharedTo: [], secrets: { dockerAuth: DOCKER_AUTH },
    }),
    /no secret key is configured/,
  );
  const err = await runAdmin(store, ['cluster', 'reencrypt']).catch((e: unknown) => e);
  t.type(err, UsageError);
  t.match((err as Error).message, /no secret key is configured/);
});
