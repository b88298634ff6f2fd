/**
 * Several replicas in one process (real PostgreSQL, real etcd, real runner agents): wake-ups
 * and cancels that cross replicas, a graceful stop that moves runners without interrupting
 * their tasks, and an etcd outage.
 */
import t, { type Test } from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { systemClock } from '../../../lib/clock.ts';
import type { ControlPlane } from '../../../control-plane/start.ts';
import type { Store } from '../../../control-plane/store/index.ts';
import { loadRunnerConfig } from '../../../runner/config.ts';
import { startRunner, type Runner } from '../../../runner/start.ts';
import { tempDir } from '../../helpers/db.ts';
import { replicaRig } from '../../helpers/replicas.ts';
import { EtcdInstance } from '../../helpers/etcd.ts';
import { until } from '../../helpers/runner.ts';
import { FINAL, maxRunning } from '../../helpers/faults.ts';
import { etcdEndpoint } from '../../helpers/services.ts';

const FAST = {
  GANTRY_BEAT_INTERVAL_MS: '200',
  GANTRY_LEASE_TTL_MS: '4000',
  GANTRY_ACCEPT_DEADLINE_MS: '2000',
  GANTRY_SWEEP_INTERVAL_MS: '200',
  GANTRY_RECONNECT_BASE_MS: '50',
  GANTRY_RECONNECT_CAP_MS: '300',
  GANTRY_COORD_TTL_S: '1',
  GANTRY_CANCEL_GRACE_MS: '500',
  // No safety-net tick: only events can deliver work and cancels across replicas.
  GANTRY_DISPATCH_TICK_MS: '600000',
};

interface Rig {
  dbUrl: string;
  setup: Store;
  token: string;
  projectId: string;
  cluster: { id: string; token: string };
  replica(name: string, env?: Record<string, string>): Promise<ControlPlane>;
  runner(cps: ControlPlane[], env?: Record<string, string>): Promise<Runner>;
  call(cp: ControlPlane, method: string, path: string, json?: unknown, form?: FormData): Promise<{ status: number; body: any }>;
}

