/**
 * `/healthcheck` (each dependency asked now, within a bound even when one hangs) and
 * `/2/status` (the farm as one user sees it) on both engines, with a real runner and real
 * etcd servers, one of them frozen with SIGSTOP.
 */
import t from 'tap';
import { runAdmin } from '../../../control-plane/admin.ts';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { ENGINES } from '../../helpers/db.ts';
import { EtcdInstance, etcdPrefix } from '../../helpers/etcd.ts';
import { FAST_TIMERS, queueTasks, spawnRunnerProcess } from '../../helpers/faults.ts';
import { TEST_IMAGE, testCluster, until } from '../../helpers/runner.ts';

for (const engine of ENGINES) {
  t.test(`/healthcheck without etcd (${engine})`, async (t) => {
    const api = await startTestApi(t, engine);
    const r = await api.request('GET', '/healthcheck');
    t.equal(r.status, 200, r.text);
    t.match(r.body, { errors: [], postgres: true, etcd: null, database: engine, is_leader: true, draining: false });
    t.equal(r.body.leader, r.body.replica, 'alone, this replica leads');
    t.ok(r.body.uptime_s >= 0 && r.body.checked_in_ms >= 0);
  });
}

t.test('/healthcheck with etcd: answers, and a frozen etcd is a 503 within the bound', async (t) => {
  const etcd = await EtcdInstance.create(t);
  const api = await startTestApi(t, 'postgres', {
    env: { ETCD_ENDPOINTS: etcd.endpoint, GANTRY_ETCD_PREFIX: etcdPrefix(t, etcd.endpoint), GANTRY_HEALTHCHECK_TIMEOUT_MS: '400' },
  });
  const ok = await until('a leader', async () => {
    const r = await api.request('GET', '/healthcheck');
    return r.status === 200 && r.body.leader ? r : undefined;
  });
  t.match(ok.body, { errors: [], postgres: true, etcd: true, database: 'postgres' });

  etcd.freeze();
  t.teardown(() => etcd.thaw());
  const t0 = Date.now();
  const down = await api.request('GET', '/healthcheck');
  const took = Date.now() - t0;
  t.equal(down.status, 503, down.text);
  t.match(down.body, { postgres: true, etcd: false, errors: ['etcd: no answer within 400 ms'] });
  // The bound, not the client's own timeouts, decided (a generous margin for a loaded machine).
  t.ok(took < 5000, `answered in ${took} ms`);
  etcd.thaw();
  await until('etcd back', async () => (await api.request('GET', '/healthcheck')).status === 200);
  t.pass('200 again once etcd answers');
});

for (const engine of ENGINES) {
  t.test(`/2/status: the farm as one user sees it (${engine})`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: FAST_TIMERS });
    const u = api.user;
    const cluster = await testCluster(api);
    t.equal((await uploadCode(u, { name: 'sleeper', image: TEST_IMAGE, command: 'echo up; sleep 30' })).status, 200);
    t.equal((await uploadCode(u, { name: 'later', image: TEST_IMAGE, command: 'true' })).status, 200);
    const sched = await u.project('POST', '/schedules', { json: { schedules: [{ code_name: 'later', run_every: 3600, start_at: '2099-01-01T00:00:00Z' }] } });
    t.equal(sched.status, 200, sched.text);

    const runner = await spawnRunnerProcess(t, api, cluster);
    const [running] = await queueTasks(api, 'sleeper');
    await queueTasks(api, 'sleeper'); // waits: the runner has one slot
    await queueTasks(api, 'later', 2, { delay: 3600 });
    await until('the sleeper to run', async () => (await u.project('GET', `/tasks/${running}`)).body.status === 'running');

    const other = await api.newUser();
    t.equal((await uploadCode(other, { name: 'theirs', image: TEST_IMAGE, command: 'sleep 30' })).status, 200);

    const status = async (who: { token: string }) => api.request('GET', '/2/status', { token: who.token });
    const s = await status(u);
    t.equal(s.status, 200, s.text);
    const f = s.body;
    t.same(f.running.map((r: { task_id: string }) => r.task_id), [running], 'my running task');
    t.match(f.running[0], { project_id: u.projectId, code_name: 'sleeper', cluster: 'default', runner_id: runner.runnerId, state: 'running' });
    t.match(f.running[0].container_id, /^[0-9a-f]{64}$/);
    t.same(f.queues.clusters, [{ cluster: 'default', queued: 1, delayed: 2, running: 1 }]);
    t.same(
      f.queues.codes.map((c: { code_name: string; queued: number; delayed: number; running: number }) => [c.code_name, c.queued, c.delayed, c.running]).sort(),
      [['later', 0, 2, 0], ['sleeper', 1, 0, 1]],
    );
    t.same(f.upcoming.map((x: { schedule_id: string }) => x.schedule_id), [sched.body.schedules[0].id]);
    t.equal(f.upcoming[0].next_start, '2099-01-01T00:00:00.000Z');
    t.match(f.counts, { codes: 2, schedules: 1, tasks: { queued: 3, running: 1, complete: 0 } });
    // The default cluster is the operator's, not the user's: its runners are not shown to them.
    t.same(f.hosts, [], "an operator's cluster's runners are not the user's hosts");
    t.equal(f.others_running, 0);

    // A cluster the user owns (shared to the other user), with a runner of its own: its host is shown.
    const mine = await api.request('POST', '/2/clusters', { token: u.token, json: { name: `mine-${engine}`, shared_to: [other.userId] } });
    t.equal(mine.status, 200, mine.text);
    const own = await spawnRunnerProcess(t, api, { id: mine.body.id, token: mine.body.token });
    const withHost = await until('my runner to be shown', async () => {
      const r = (await status(u)).body;
      return r.hosts.length === 1 ? r : undefined;
    });
    t.match(withHost.hosts[0], { runner_id: own.runnerId, cluster: `mine-${engine}`, connected: true, available: true, draining: false, penalised: false, busy: 0 });
    t.ok(withHost.hosts[0].slots >= 1);
    // The other user's task in it is counted, never named.
    const [theirs] = await queueTasks({ ...api, user: other }, 'theirs', 1, { cluster: `mine-${engine}` });
    await until('their task to run', async () => (await other.project('GET', `/tasks/${theirs}`)).body.status === 'running');
    const shared = (await status(u)).body;
    t.equal(shared.others_running, 1, 'counted');
    t.notOk(JSON.stringify(shared).includes(theirs!), 'never named');
    t.notOk(JSON.stringify((await status(other)).body).includes(running!), 'the other user does not see mine');

    isError(t, await api.request('GET', '/2/status', { token: null }), 401, /./);

    // The operator's view (`gantry status`): every user's tasks and every cluster's runners.
    const farm = JSON.parse(await runAdmin(api.store, ['status', '--json']));
    t.same(farm.running.map((r: { task_id: string }) => r.task_id).sort(), [running, theirs].sort(), "everyone's running tasks");
    t.same(farm.hosts.map((h: { runner_id: string }) => h.runner_id).sort(), [runner.runnerId, own.runnerId].sort(), "every cluster's runners");
    t.equal(farm.others_running, 0);
    const text = await runAdmin(api.store, ['status']);
    t.match(text, /^runners: 2 connected, \d available$/m);
    t.match(text, new RegExp(`^  task ${running} sleeper on ${runner.runnerId} \\(default\\) running since `, 'm'));
    t.match(text, /^  cluster default: 1 \/ 2 \/ 1$/m);
    t.match(text, /^counts: 3 code packages, 1 schedules; tasks queued=3 running=2 /m);
  });
}
