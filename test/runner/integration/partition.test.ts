/**
 * A runner cut from its replica by a real network partition (test/helpers/netns.ts): the
 * runner is a real process in a network namespace of its own, its only way to the control
 * plane a link whose packets are dropped while it is cut — a half-open connection that
 * neither side is told about. What the protocol promises (proto/README.md, 2 Handshake and
 * reconcile, 4 Lease lifecycle, 5 Timers):
 *
 * - session_dead_after without a frame: the control plane stops offering to the runner but
 *   reclaims nothing; the runner's watchdog drops the stream and reconnects, presenting its
 *   ledger, so a running task is kept (same lease) and completes once, with its log;
 * - lease_ttl without a frame: the session is closed and the lease reclaimed. Runner loss is
 *   not a task error: the task is requeued within the internal budget
 *   (GANTRY_RUNNER_LOSS_BUDGET) without spending a user retry, and ends `killed` ("runner
 *   lost") only once the budget is spent; the returning runner is told to drop the lease;
 * - a runner that knows several replicas moves to a reachable one when its path to the
 *   current one is cut, and its task is kept there.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import Dockerode from 'dockerode';
import t, { type Test } from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { openStore, type Store } from '../../../control-plane/store/index.ts';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { etcdPrefix } from '../../helpers/etcd.ts';
import { finalOf, leasesOf, metric, metricAt, queueTasks, taskRow } from '../../helpers/faults.ts';
import { freePort } from '../../helpers/pg-instance.ts';
import { startGantryProcess } from '../../helpers/process.ts';
import { logLines, NetLab, type LogLine, type NetNode } from '../../helpers/netns.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';
import { etcdEndpoint, RUN_ID } from '../../helpers/services.ts';

const RUNNER_MAIN = fileURLToPath(new URL('../../../runner/main.ts', import.meta.url));
const docker = new Dockerode();

/** A runner process inside `node`'s namespace (no-op executor unless `extra` says otherwise); resolves with its id. */
async function nsRunner(
  t: Test,
  lab: NetLab,
  node: NetNode,
  cluster: { id: string; token: string },
  controlPlanes: string[],
  extra: Record<string, string> = {},
) {
  const workDir = tempDir(t, 'gantry-runner-');
  // Its containers (Docker executor) carry a label of their own and are removed at teardown.
  const label = `gantry.test-runner=${randomUUID().slice(0, 8)}`;
  t.teardown(async () => {
    for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) {
      await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    }
  });
  const p = lab.spawn(t, node, [process.execPath, '--import', 'tsx', RUNNER_MAIN], {
    GANTRY_CONTROL_PLANE: controlPlanes.join(','),
    GANTRY_CLUSTER_ID: cluster.id,
    GANTRY_CLUSTER_TOKEN: cluster.token,
    GANTRY_RUNNER_WORK_DIR: workDir,
    GANTRY_RUNNER_SLOTS: '2',
    GANTRY_RUNNER_EXECUTOR: 'noop',
    GANTRY_RUNNER_HEALTH_PORT: '-1',
    GANTRY_RUNNER_LABELS: `gantry.test-run=${RUN_ID},${label}`,
    LOG_LEVEL: 'info',
    ...extra,
  });
  const idFile = path.join(workDir, 'runner-id');
  const runnerId = await until('the runner id file', async () => {
    if (p.proc.exitCode !== null) throw new Error(`runner exited early:\n${p.output()}`);
    return fs.existsSync(idFile) ? fs.readFileSync(idFile, 'utf8').trim() || undefined : undefined;
  });
  return { ...p, runnerId, logs: (): LogLine[] => logLines(p.output()) };
}

async function runnerRow(api: { store: Store }, id: string) {
  return (
    await api.store.db.query<{ session_epoch: string; session_id: string; server_id: string; connected: boolean; last_beat_at: Date }>(
      'SELECT session_epoch, session_id, server_id, connected, last_beat_at FROM runners WHERE id = $1',
      [id],
    )
  ).rows[0]!;
}

