/**
 * Issue 4's main proof, with real processes: three control-plane replicas on one
 * PostgreSQL and one etcd, three runner processes that know all three replicas, a stream
 * of tasks (two packages with max_concurrency, one without) and schedules firing every few
 * seconds — while the leader is killed with SIGKILL twenty times and restarted.
 */
import t from 'tap';
import { Etcd3 } from 'etcd3';
import { silentLogger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { etcdPrefix } from '../../helpers/etcd.ts';
import { freePort } from '../../helpers/pg-instance.ts';
import { kill9, startGantryProcess, type GantryProcess } from '../../helpers/process.ts';
import { spawnRunner, until } from '../../helpers/runner.ts';
import { FINAL, maxRunning } from '../../helpers/faults.ts';
import { etcdEndpoint } from '../../helpers/services.ts';

const LEASE_TTL_MS = 4000;
const KILLS = Number(process.env.GANTRY_TEST_LEADER_KILLS ?? 20);
const EVERY_S = { free: 5, lim1: 6 } as const;
const LIMITS = { lim1: 1, lim2: 2 } as const;

t.test('kill -9 the leader 20 times: schedules fire once per period, limits hold, nothing is lost', async (t) => {
  const dbUrl = await freshPgDatabase(t);
  const store = await openStore(
    { databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 },
    silentLogger(),
    systemClock,
    newId,
  );
  t.teardown(() => store.close());
  const user = await store.accounts.createUser('ha@example.com');
  const project = await store.accounts.createProject(user.id, 'ha');
  const { token } = await store.accounts.createToken(user.id, 'ha');
  const cluster = await store.clusters.create('default', { memoryMb: 64 });
  const prefix = etcdPrefix(t);

  const grpcPorts = [await freePort(), await freePort(), await freePort()];
  const httpPorts = [await freePort(), await freePort(), await freePort()];
  const base = {
    DATABASE_URL: dbUrl,
    ETCD_ENDPOINTS: etcdEndpoint(),
    GANTRY_ETCD_PREFIX: prefix,
    GANTRY_COORD_TTL_S: '1',
    GANTRY_MIN_RUN_EVERY_S: '1',
    GANTRY_SCHEDULER_TICK_MS: '100',
    GANTRY_BEAT_INTERVAL_MS: '250',
    GANTRY_SESSION_DEAD_AFTER_MS: '2000',
    GANTRY_LEASE_TTL_MS: String(LEASE_TTL_MS),
    GANTRY_ACCEPT_DEADLINE_MS: '2000',
    GANTRY_SWEEP_INTERVAL_MS: '200',
    GANTRY_SLOT_RECONCILE_MS: '500',
    GANTRY_RECONNECT_BASE_MS: '50',
    GANTRY_RECONNECT_CAP_MS: '300',
    GANTRY_PG_POOL_MAX: '4',
    LOG_LEVEL: 'warn',
  };
  const replicas: (GantryProcess | undefined)[] = [undefined, undefined, undefined];
  let generation = 0;
  const startReplica = async (i: number) => {
    replicas[i] = await startGantryProcess(t, {
      ...base,
      GANTRY_SERVER_ID: `replica${i}-${++generation}`,
      GANTRY_PORT: String(httpPorts[i]),
      GANTRY_GRPC_PORT: String(grpcPorts[i]),
      GANTRY_DATA_DIR: tempDir(t),
    });
  };
  await Promise.all([0, 1, 2].map(startReplica));

  const api = async (method: string, path: string, json?: unknown, body?: FormData) => {
    // Any live replica will do; try them in turn (one may be dead right now).
    let last: unknown;
    for (let k = 0; k < 6; k++) {
      const r = replicas[(k + Math.floor(Math.random() * 3)) % 3];
      if (!r || r.proc.exitCode !== null || r.proc.signalCode !== null) continue;
      try {
        const res = await fetch(`${r.url}/2/projects/${project.id}${path}`, {
          method,
          headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
          body: json ? JSON.stringify(json) : body,
          signal: AbortSignal.timeout(5000),
        });
        const text = await res.text();
        if (res.status >= 500) throw new Error(`${res.status} ${text}`);
        return { status: res.status, body: JSON.parse(text) as Record<string, unknown> };
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`no replica answered ${method} ${path}: ${(last as Error)?.message}`);
  };

  for (const [name, max] of [['free', undefined], ['lim1', LIMITS.lim1], ['lim2', LIMITS.lim2]] as const) {
    const form = new FormData();
    form.append('data', JSON.stringify({ name, image: 'gantry-test/busybox:latest', ...(max ? { max_concurrency: max } : {}) }));
    t.equal((await api('POST', '/codes', undefined, form)).status, 200, `code ${name} uploaded`);
  }

  const runnerEnvs = [0, 1, 2].map((i) => ({
    GANTRY_CONTROL_PLANE: [0, 1, 2].map((k) => `127.0.0.1:${grpcPorts[(i + k) % 3]}`).join(','),
    GANTRY_CLUSTER_ID: cluster.cluster.id,
    GANTRY_CLUSTER_TOKEN: cluster.token,
    GANTRY_RUNNER_WORK_DIR: tempDir(t, 'gantry-runner-'),
    GANTRY_RUNNER_SLOTS: '3',
    GANTRY_RUNNER_EXECUTOR: 'noop',
    GANTRY_RUNNER_HEALTH_PORT: '-1',
    LOG_LEVEL: 'warn',
  }));
  const runners = runnerEnvs.map((env) => spawnRunner(t, env));

  // Watch the slots from outside: when each was deleted, and who held it.
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  t.teardown(() => etcd.close());
  const slotHolder = new Map<string, string>();
  const slotGone = new Map<string, number>(); // holder -> when its slot key went
  const watcher = await etcd.watch().prefix(`${prefix}sem/`).create();
  watcher.on('put', (kv) => slotHolder.set(kv.key.toString(), kv.value.toString()));
  watcher.on('delete', (kv) => {
    const h = slotHolder.get(kv.key.toString());
    if (h) slotGone.set(h, Date.now());
  });
  t.teardown(() => watcher.cancel());

  const startAt = new Date(Math.ceil(Date.now() / 1000) * 1000 + 2000);
  const schedules: Record<string, string> = {};
  for (const code of ['free', 'lim1'] as const) {
    const r = await api('POST', '/schedules', {
      schedules: [{ code_name: code, run_every: EVERY_S[code], start_at: startAt.toISOString(), payload: '{"noop_sleep_ms": 100}' }],
    });
    schedules[code] = ((r.body.schedules as { id: string }[])[0]!).id;
  }

  // A steady stream of tasks through whichever replicas are alive.
  let producing = true;
  let queued = 0;
  // Ids of acknowledged tasks, and how many requests were sent (each task's payload names its
  // request, so every row can be traced to one).
  const acked = new Set<string>();
  let requests = 0;
  const producer = (async () => {
    while (producing) {
      // Limited packages get short tasks so their backlog stays small: the run is about
      // failover, not about queueing behind a limit of one.
      const req = ++requests;
      const tasks = [
        { code_name: 'free', payload: JSON.stringify({ req, noop_sleep_ms: 100 + Math.floor(Math.random() * 300) }) },
        { code_name: 'free', payload: JSON.stringify({ req, noop_sleep_ms: 100 + Math.floor(Math.random() * 300) }) },
        { code_name: 'lim2', payload: JSON.stringify({ req, noop_sleep_ms: 100 + Math.floor(Math.random() * 200) }) },
        { code_name: 'lim1', payload: JSON.stringify({ req, noop_sleep_ms: 50 + Math.floor(Math.random() * 100) }) },
      ];
      try {
        const r = await api('POST', '/tasks', { tasks });
        if (r.status === 200) {
          queued += tasks.length;
          for (const x of r.body.tasks as { id: string }[]) acked.add(x.id);
        }
      } catch {
        // every replica busy restarting: try again
      }
      await new Promise((r) => setTimeout(r, 400));
    }
  })();

  const leaderIndex = async (): Promise<number | undefined> => {
    for (let i = 0; i < 3; i++) {
      const r = replicas[i];
      if (!r || r.proc.exitCode !== null || r.proc.signalCode !== null) continue;
      try {
        const res = await fetch(`${r.url}/readyz`, { signal: AbortSignal.timeout(2000) });
        const b = (await res.json()) as { is_leader?: boolean };
        if (b.is_leader) return i;
      } catch {
        // starting or dying
      }
    }
    return undefined;
  };

  let lastKillAt = new Date();
  for (let k = 0; k < KILLS; k++) {
    const i = await until(`a leader (kill ${k + 1})`, async () => {
      const x = await leaderIndex();
      return x === undefined ? undefined : { i: x };
    }, 30_000, 100);
    await kill9(replicas[i.i]!);
    lastKillAt = new Date();
    replicas[i.i] = undefined;
    await startReplica(i.i);
    // The next kill comes once the new leader has caught up with the schedules: a period
    // is only missed if no leader exists for longer than run_every, which is not what
    // killing one leader at a time tests.
    await until(`the schedules caught up (kill ${k + 1})`, async () => {
      const due = await store.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM schedules WHERE status = 'scheduled' AND next_start <= now() - interval '200 milliseconds'`,
      );
      return due.rows[0]!.n === 0;
    }, 30_000, 100);
  }
  await until('a leader after the last kill', async () => (await leaderIndex()) !== undefined, 30_000, 100);
  // Each schedule fires at least once more under the final leader: a period after the last kill.
  await until('both schedules fired a period after the last kill', async () => {
    const r = await store.db.query<{ n: number }>(
      'SELECT count(DISTINCT schedule_id)::int AS n FROM tasks WHERE schedule_id = ANY($1::text[]) AND scheduled_for > $2',
      [Object.values(schedules), lastKillAt],
    );
    return r.rows[0]!.n === Object.keys(schedules).length;
  }, (Math.max(...Object.values(EVERY_S)) + 30) * 1000, 200);
  producing = false;
  await producer;
  const cancelAt = Date.now();
  for (const id of Object.values(schedules)) t.equal((await api('POST', `/schedules/${id}/cancel`)).status, 200, 'schedule cancelled');
  t.ok(queued > 100, `tasks were queued throughout (${queued})`);

  // Every task reaches a final state.
  try {
    await until('every task final', async () => {
      const r = await store.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE NOT (status = ANY($1::text[]))`, [FINAL]);
      return r.rows[0]!.n === 0;
    }, 120_000, 250);
  } catch (err) {
    const left = await store.db.query(
      `SELECT t.id, t.code_name, t.status, t.attempt, t.lease_id, t.runner_id, t.eligible_at FROM tasks t
       WHERE NOT (t.status = ANY($1::text[])) ORDER BY t.id LIMIT 10`,
      [FINAL],
    );
    t.comment(JSON.stringify(left.rows, null, 1));
    for (const r of replicas) if (r) t.comment(r.output().slice(-3000));
    throw err;
  }
  const byStatus = await store.db.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM tasks GROUP BY status');
  t.same(byStatus.rows.map((r) => r.status), ['complete'], `every task completed (${JSON.stringify(byStatus.rows)})`);
  // Every acknowledged task is there. A request whose replica was killed after its commit and
  // before its reply was acknowledged by no one (and the client retried it elsewhere): its
  // tasks may be there too, but only whole requests that were sent, at most one per kill.
  const rows = (await store.db.query<{ id: string; payload: string }>('SELECT id, payload FROM tasks WHERE schedule_id IS NULL')).rows;
  t.equal(acked.size, queued, 'every acknowledged task has its own id');
  t.same([...acked].filter((id) => !rows.some((r) => r.id === id)), [], 'every acknowledged task is there');
  const extra = rows.filter((r) => !acked.has(r.id));
  const extraReqs = new Map<number, number>();
  for (const r of extra) {
    const req = (JSON.parse(r.payload) as { req: number }).req;
    extraReqs.set(req, (extraReqs.get(req) ?? 0) + 1);
  }
  t.ok(
    [...extraReqs].every(([req, n]) => req >= 1 && req <= requests && n % 4 === 0),
    `unacknowledged tasks come in whole requests the producer sent (${JSON.stringify([...extraReqs])})`,
  );
  t.ok(extraReqs.size <= KILLS, `at most one unacknowledged request per kill (${extraReqs.size})`);
  const twice = await store.db.query<{ id: string; run_times: number }>('SELECT id, run_times FROM tasks WHERE run_times <> 1');
  t.same(twice.rows, [], 'every task ran exactly once');

  // Schedules: one task per period, none missed from start to cancel, none doubled.
  for (const [code, id] of Object.entries(schedules)) {
    const every = EVERY_S[code as keyof typeof EVERY_S] * 1000;
    const fired = (
      await store.db.query<{ scheduled_for: Date }>('SELECT scheduled_for FROM tasks WHERE schedule_id = $1 ORDER BY scheduled_for', [id])
    ).rows.map((r) => r.scheduled_for.getTime());
    t.equal(new Set(fired).size, fired.length, `${code}: no period fired twice`);
    t.equal(fired[0], startAt.getTime(), `${code}: the first period fired`);
    const gaps = fired.slice(1).map((f, n) => f - fired[n]!);
    t.same(gaps.filter((g) => g !== every), [], `${code}: no period missed (${fired.length} periods)`);
    t.ok(fired[fired.length - 1]! >= cancelAt - 2 * every, `${code}: it kept firing until cancelled`);
  }

  // max_concurrency, from the lease history: at no instant more running leases than the limit.
  for (const [code, limit] of Object.entries(LIMITS)) {
    const leases = await store.db.query<{ started_at: Date; ended_at: Date }>(
      `SELECT l.started_at, l.ended_at FROM task_leases l JOIN codes c ON c.id = l.code_id
       WHERE c.name = $1 AND l.started_at IS NOT NULL`,
      [code],
    );
    const max = maxRunning(leases.rows);
    t.ok(leases.rows.length > 10, `${code}: ran ${leases.rows.length} leases`);
    t.ok(max <= limit, `${code}: at most ${limit} running at once (saw ${max})`);
  }

  // No slot outlived its holder (the lease) by more than one lease TTL; none is left.
  await until('every slot is gone', async () => (await etcd.getAll().prefix(`${prefix}sem/`).keys()).length === 0, LEASE_TTL_MS * 2);
  const ended = await store.db.query<{ id: string; ended_at: Date }>(
    `SELECT l.id, l.ended_at FROM task_leases l JOIN codes c ON c.id = l.code_id WHERE c.name IN ('lim1', 'lim2')`,
  );
  let late = 0;
  let watched = 0;
  for (const l of ended.rows) {
    const gone = slotGone.get(l.id);
    if (gone === undefined) continue;
    watched++;
    if (gone - l.ended_at.getTime() > LEASE_TTL_MS) late++;
  }
  t.ok(watched > 10, `slot deletions observed (${watched})`);
  t.equal(late, 0, 'no slot outlived its lease by more than one lease TTL');

  for (const r of runners) r.proc.kill('SIGKILL');
});