async function rig(t: Test, etcd = etcdEndpoint(), prefix?: string): Promise<Rig> {
  const { dbUrl, setup, replica } = await replicaRig(t, systemClock, { etcd, ...(prefix ? { prefix } : {}) });
  const user = await setup.accounts.createUser(`ip${Date.now()}@example.com`);
  const project = await setup.accounts.createProject(user.id, 'ha');
  const { token } = await setup.accounts.createToken(user.id, 'ha');
  const { cluster, token: ctoken } = await setup.clusters.create('default', { memoryMb: 64 });
  const r: Rig = {
    dbUrl,
    setup,
    token,
    projectId: project.id,
    cluster: { id: cluster.id, token: ctoken },
    replica: (name, env = {}) => replica(name, { ...FAST, ...env }),
    async runner(cps, env = {}) {
      const config = loadRunnerConfig({
        GANTRY_CONTROL_PLANE: cps.map((cp) => `127.0.0.1:${cp.grpcPort}`).join(','),
        GANTRY_CLUSTER_ID: cluster.id,
        GANTRY_CLUSTER_TOKEN: ctoken,
        GANTRY_RUNNER_WORK_DIR: tempDir(t, 'gantry-runner-'),
        GANTRY_RUNNER_SLOTS: '4',
        GANTRY_RUNNER_EXECUTOR: 'noop',
        GANTRY_RUNNER_HEALTH_PORT: '-1',
        LOG_LEVEL: 'silent',
        ...env,
      });
      const runner = await startRunner(config, silentLogger());
      t.teardown(() => runner.stop());
      return runner;
    },
    async call(cp, method, path, json, form) {
      const res = await fetch(`${cp.url}/2/projects/${project.id}${path}`, {
        method,
        headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
        body: json ? JSON.stringify(json) : form,
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    },
  };
  return r;
}

async function code(r: Rig, cp: ControlPlane, name: string, extra: Record<string, unknown> = {}) {
  const form = new FormData();
  form.append('data', JSON.stringify({ name, image: 'gantry-test/busybox:latest', ...extra }));
  const res = await r.call(cp, 'POST', '/codes', undefined, form);
  if (res.status !== 200) throw new Error(`upload failed: ${JSON.stringify(res.body)}`);
}

async function queue(r: Rig, cp: ControlPlane, codeName: string, payload = '', n = 1): Promise<string[]> {
  const res = await r.call(cp, 'POST', '/tasks', { tasks: Array.from({ length: n }, () => ({ code_name: codeName, payload })) });
  if (res.status !== 200) throw new Error(`queue failed: ${res.status} ${JSON.stringify(res.body)}`);
  return (res.body.tasks as { id: string }[]).map((x) => x.id);
}

const status = async (s: Store, ids: string[]) =>
  (await s.db.query<{ id: string; status: string; run_times: number; msg: string | null }>(
    'SELECT id, status, run_times, msg FROM tasks WHERE id = ANY($1::text[]) ORDER BY id',
    [ids],
  )).rows;

const sessionOf = async (s: Store, runnerId: string) =>
  (await s.db.query<{ server_id: string }>('SELECT server_id FROM runners WHERE id = $1 AND connected', [runnerId])).rows[0]?.server_id;

t.test('a task queued on one replica runs on a runner of another; a cancel crosses too', async (t) => {
  const r = await rig(t);
  const a = await r.replica('a');
  const b = await r.replica('b');
  await code(r, a, 'hello');
  const runner = await r.runner([b]);
  await until('the runner is connected to b', async () => (await sessionOf(r.setup, runner.agent.runnerId)) === 'b');

  // The dispatcher's tick is ten minutes: only the event from a can wake b.
  const ids = await queue(r, a, 'hello', 'hi');
  await until('the task completes', async () => (await status(r.setup, ids))[0]?.status === 'complete', 10_000);
  const lat = await r.setup.db.query<{ ms: number }>(
    `SELECT extract(epoch FROM (l.granted_at - t.created_at)) * 1000 AS ms FROM tasks t JOIN task_leases l ON l.task_id = t.id WHERE t.id = $1`,
    ids,
  );
  t.ok(Number(lat.rows[0]!.ms) < 2000, `offered through b ${Math.round(Number(lat.rows[0]!.ms))} ms after it was queued on a`);

  const long = await queue(r, a, 'hello', '{"noop_sleep_ms": 60000}');
  await until('the long task runs', async () => (await status(r.setup, long))[0]?.status === 'running', 10_000);
  const res = await r.call(a, 'POST', `/tasks/${long[0]}/cancel`);
  t.equal(res.status, 200, 'cancel accepted on a');
  await until('the cancel reached the runner through b', async () => (await status(r.setup, long))[0]?.status === 'cancelled', 5000);
});

t.test('a replica stopped gracefully hands its runners to another; their tasks complete normally', async (t) => {
  const r = await rig(t);
  const a = await r.replica('a');
  const b = await r.replica('b');
  await code(r, a, 'work');
  const runner = await r.runner([a, b]);
  await until('the runner is on a', async () => (await sessionOf(r.setup, runner.agent.runnerId)) === 'a');
  const ids = await queue(r, a, 'work', '{"noop_sleep_ms": 2500}', 4);
  await until('all four run', async () => (await status(r.setup, ids)).every((x) => x.status === 'running'), 10_000);
  await a.stop();
  await until('the runner moved to b', async () => (await sessionOf(r.setup, runner.agent.runnerId)) === 'b', 10_000);
  await until('all four complete', async () => (await status(r.setup, ids)).every((x) => FINAL.includes(x.status)), 15_000);
  const rows = await status(r.setup, ids);
  t.same(rows.map((x) => [x.status, x.run_times]), ids.map(() => ['complete', 1]), 'each completed, run once');
  const leases = await r.setup.db.query<{ n: number }>('SELECT count(*)::int AS n FROM task_leases WHERE task_id = ANY($1::text[])', [ids]);
  t.equal(leases.rows[0]!.n, 4, 'one lease each: nothing was retried');
  // b now leads and runs the loops.
  await until('b leads', async () => b.coord.status().isLeader);
});

t.test('etcd down for 30 s: the API keeps serving, limited work pauses, unlimited flows; then one leader and all done', async (t) => {
  const etcd = await EtcdInstance.create(t);
  const r = await rig(t, etcd.endpoint, '/gantry/');
  const a = await r.replica('a');
  const b = await r.replica('b');
  await code(r, a, 'free');
  await code(r, a, 'limited', { max_concurrency: 1 });
  await r.runner([a]);
  await r.runner([b]);
  await until('one leader', async () => [a, b].filter((x) => x.coord.status().isLeader).length === 1);
  const before = await queue(r, a, 'limited', '', 3);
  await until('limited tasks run before the outage', async () => (await status(r.setup, before)).every((x) => x.status === 'complete'), 10_000);

  await etcd.stop();
  await until('both replicas see etcd gone', async () => [a, b].every((x) => !x.coord.status().healthy), 5000);
  const ready = await fetch(`${a.url}/readyz`);
  const body = (await ready.json()) as { coordinator: { status: string } };
  t.equal(ready.status, 503, 'not ready without etcd');
  t.equal(body.coordinator.status, 'unreachable', '/readyz says why');
  const metrics = await (await fetch(`${a.url}/metrics`)).text();
  t.match(metrics, /gantry_coordinator_up 0/, 'and so does /metrics');
  const free = await queue(r, a, 'free', '', 5);
  const limited = await queue(r, b, 'limited', '', 3);
  await until('unlimited tasks run without etcd', async () => (await status(r.setup, free)).every((x) => x.status === 'complete'), 10_000);
  t.same((await status(r.setup, limited)).map((x) => x.status), ['queued', 'queued', 'queued'], 'limited tasks wait for their slots');
  t.equal([a, b].filter((x) => x.coord.status().isLeader).length, 0, 'no leader without etcd');
  // The claims above are watched through the whole outage, not only in its first seconds: a
  // replica that began admitting limited work locally after a while without etcd would show here.
  const leasesOf = async (ids: string[]) =>
    (await r.setup.db.query<{ n: number }>('SELECT count(*)::int AS n FROM task_leases WHERE task_id = ANY($1::text[])', [ids])).rows[0]!.n;
  const seen = new Set<string>();
  let samples = 0;
  const outageEnd = Date.now() + 30_000;
  while (Date.now() < outageEnd) {
    const st = (await status(r.setup, limited)).map((x) => x.status);
    if (st.some((x) => x !== 'queued')) seen.add(`limited tasks ${st.join(',')}`);
    const n = await leasesOf(limited);
    if (n > 0) seen.add(`${n} leases of limited tasks`);
    if ([a, b].some((x) => x.coord.status().isLeader)) seen.add('a leader');
    samples++;
    await new Promise((res) => setTimeout(res, 250));
  }
  t.ok(samples > 20, `the outage was watched (${samples} samples)`);
  t.same([...seen], [], 'all through the outage: limited tasks queued, none leased, no leader');
  const late = await queue(r, b, 'free', '', 1);
  await until('a free task queued late in the outage completes', async () => (await status(r.setup, late))[0]?.status === 'complete', 10_000);
  t.same((await status(r.setup, limited)).map((x) => x.status), ['queued', 'queued', 'queued'], 'limited tasks still wait at the end of the outage');
  t.equal(await leasesOf(limited), 0, 'and no lease was ever granted for them');
  await etcd.start();
  await until('etcd back: exactly one leader', async () => [a, b].every((x) => x.coord.status().healthy) && [a, b].filter((x) => x.coord.status().isLeader).length === 1, 30_000);
  await until('limited tasks run again', async () => (await status(r.setup, limited)).every((x) => x.status === 'complete'), 20_000);
  t.equal((await fetch(`${a.url}/readyz`)).status, 200, 'ready again');
  t.equal([a, b].filter((x) => x.coord.status().isLeader).length, 1, 'still exactly one leader');
});

t.test("a project's limit on running tasks holds across replicas", async (t) => {
  const r = await rig(t);
  const a = await r.replica('a');
  const b = await r.replica('b');
  await code(r, a, 'one');
  await code(r, a, 'two');
  t.ok(await r.setup.accounts.setProjectLimit(r.projectId, 2), 'limit set');
  await r.runner([a]);
  await r.runner([b]);
  const ids = [
    ...(await queue(r, a, 'one', '{"noop_sleep_ms": 300}', 8)),
    ...(await queue(r, b, 'two', '{"noop_sleep_ms": 300}', 8)),
  ];
  await until('all complete', async () => (await status(r.setup, ids)).every((x) => x.status === 'complete'), 30_000);
  const leases = await r.setup.db.query<{ started_at: Date; ended_at: Date }>(
    'SELECT started_at, ended_at FROM task_leases WHERE task_id = ANY($1::text[]) AND started_at IS NOT NULL',
    [ids],
  );
  t.equal(maxRunning(leases.rows), 2, 'never more than 2 of the project running at once, and the limit was reached');
});