const after = (lines: LogLine[], at: number, msg: string | RegExp) =>
  lines.filter((l) => l.time >= at && (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)));

t.test('cut for longer than session_dead_after, shorter than the lease TTL: no offers meanwhile, the lease rides it out, the task completes once with its whole log', async (t) => {
  const SESSION_DEAD = 1500;
  const lab = await NetLab.create(t, 'short');
  const node = lab.node('runner');
  const link = lab.link(node, 'eth0');
  const api = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: {
      GANTRY_GRPC_HOST: link.hostAddr,
      GANTRY_BEAT_INTERVAL_MS: '200',
      GANTRY_SESSION_DEAD_AFTER_MS: String(SESSION_DEAD),
      GANTRY_LEASE_TTL_MS: '20000',
      GANTRY_ACCEPT_DEADLINE_MS: '2000',
      GANTRY_SWEEP_INTERVAL_MS: '100',
      GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
      GANTRY_RECONNECT_BASE_MS: '100',
      GANTRY_RECONNECT_CAP_MS: '1000',
    },
  });
  const cluster = await testCluster(api);
  // A real container that writes its log before, during and after the cut.
  const LINES = 24;
  const command = `i=0; while [ $i -lt ${LINES} ]; do echo line $i; i=$((i+1)); sleep 0.5; done`;
  t.equal((await uploadCode(api.user, { name: 'count', image: TEST_IMAGE, command })).status, 200, 'code uploaded');
  t.equal((await uploadCode(api.user, { name: 'hello', image: TEST_IMAGE, command: 'echo second' })).status, 200, 'code uploaded');
  const r = await nsRunner(t, lab, node, cluster, [`${link.hostAddr}:${api.cp.grpcPort}`], { GANTRY_RUNNER_EXECUTOR: 'docker' });
  await until('the runner connected', async () => api.cp.dispatcher.session(r.runnerId)?.state === 'open', 30000);
  const firstSession = api.cp.dispatcher.session(r.runnerId)!.sessionId;

  const [id] = await queueTasks(api, 'count');
  const [lease] = await until('the task running on the runner', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.state === 'running' ? ls : undefined;
  }, 30000);
  await until('the runner announcing its free slot', async () => api.cp.dispatcher.session(r.runnerId)!.freeSlots() === 1);
  await until('its first lines stored', async () => (await api.user.project('GET', `/tasks/${id}/log`)).text.includes('line 1\n'), 10000);

  link.cut();
  const cutAt = Date.now();
  // The control plane notices: after session_dead_after without a frame it offers nothing more.
  await until('the control plane to stop offering to the silent runner', async () => api.cp.dispatcher.session(r.runnerId)!.freeSlots() === 0, 10000, 20);
  const deadAt = Date.now();
  // What is stored by now was sent before the cut (anything in flight then has long landed).
  const storedAtCut = (await api.user.project('GET', `/tasks/${id}/log`)).text;
  t.ok(deadAt - cutAt >= SESSION_DEAD - 500, `not before session_dead_after (${deadAt - cutAt} ms after the cut)`);
  t.ok(deadAt - cutAt <= SESSION_DEAD + 1000, `within session_dead_after (${deadAt - cutAt} ms after the cut; ${SESSION_DEAD} ms)`);

  // The runner notices too: its watchdog drops the stream that brings no frame.
  const noticed = await until(
    "the runner's watchdog",
    async () => after(r.logs(), cutAt, 'no frame from the control plane within session_dead_after; reconnecting')[0],
    10000,
    20,
  );
  t.ok(noticed.time - cutAt <= SESSION_DEAD + 1000, `the runner noticed within session_dead_after (+ a beat): ${noticed.time - cutAt} ms`);
  const lost = await until('the runner to drop its stream', async () => after(r.logs(), cutAt, 'control stream lost; reconnecting')[0], 5000, 20);
  t.match(String(lost.why), /CANCELLED/, `the stream was dropped by the runner's own watchdog, not by an error from the network (${lost.why})`);
  t.equal(lost.inFlight, 1, 'with the running task in its ledger');

  // A task queued now is not offered to the dead session (it would be lost in flight). A
  // negative over a window: 1.5 s.
  const [second] = await queueTasks(api, 'hello');
  await new Promise((res) => setTimeout(res, 1500));
  t.same(await leasesOf(api, second!), [], 'nothing offered to the runner while its session is dead');
  t.match(await taskRow(api, second!), { status: 'queued' }, 'it waits in the queue');
  const [during] = await leasesOf(api, id!);
  t.match(during, { id: lease!.id, state: 'running', ended_at: null }, 'the running lease is not reclaimed (shorter than the lease TTL)');
  t.equal(api.cp.dispatcher.session(r.runnerId)?.sessionId, firstSession, 'the server still holds the half-open session: nothing told it otherwise');

  const storedAtHeal = (await api.user.project('GET', `/tasks/${id}/log`)).text;
  link.heal();
  const healAt = Date.now();
  const welcome = await until(
    'the runner to reconnect after the heal',
    async () => after(r.logs(), healAt, 'connected to the control plane')[0],
    30000,
    20,
  );
  t.comment(`cut ${healAt - cutAt} ms; reconnected ${welcome.time - healAt} ms after the heal`);
  t.equal(welcome.keep, 1, 'the reconnect presented its ledger and the server kept the running task');
  t.equal(welcome.revoke, 0, 'nothing revoked');
  const row = await runnerRow(api, r.runnerId);
  t.equal(Number(row.session_epoch), 2, 'one new session (epoch 2)');
  t.not(api.cp.dispatcher.session(r.runnerId)?.sessionId, firstSession, 'the half-open session was replaced');

  const done = await finalOf(api, id!, 60000, { log: true });
  t.match(done, { status: 'complete', exit_code: 0, run_times: 1, runner_losses: 0, runner_id: r.runnerId, log_complete: true }, 'the task completed once');
  const leases = await leasesOf(api, id!);
  t.same(leases.map((l) => [l.id, l.runner_id, l.outcome]), [[lease!.id, r.runnerId, 'complete']], 'on its one lease, in its one container');
  const expected = Array.from({ length: LINES }, (_, i) => `line ${i}\n`).join('');
  t.equal((await api.user.project('GET', `/tasks/${id}/log`)).text, expected, 'with its whole log: every line once, in order');
  t.equal(storedAtHeal, storedAtCut, `no log reached the control plane during the cut (${storedAtCut.split('\n').length - 1} lines stored before it)`);
  t.ok(expected.startsWith(storedAtHeal), 'what was stored before the cut is where the log went on from');
  const s2 = await finalOf(api, second!, 30000, { log: true });
  t.match(s2, { status: 'complete', run_times: 1, runner_id: r.runnerId }, 'the task queued during the cut ran after the heal, once');
  t.equal((await api.user.project('GET', `/tasks/${second}/log`)).text, 'second\n', 'with its log');
  // When the link heals, frames the runner sent before its watchdog fired reach the old
  // session first and revive its credit: an offer may go out on that stream, which the
  // runner has already dropped. Its Hello on the new stream does not list it, so the server
  // takes it back at once (unknown_to_runner) and offers it again: never run, never counted.
  const l2 = await leasesOf(api, second!);
  t.comment(`second task's leases: ${JSON.stringify(l2.map((l) => [l.outcome, l.started_at !== null]))}`);
  t.same(l2.filter((l) => l.started_at !== null).map((l) => l.outcome), ['complete'], 'one lease of it ran');
  t.same(l2.filter((l) => l.started_at === null).map((l) => l.outcome).filter((o) => o !== 'revoked'), [], 'any other was an offer taken back unrun');
  t.equal(await metric(api, 'gantry_leases_reclaimed_total', { reason: 'runner_lost' }), 0, 'no lease lost to the cut');
  t.equal(await metric(api, 'gantry_completions_total', { disposition: 'recorded' }), 2, 'two results recorded, no duplicate');
});

