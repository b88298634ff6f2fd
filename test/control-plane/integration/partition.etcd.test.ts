/**
 * A replica cut from etcd by a real network partition while it still reaches PostgreSQL and
 * its runners (test/helpers/netns.ts). Replica A is a real process in a network namespace of
 * its own with three links to the host: one to etcd, one to PostgreSQL (each through a
 * forwarder to the service on the loopback) and one on which it serves its API and runners.
 * Replica B runs on the host. A leads; then A's etcd link is cut (packets dropped: A's etcd
 * connection goes half-open). What the design promises (README "Several replicas",
 * control-plane/coord/etcd.ts):
 *
 * - leader work on A stops within its TTL (keepalives failing for 3/4 of it), before etcd can
 *   expire A's lease and elect B; B then leads with a higher term, which fences A's writes;
 * - no schedule period fires twice, none is missed (no leader was missing for longer than
 *   run_every);
 * - A keeps serving REST and its runners from PostgreSQL: tasks without a limit keep running,
 *   the tasks running on A's runner complete (each task starts once), concurrency-limited
 *   offers pause on A, and max_concurrency holds throughout (PostgreSQL's count, and the slots
 *   B restores for the leases of A's runner once A's etcd lease is gone);
 * - healed, A rejoins as a follower: B keeps leading.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { Etcd3 } from 'etcd3';
import { silentLogger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { etcdPrefix } from '../../helpers/etcd.ts';
import { FINAL, maxRunning, metricAt } from '../../helpers/faults.ts';
import { forwarder, logLines, NetLab, startGantryIn, type LogLine } from '../../helpers/netns.ts';
import { freePort } from '../../helpers/pg-instance.ts';
import { startGantryProcess, type GantryProcess } from '../../helpers/process.ts';
import { spawnRunner, until } from '../../helpers/runner.ts';
import { etcdEndpoint } from '../../helpers/services.ts';

const TTL_S = 2;
const EVERY_S = 5;
const LIMIT = 2;

interface Ready {
  status: number;
  ready: boolean;
  coordinator: { status: string };
  leader: string | null;
  is_leader: boolean;
}

async function readyz(g: GantryProcess): Promise<Ready> {
  const r = await fetch(`${g.url}/readyz`, { signal: AbortSignal.timeout(3000) });
  return { status: r.status, ...((await r.json()) as Omit<Ready, 'status'>) };
}

const logsOf = (g: GantryProcess, msg: string, from = 0): LogLine[] => logLines(g.output()).filter((l) => l.msg === msg && l.time >= from);

t.test('a leader cut from etcd, still reaching PostgreSQL and its runners: it stops leading within its TTL, B takes over, nothing runs twice; healed, it follows', async (t) => {
  const lab = await NetLab.create(t, 'etcd');
  const nodeA = lab.node('a');
  const etcdLink = lab.link(nodeA, 'etcd0');
  const pgLink = lab.link(nodeA, 'pg0');
  const apiLink = lab.link(nodeA, 'api0');

  const dbUrl = await freshPgDatabase(t);
  const db = new URL(dbUrl);
  const etcd = new URL(etcdEndpoint());
  const etcdFwd = await forwarder(t, etcdLink.hostAddr, { host: etcd.hostname, port: Number(etcd.port) });
  const pgFwd = await forwarder(t, pgLink.hostAddr, { host: db.hostname, port: Number(db.port || 5432) });
  const dbUrlA = new URL(dbUrl);
  dbUrlA.hostname = pgLink.hostAddr;
  dbUrlA.port = String(pgFwd.port);

  const store = await openStore(
    { databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 },
    silentLogger(),
    systemClock,
    newId,
  );
  t.teardown(() => store.close());
  const user = await store.accounts.createUser('partition@example.com');
  const project = await store.accounts.createProject(user.id, 'partition');
  const { token } = await store.accounts.createToken(user.id, 'partition');
  const { cluster, token: ctoken } = await store.clusters.create('default', { memoryMb: 64 });

  const prefix = etcdPrefix(t);
  const common = {
    GANTRY_ETCD_PREFIX: prefix,
    GANTRY_COORD_TTL_S: String(TTL_S),
    GANTRY_MIN_RUN_EVERY_S: '1',
    GANTRY_SCHEDULER_TICK_MS: '100',
    GANTRY_BEAT_INTERVAL_MS: '250',
    GANTRY_SESSION_DEAD_AFTER_MS: '4000',
    GANTRY_LEASE_TTL_MS: '8000',
    GANTRY_ACCEPT_DEADLINE_MS: '2000',
    GANTRY_SWEEP_INTERVAL_MS: '200',
    GANTRY_SLOT_RECONCILE_MS: '500',
    GANTRY_RECONNECT_BASE_MS: '50',
    GANTRY_RECONNECT_CAP_MS: '500',
    GANTRY_PG_POOL_MAX: '4',
    LOG_LEVEL: 'info',
  };
  const a = await startGantryIn(t, lab, nodeA, {
    ...common,
    DATABASE_URL: dbUrlA.toString(),
    ETCD_ENDPOINTS: `http://${etcdLink.hostAddr}:${etcdFwd.port}`,
    GANTRY_SERVER_ID: 'cp-a',
    GANTRY_DATA_DIR: tempDir(t),
    GANTRY_HOST: apiLink.nodeAddr,
    GANTRY_PORT: '8080',
    GANTRY_GRPC_HOST: apiLink.nodeAddr,
    GANTRY_GRPC_PORT: '9090',
  });
  await until('A to lead', async () => (await readyz(a)).is_leader, 20000, 100);
  const grpcB = await freePort();
  const b = await startGantryProcess(t, {
    ...common,
    DATABASE_URL: dbUrl,
    ETCD_ENDPOINTS: etcdEndpoint(),
    GANTRY_SERVER_ID: 'cp-b',
    GANTRY_DATA_DIR: tempDir(t),
    GANTRY_GRPC_PORT: String(grpcB),
  });
  await until('B to follow A', async () => (() => readyz(b).then((r) => r.ready && !r.is_leader && r.leader === 'cp-a'))(), 20000, 100);

  const call = async (g: GantryProcess, method: string, p: string, json?: unknown, form?: FormData) => {
    const res = await fetch(`${g.url}/2/projects/${project.id}${p}`, {
      method,
      headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
      body: json ? JSON.stringify(json) : form,
      signal: AbortSignal.timeout(10000),
    });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  for (const [name, max] of [['free', undefined], ['lim', LIMIT], ['tick', undefined]] as const) {
    const form = new FormData();
    form.append('data', JSON.stringify({ name, image: 'gantry-test/busybox:latest', ...(max ? { max_concurrency: max } : {}) }));
    t.equal((await call(a, 'POST', '/codes', undefined, form)).status, 200, `code ${name}`);
  }
  const queue = async (g: GantryProcess, tasks: { code: string; sleepMs: number; n: number }[]) => {
    const body = tasks.flatMap((x) => Array.from({ length: x.n }, (_, i) => ({ code_name: x.code, payload: JSON.stringify({ noop_sleep_ms: x.sleepMs, i }) })));
    const r = await call(g, 'POST', '/tasks', { tasks: body });
    if (r.status !== 200) throw new Error(`queue failed: ${r.status} ${JSON.stringify(r.body)}`);
    return (r.body.tasks as { id: string }[]).map((x) => x.id);
  };

  // Runners on the host: rA reaches A over A's API link (and knows B), rB dials B first.
  const runner = (first: string, second: string) => {
    const workDir = tempDir(t, 'gantry-runner-');
    const p = spawnRunner(t, {
      GANTRY_CONTROL_PLANE: `${first},${second}`,
      GANTRY_CLUSTER_ID: cluster.id,
      GANTRY_CLUSTER_TOKEN: ctoken,
      GANTRY_RUNNER_WORK_DIR: workDir,
      GANTRY_RUNNER_SLOTS: '4',
      GANTRY_RUNNER_EXECUTOR: 'noop',
      GANTRY_RUNNER_HEALTH_PORT: '-1',
      LOG_LEVEL: 'warn',
    });
    return { ...p, workDir, id: () => fs.readFileSync(path.join(workDir, 'runner-id'), 'utf8').trim() };
  };
  const runnerRow = async (id: string) =>
    (await store.db.query<{ server_id: string; session_epoch: string }>('SELECT server_id, session_epoch FROM runners WHERE id = $1', [id])).rows[0];
  const atA = `${apiLink.nodeAddr}:9090`;
  const atB = `127.0.0.1:${grpcB}`;
  const rA = runner(atA, atB);
  const rAId = await until('runner A connected to A', async () => {
    const id = fs.existsSync(path.join(rA.workDir, 'runner-id')) ? rA.id() : '';
    return id && (await runnerRow(id))?.server_id === 'cp-a' ? id : undefined;
  }, 30000, 100);

  // The fence, watched from outside: every (term, holder, written at) it showed.
  const fence: { term: number; holder: string; at: number }[] = [];
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const r = await store.db.query<{ term: string; holder: string; updated_at: Date }>("SELECT term, holder, updated_at FROM leader_fence WHERE name = 'leader'");
      const row = r.rows[0];
      const last = fence[fence.length - 1];
      if (row && (!last || last.at !== row.updated_at.getTime() || last.holder !== row.holder)) {
        fence.push({ term: Number(row.term), holder: row.holder, at: row.updated_at.getTime() });
      }
      await new Promise((res) => setTimeout(res, 25));
    }
  })();
  t.teardown(async () => {
    watching = false;
    await watcher;
  });

  const startAt = new Date(Math.ceil(Date.now() / 1000) * 1000 + 1000);
  const sched = await call(a, 'POST', '/schedules', {
    schedules: [{ code_name: 'tick', run_every: EVERY_S, start_at: startAt.toISOString(), payload: JSON.stringify({ noop_sleep_ms: 200 }) }],
  });
  const scheduleId = (sched.body.schedules as { id: string }[])[0]!.id;
  const fired = async () =>
    (await store.db.query<{ scheduled_for: Date; created_at: Date }>('SELECT scheduled_for, created_at FROM tasks WHERE schedule_id = $1 ORDER BY scheduled_for', [scheduleId])).rows;

  await until('A to fire the first period', async () => (await fired()).length >= 1, 10000, 100);
  await until('the fence to show A', async () => fence[fence.length - 1]?.holder === 'cp-a', 5000, 20);
  t.match(fence[fence.length - 1], { holder: 'cp-a' }, 'A has written as leader');

  // The cut comes half a second before a period falls due: A, cut but not yet sure it lost
  // its lease, may still fire it (legitimately: etcd cannot have elected anyone yet), and B,
  // elected later, must not fire it again.
  const nextPeriod = (from: number) => startAt.getTime() + Math.ceil((from - startAt.getTime()) / (EVERY_S * 1000)) * EVERY_S * 1000;
  let boundary = nextPeriod(Date.now() + 3000);
  // Work on A's runner (the only runner yet) that outlasts the cut by 7 s or more: two tasks
  // without a limit, two of the limited package (its limit full).
  const spanning = await queue(a, [
    { code: 'free', sleepMs: boundary - Date.now() + 12000, n: 2 },
    { code: 'lim', sleepMs: boundary - Date.now() + 12000, n: 2 },
  ]);
  await until('the four long tasks running on runner A', async () => {
    const r = await store.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM tasks WHERE id = ANY($1::text[]) AND status = 'running' AND runner_id = $2",
      [spanning, rAId],
    );
    return r.rows[0]!.n === 4;
  }, 20000, 100).catch(async (err) => {
    t.comment(JSON.stringify((await store.db.query('SELECT id, code_name, status, runner_id, lease_id, eligible_at, msg FROM tasks')).rows));
    t.comment(JSON.stringify((await store.db.query('SELECT task_id, runner_id, state, outcome, granted_at, started_at, ended_at FROM task_leases')).rows));
    t.comment(rA.output().slice(-3000));
    t.comment(logLines(a.output()).filter((l) => l.level >= 40).slice(-30).map((l) => JSON.stringify(l)).join('\n'));
    throw err;
  });
  // Limited work queued on B waits for the slots A's runner holds.
  const waiting = await queue(b, [{ code: 'lim', sleepMs: 1000, n: 3 }]);
  const epochA = (await runnerRow(rAId))!.session_epoch;
  if (Date.now() > boundary - 700) boundary += EVERY_S * 1000; // a slow start: the next one
  await new Promise((res) => setTimeout(res, boundary - 500 - Date.now()));
  etcdLink.cut();
  const cutAt = Date.now();
  // B's runner joins now, dialing B first.
  const rB = runner(atB, atA);

  const stepped = await until('A to stop leader work', async () => logsOf(a, 'leadership lost; leader work stopped', cutAt)[0], 10000, 20);
  t.ok(stepped.time - cutAt <= TTL_S * 1000, `A stopped leading ${stepped.time - cutAt} ms after the cut (TTL ${TTL_S * 1000} ms)`);
  const aDown = await until('A to report the coordinator unreachable', async () => {
    const r = await readyz(a);
    return r.status === 503 && r.coordinator.status === 'unreachable' ? r : undefined;
  }, 10000, 50);
  t.match(aDown, { ready: false, is_leader: false, leader: null }, 'A: /readyz 503, not leading, no leader known');
  t.equal(await metricAt(`${a.url}/metrics`, 'gantry_leader'), 0, 'A: gantry_leader 0');
  t.equal(await metricAt(`${a.url}/metrics`, 'gantry_coordinator_up'), 0, 'A: gantry_coordinator_up 0');
  const elected = await until('B to be elected', async () => logsOf(b, 'elected leader', cutAt)[0], 15000, 20);
  t.ok(elected.time > stepped.time, `B was elected ${elected.time - stepped.time} ms after A stopped: never two leaders`);
  t.comment(`leaderless for ${elected.time - stepped.time} ms (B elected ${elected.time - cutAt} ms after the cut)`);
  t.ok(elected.time - stepped.time < EVERY_S * 1000, 'for less than run_every');
  await until('B to report itself leader', async () => (await readyz(b)).is_leader, 5000, 50);
  await until('B to write as leader', async () => fence[fence.length - 1]?.holder === 'cp-b', 10000, 20);
  const rBId = await until('runner B connected to B', async () => {
    const id = fs.existsSync(path.join(rB.workDir, 'runner-id')) ? rB.id() : '';
    return id && (await runnerRow(id))?.server_id === 'cp-b' ? id : undefined;
  }, 30000, 100);

  // A still serves its API from PostgreSQL: tasks without a limit are accepted and run.
  const during = await queue(a, [{ code: 'free', sleepMs: 300, n: 3 }]);
  t.equal(during.length, 3, "A's REST API accepts tasks while it is cut from etcd");
  await until('the long tasks on runner A to complete', async () => {
    const r = await store.db.query<{ n: number }>("SELECT count(*)::int AS n FROM tasks WHERE id = ANY($1::text[]) AND status = 'complete'", [spanning]);
    return r.rows[0]!.n === 4;
  }, 30000, 100);
  await until('the limited tasks queued on B and the tasks queued on A during the cut to complete', async () => {
    const r = await store.db.query<{ n: number }>("SELECT count(*)::int AS n FROM tasks WHERE id = ANY($1::text[]) AND status = 'complete'", [[...waiting, ...during]]);
    return r.rows[0]!.n === 6;
  }, 30000, 100);
  await until('B to fire two periods', async () => (await fired()).filter((f) => f.created_at.getTime() > elected.time).length >= 2, 3 * EVERY_S * 1000, 100);
  t.same(await runnerRow(rAId), { server_id: 'cp-a', session_epoch: epochA }, "runner A stayed with A throughout: A kept serving it");
  t.ok((await readyz(a)).status === 503 && !(await readyz(a)).is_leader, 'A is still cut and not leading');

  etcdLink.heal();
  const healAt = Date.now();
  // Polled closely: the first answer that says ready must already name the right leader.
  const back = await until('A to rejoin', async () => {
    const r = await readyz(a);
    return r.status === 200 && r.coordinator.status === 'ok' ? r : undefined;
  }, 30000, 10);
  t.comment(`A rejoined ${Date.now() - healAt} ms after the heal (cut for ${healAt - cutAt} ms)`);
  t.match(back, { ready: true, leader: 'cp-b', is_leader: false }, 'A rejoined as a follower of B');
  t.equal(await metricAt(`${a.url}/metrics`, 'gantry_coordinator_up'), 1, 'A: gantry_coordinator_up 1');
  // A negative over a window: for 3 s A never leads and B always does.
  const windowEnd = Date.now() + 3000;
  while (Date.now() < windowEnd) {
    const [ra, rb] = await Promise.all([readyz(a), readyz(b)]);
    if (ra.is_leader || !rb.is_leader || ra.leader !== 'cp-b') {
      t.fail(`leadership moved after the heal: A ${JSON.stringify(ra)}, B ${JSON.stringify(rb)}`);
      break;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  const lastBefore = (await fired()).length;
  await until('one more period after the heal', async () => (await fired()).length > lastBefore, 2 * EVERY_S * 1000, 100);
  const cancelAt = Date.now();
  t.equal((await call(b, 'POST', `/schedules/${scheduleId}/cancel`)).status, 200, 'schedule cancelled');
  await until('every task final', async () => {
    const r = await store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks WHERE NOT (status = ANY($1::text[]))', [FINAL]);
    return r.rows[0]!.n === 0;
  }, 30000, 100);
  watching = false;
  await watcher;

  // Nothing ran twice: every task completed, started once, on one lease that ran.
  const tasks = await store.db.query<{ id: string; code_name: string; status: string; run_times: number; runner_losses: number; started: number }>(
    `SELECT t.id, t.code_name, t.status, t.run_times, t.runner_losses,
       (SELECT count(*)::int FROM task_leases l WHERE l.task_id = t.id AND l.started_at IS NOT NULL) AS started
     FROM tasks t ORDER BY t.created_at`,
  );
  t.ok(tasks.rows.length >= 12, `${tasks.rows.length} tasks`);
  t.same(tasks.rows.filter((r) => r.status !== 'complete' || r.run_times !== 1 || r.runner_losses !== 0 || r.started !== 1), [], 'every task completed, started exactly once, on one lease, never lost');
  const onA = await store.db.query<{ id: string; outcome: string }>(
    'SELECT l.id, l.outcome FROM task_leases l WHERE l.task_id = ANY($1::text[]) AND l.started_at IS NOT NULL AND l.runner_id = $2',
    [spanning, rAId],
  );
  t.same(onA.rows.map((r) => r.outcome), ['complete', 'complete', 'complete', 'complete'], "the tasks running on A's runner across the cut completed there, on their leases");
  t.equal(await metricAt(`${b.url}/metrics`, 'gantry_leases_reclaimed_total'), 0, "B's sweeper reclaimed nothing: A's runner kept renewing through A");

  // Schedules: one task per period, consecutive from the first to the cancel.
  const all = await fired();
  const periods = all.map((r) => r.scheduled_for.getTime());
  const due = all.find((r) => r.scheduled_for.getTime() === boundary);
  t.ok(due, 'the period due just after the cut fired');
  t.comment(
    `the period due ${boundary - cutAt} ms after the cut was fired ${due!.created_at.getTime() - cutAt} ms after it, by ${
      due!.created_at.getTime() < elected.time ? 'A (still leading, cut)' : 'B'
    }`,
  );
  t.equal(new Set(periods).size, periods.length, `no period fired twice (${periods.length} periods)`);
  t.equal(periods[0], startAt.getTime(), 'the first period fired');
  t.same(periods.slice(1).map((p, i) => p - periods[i]!).filter((g) => g !== EVERY_S * 1000), [], 'no period missed');
  t.ok(periods[periods.length - 1]! >= cancelAt - 2 * EVERY_S * 1000, 'it kept firing until cancelled');

  // max_concurrency held at every instant, across the cut and the slot hand-over.
  const lim = await store.db.query<{ started_at: Date; ended_at: Date | null; runner_id: string; granted_at: Date }>(
    `SELECT l.started_at, l.ended_at, l.runner_id, l.granted_at FROM task_leases l JOIN codes c ON c.id = l.code_id
     WHERE c.name = 'lim' AND l.started_at IS NOT NULL`,
  );
  t.equal(lim.rows.length, 5, 'five limited tasks ran');
  t.ok(maxRunning(lim.rows) <= LIMIT, `at most ${LIMIT} limited tasks running at once (saw ${maxRunning(lim.rows)})`);
  t.same(
    lim.rows.filter((l) => l.runner_id === rAId && l.granted_at.getTime() > cutAt && l.granted_at.getTime() < healAt),
    [],
    'A offered no limited work while it could not take etcd slots',
  );
  t.ok(lim.rows.some((l) => l.runner_id === rBId), "the limited tasks queued on B ran on B's runner");
  // A's slots went with its etcd lease; B, leading, restored the two of the leases A's runner
  // still ran, and every slot is gone once the leases ended.
  t.ok(
    (await metricAt(`${b.url}/metrics`, 'gantry_concurrency_slots_reconciled_total', { action: 'restored' })) >= LIMIT,
    `B restored the slots of the limited leases A's runner held when A's etcd lease expired (${await metricAt(`${b.url}/metrics`, 'gantry_concurrency_slots_reconciled_total', { action: 'restored' })})`,
  );
  const etcdClient = new Etcd3({ hosts: etcdEndpoint() });
  t.teardown(() => etcdClient.close());
  await until('every concurrency slot gone', async () => (await etcdClient.getAll().prefix(`${prefix}sem/`).keys()).length === 0, 10000, 100);

  // The fence: terms never went back; A wrote nothing after B's first write, and nothing
  // later than a TTL after the cut.
  t.same(fence.map((f) => f.term).filter((term, i, all) => i > 0 && term < all[i - 1]!), [], 'fence terms never decrease');
  const firstB = fence.findIndex((f) => f.holder === 'cp-b');
  t.ok(firstB > 0, 'the fence passed from A to B');
  t.same(fence.slice(firstB).filter((f) => f.holder !== 'cp-b'), [], 'no write of A after B took over');
  const lastA = fence.slice(0, firstB).filter((f) => f.holder === 'cp-a').pop()!;
  t.ok(lastA.term < fence[firstB]!.term, `B's term (${fence[firstB]!.term}) is above A's (${lastA.term})`);
  t.ok(lastA.at <= cutAt + TTL_S * 1000, `A's last leader write was ${lastA.at - cutAt} ms after the cut (within the TTL)`);
  t.ok(lastA.at < elected.time, "A's last leader write came before B was elected");
  t.same(logsOf(a, 'elected leader', cutAt), [], 'A was never elected again');
  t.same(logsOf(a, 'leader write refused: a newer leader exists'), [], 'A never attempted a leader write a newer leader had fenced off');
  t.equal(fence[fence.length - 1]!.holder, 'cp-b', 'B still holds the fence');
  t.same(await runnerRow(rAId), { server_id: 'cp-a', session_epoch: epochA }, 'runner A never had to reconnect');
});