t.test('cut for longer than the lease TTL, twice: reclaimed and requeued within the budget, then killed; user retries untouched', async (t) => {
  const LEASE_TTL = 3000;
  const lab = await NetLab.create(t, 'long');
  const node = lab.node('runner');
  const link = lab.link(node, 'eth0');
  const api = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: {
      GANTRY_GRPC_HOST: link.hostAddr,
      GANTRY_BEAT_INTERVAL_MS: '200',
      GANTRY_SESSION_DEAD_AFTER_MS: '1000',
      GANTRY_LEASE_TTL_MS: String(LEASE_TTL),
      GANTRY_ACCEPT_DEADLINE_MS: '2000',
      GANTRY_SWEEP_INTERVAL_MS: '100',
      GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
      GANTRY_RECONNECT_BASE_MS: '100',
      GANTRY_RECONNECT_CAP_MS: '1000',
      GANTRY_RUNNER_LOSS_BUDGET: '1',
    },
  });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'nap', retries: 2 })).status, 200, 'a package with two user-visible retries');
  const r = await nsRunner(t, lab, node, cluster, [`${link.hostAddr}:${api.cp.grpcPort}`]);
  await until('the runner connected', async () => api.cp.dispatcher.session(r.runnerId)?.state === 'open');
  const [id] = await queueTasks(api, 'nap', 1, { payload: JSON.stringify({ noop_sleep_ms: 120000 }) });

  for (const round of [1, 2]) {
    const ls = await until(`attempt ${round} running on the runner`, async () => {
      const x = await leasesOf(api, id!);
      return x.length === round && x[round - 1]!.state === 'running' ? x : undefined;
    }, 30000);
    const lease = ls[round - 1]!;
    t.equal(lease.runner_id, r.runnerId, `attempt ${round} runs on the runner`);
    const lastBeat = (await runnerRow(api, r.runnerId)).last_beat_at.getTime();

    link.cut();
    const cutAt = Date.now();
    const reclaimed = await until(`lease ${round} reclaimed`, async () => {
      const l = (await leasesOf(api, id!))[round - 1]!;
      return l.ended_at ? l : undefined;
    }, 20000, 20);
    const at = reclaimed.ended_at!.getTime();
    t.equal(reclaimed.outcome, 'reclaimed', `round ${round}: the silent runner's lease is reclaimed`);
    t.ok(at - lastBeat >= LEASE_TTL, `round ${round}: not before a lease TTL of silence (${at - lastBeat} ms after the last beat)`);
    t.ok(at - cutAt <= LEASE_TTL + 1500, `round ${round}: within the lease TTL and a sweep (${at - cutAt} ms after the cut)`);
    await until(`round ${round}: the silent session closed`, async () => api.cp.dispatcher.session(r.runnerId) === undefined, 5000, 20);

    const task = await taskRow(api, id!);
    if (round === 1) {
      t.match(task, { status: 'queued', runner_losses: 1, run_times: 1, msg: 'Runner lost; requeued' }, 'within the budget: requeued, not an error');
    } else {
      t.match(task, { status: 'killed', runner_losses: 2, run_times: 2, msg: /runner lost/ }, 'the budget (1) spent: killed, "runner lost"');
    }

    link.heal();
    const healAt = Date.now();
    const welcome = await until(`round ${round}: the runner back after the heal`, async () => after(r.logs(), healAt, 'connected to the control plane')[0], 30000, 20);
    t.equal(welcome.revoke, 1, `round ${round}: its Hello listed the reclaimed lease and the server revoked it`);
    t.equal(welcome.keep, 0, `round ${round}: nothing kept`);
    const revoked = after(r.logs(), healAt, 'lease revoked by the control plane');
    t.same(revoked.map((l) => l.leaseId), [lease.id], `round ${round}: the runner dropped the reclaimed lease's execution`);
  }

  await until("the runner idle again (its ledger empty)", async () => api.cp.dispatcher.session(r.runnerId)?.freeSlots() === 2, 10000);
  const leases = await leasesOf(api, id!);
  t.same(leases.map((l) => [l.attempt, l.runner_id, l.outcome]), [
    [1, r.runnerId, 'reclaimed'],
    [2, r.runnerId, 'reclaimed'],
  ], 'lease history: two attempts, both reclaimed');
  const row = (
    await api.store.db.query<{ retries_left: number; retry_task_id: string | null }>('SELECT retries_left, retry_task_id FROM tasks WHERE id = $1', [id])
  ).rows[0]!;
  t.same(row, { retries_left: 2, retry_task_id: null }, 'no user-visible retry was spent: runner loss is not a task error');
  const all = await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks');
  t.equal(all.rows[0]!.n, 1, 'no retry task was created');
  t.equal(await metric(api, 'gantry_leases_reclaimed_total', { reason: 'runner_lost' }), 1, 'one reclaim requeued');
  t.equal(await metric(api, 'gantry_leases_reclaimed_total', { reason: 'runner_lost_final' }), 1, 'one reclaim ended the task');
  t.equal(await metric(api, 'gantry_completions_total'), 0, 'the revoked executions reported nothing');
});

t.test('a runner cut from one replica moves to another it can reach; its task is kept there and completes once', async (t) => {
  const SESSION_DEAD = 1500;
  const LEASE_TTL = 8000;
  const lab = await NetLab.create(t, 'move');
  const node = lab.node('runner');
  const toX = lab.link(node, 'x0');
  const toY = lab.link(node, 'y0');
  const dbUrl = await freshPgDatabase(t);
  const store = await openStore(
    { databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 },
    silentLogger(),
    systemClock,
    newId,
  );
  t.teardown(() => store.close());
  const user = await store.accounts.createUser('move@example.com');
  const project = await store.accounts.createProject(user.id, 'move');
  const { token } = await store.accounts.createToken(user.id, 'move');
  const { cluster, token: ctoken } = await store.clusters.create('default', { memoryMb: 64 });
  const prefix = etcdPrefix(t);
  // Two replicas as real processes on the host, each serving runners on its own link.
  const ports = { x: await freePort(), y: await freePort() };
  const replica = (name: string, grpcHost: string, grpcPort: number) =>
    startGantryProcess(t, {
      DATABASE_URL: dbUrl,
      ETCD_ENDPOINTS: etcdEndpoint(),
      GANTRY_ETCD_PREFIX: prefix,
      GANTRY_SERVER_ID: name,
      GANTRY_DATA_DIR: tempDir(t),
      GANTRY_GRPC_HOST: grpcHost,
      GANTRY_GRPC_PORT: String(grpcPort),
      GANTRY_COORD_TTL_S: '2',
      GANTRY_BEAT_INTERVAL_MS: '200',
      GANTRY_SESSION_DEAD_AFTER_MS: String(SESSION_DEAD),
      GANTRY_LEASE_TTL_MS: String(LEASE_TTL),
      GANTRY_ACCEPT_DEADLINE_MS: '2000',
      GANTRY_SWEEP_INTERVAL_MS: '100',
      GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
      GANTRY_RECONNECT_BASE_MS: '100',
      GANTRY_RECONNECT_CAP_MS: '1000',
      GANTRY_PG_POOL_MAX: '4',
      LOG_LEVEL: 'info',
    });
  const [x, y] = await Promise.all([replica('cp-x', toX.hostAddr, ports.x), replica('cp-y', toY.hostAddr, ports.y)]);
  const call = async (url: string, method: string, p: string, body?: BodyInit, json = false) => {
    const res = await fetch(`${url}/2/projects/${project.id}${p}`, {
      method,
      headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
      body,
    });
    return { status: res.status, text: await res.text() };
  };
  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'nap', image: 'gantry-test/busybox:latest' }));
  t.equal((await call(x.url, 'POST', '/codes', form)).status, 200, 'code uploaded');

  const r = await nsRunner(t, lab, node, { id: cluster.id, token: ctoken }, [`${toX.hostAddr}:${ports.x}`, `${toY.hostAddr}:${ports.y}`]);
  await until('the runner connected to its first replica', async () => (await runnerRow({ store }, r.runnerId))?.server_id === 'cp-x');
  const sessions = (g: { url: string }) => metricAt(`${g.url}/metrics`, 'gantry_runner_sessions');
  t.equal(await sessions(x), 1, 'the first replica holds its session');
  const payload = JSON.stringify({ noop_sleep_ms: 14000, note: 'moves with its runner' });
  const queued = await call(x.url, 'POST', '/tasks', JSON.stringify({ tasks: [{ code_name: 'nap', payload }] }), true);
  const id = (JSON.parse(queued.text) as { tasks: { id: string }[] }).tasks[0]!.id;
  const api = { store } as TestApi;
  const [lease] = await until('the task running', async () => {
    const ls = await leasesOf(api, id);
    return ls[0]?.state === 'running' ? ls : undefined;
  });

  toX.cut();
  const cutAt = Date.now();
  const welcome = await until('the runner welcomed by the replica it can reach', async () => after(r.logs(), cutAt, 'connected to the control plane')[0], 20000, 20);
  t.equal(welcome.serverId, 'cp-y', 'its new session is on the other replica');
  t.equal(welcome.keep, 1, 'which kept its running task');
  t.ok(welcome.time - cutAt <= SESSION_DEAD + 3000, `moved within session_dead_after and a reconnect backoff (${welcome.time - cutAt} ms after the cut)`);
  const watchdog = after(r.logs(), cutAt, 'no frame from the control plane within session_dead_after; reconnecting');
  t.equal(watchdog.length, 1, "what moved it was its watchdog: the cut replica's connection gave no error");
  t.match(await runnerRow({ store }, r.runnerId), { server_id: 'cp-y', connected: true }, 'the registry names the new replica');

  // The first replica never heard the runner leave: it keeps the half-open session until a
  // lease TTL of silence, then drops it, and that must not mark the runner (now on the other
  // replica) disconnected, nor touch its lease.
  t.equal(await sessions(x), 1, 'the cut replica still holds the half-open session');
  const dropped = await until(
    'the cut replica to drop the half-open session',
    async () => after(logLines(x.output()), cutAt, 'runner session closed').find((l) => l.runnerId === r.runnerId),
    LEASE_TTL + 5000,
    50,
  );
  t.equal(dropped.why, 'runner silent for a whole lease TTL', 'dropped for its silence');
  t.ok(dropped.time - cutAt >= LEASE_TTL - 500, `after a lease TTL of silence (${dropped.time - cutAt} ms after the cut)`);
  t.equal(await sessions(x), 0, 'the cut replica holds no session any more');
  t.match(await runnerRow({ store }, r.runnerId), { server_id: 'cp-y', connected: true }, 'the runner is still connected to the other replica');
  t.match((await leasesOf(api, id))[0], { id: lease!.id, ended_at: null }, 'its lease untouched');

  const done = await finalOf(api, id, 60000, { log: true });
  t.match(done, { status: 'complete', run_times: 1, runner_losses: 0, runner_id: r.runnerId }, 'the task completed once');
  const leases = await leasesOf(api, id);
  t.same(leases.map((l) => [l.id, l.outcome]), [[lease!.id, 'complete']], 'on its one lease');
  t.equal((await call(y.url, 'GET', `/tasks/${id}/log`)).text, payload, 'with its whole log');
  for (const [name, g] of [['cp-x', x], ['cp-y', y]] as const) {
    t.equal(await metricAt(`${g.url}/metrics`, 'gantry_leases_reclaimed_total'), 0, `${name}: nothing reclaimed`);
  }
  toX.heal();
  t.equal(Number((await runnerRow({ store }, r.runnerId)).session_epoch), 2, 'two sessions in all: the first, and the one it moved to');
});
