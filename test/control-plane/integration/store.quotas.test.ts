/**
 * Per-user quotas over the REST API on both engines, with small limits from the
 * environment: each quota refuses the request that would pass it (403, or 429 with
 * Retry-After for queued tasks) with a message naming the quota, the limit, the usage and
 * what to do, and changes no row; a batch past the limit is refused whole; concurrent
 * requests for the last slot let exactly one through; deleting, cancelling and finishing free
 * quota; usage counts across the user's projects; an operator raises a quota with
 * `gantry user quota` and the next request passes (in-process on both engines, and as the
 * real command against a running server on PostgreSQL).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { newId } from '../../../lib/ids.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { runAdmin } from '../../../control-plane/admin.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { RECOUNT_INTERVAL_MS } from '../../../control-plane/store/quotas.ts';
import { ENGINES, freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { startTestApi, uploadCode, type ApiUser, type Reply, type TestApi } from '../../helpers/api.ts';
import { codeOk, isError } from '../../helpers/assert.ts';

const QUOTA_ENV = {
  GANTRY_QUOTA_CLUSTERS: '2',
  GANTRY_QUOTA_CODES: '2',
  GANTRY_QUOTA_SCHEDULES: '3',
  GANTRY_QUOTA_QUEUED_TASKS: '5',
  GANTRY_QUOTA_RETRY_AFTER_S: '7',
};
const CFG = { leaseTtlMs: 60_000, runnerLossBudget: 2 };

const count = async (api: TestApi, sql: string, params: unknown[]) => (await api.store.db.query<{ n: number }>(sql, params)).rows[0]!.n;
const clustersOf = (api: TestApi, u: ApiUser) => count(api, 'SELECT count(*)::int AS n FROM clusters WHERE user_id = $1 AND deleted_at IS NULL', [u.userId]);
const codesOf = (api: TestApi, u: ApiUser) =>
  count(api, 'SELECT count(*)::int AS n FROM codes c JOIN projects p ON p.id = c.project_id WHERE p.user_id = $1 AND c.deleted_at IS NULL', [u.userId]);
const schedulesOf = (api: TestApi, u: ApiUser) =>
  count(api, `SELECT count(*)::int AS n FROM schedules s JOIN projects p ON p.id = s.project_id WHERE p.user_id = $1`, [u.userId]);
const tasksOf = (api: TestApi, u: ApiUser) =>
  count(api, 'SELECT count(*)::int AS n FROM tasks t JOIN projects p ON p.id = t.project_id WHERE p.user_id = $1', [u.userId]);
const queuedOf = (api: TestApi, u: ApiUser) =>
  count(api, `SELECT count(*)::int AS n FROM tasks t JOIN projects p ON p.id = t.project_id WHERE p.user_id = $1 AND t.status = 'queued'`, [u.userId]);

/** Another project of the same user, with a client for it. */
async function secondProject(api: TestApi, u: ApiUser): Promise<ApiUser> {
  const p = await api.store.accounts.createProject(u.userId, 'second');
  return { ...u, projectId: p.id, project: (method, path, o = {}) => api.request(method, `/2/projects/${p.id}${path}`, { ...o, token: u.token }) };
}

const createCluster = (u: ApiUser, api: TestApi, name: string) => api.request('POST', '/2/clusters', { json: { name }, token: u.token });
const queue = (u: ApiUser, n: number, o: Record<string, unknown> = {}) =>
  u.project('POST', '/tasks', { json: { tasks: Array.from({ length: n }, (_, i) => ({ code_name: 'w', payload: `p${i}`, ...o })) } });
const statuses = (rs: Reply[]) => rs.map((r) => r.status).sort();

t.test('quota configuration: documented defaults, GANTRY_QUOTA_* overrides, bad values named', async (t) => {
  t.same(loadConfig({}).quotas, { clusters: 20, codes: 500, schedules: 1000, queuedTasks: 100_000 });
  t.equal(loadConfig({}).quotaRetryAfterS, 5);
  t.same(loadConfig(QUOTA_ENV).quotas, { clusters: 2, codes: 2, schedules: 3, queuedTasks: 5 });
  t.throws(() => loadConfig({ GANTRY_QUOTA_QUEUED_TASKS: 'many' }), /GANTRY_QUOTA_QUEUED_TASKS/);
  t.throws(() => loadConfig({ GANTRY_QUOTA_CLUSTERS: '-1' }), /GANTRY_QUOTA_CLUSTERS/);
});

for (const engine of ENGINES) {
  t.test(`quotas on ${engine}`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1, 12));
    const api = await startTestApi(t, engine, { clock, env: QUOTA_ENV });
    const admin = (...args: string[]) => runAdmin(api.store, ['user', 'quota', ...args]);
    // Each subtest fires only its own schedules.
    t.afterEach(async () => {
      await api.store.db.query(`UPDATE schedules SET status = 'cancelled', next_start = NULL WHERE status = 'scheduled'`);
    });

    t.test('clusters: the one past the limit is refused (403) and made nothing; a delete frees one', async (t) => {
      const u = await api.newUser();
      t.equal((await createCluster(u, api, `${engine}-c1`)).status, 200);
      const second = await createCluster(u, api, `${engine}-c2`);
      t.equal(second.status, 200);
      const over = await createCluster(u, api, `${engine}-c3`);
      isError(t, over, 403, 'quota exceeded: at most 2 clusters per user (you have 2); delete one or ask an operator to raise it (gantry user quota)');
      t.equal(over.headers.get('retry-after'), null, 'no Retry-After: waiting does not free a cluster');
      t.equal(await clustersOf(api, u), 2, 'no row added');
      t.equal(await count(api, 'SELECT count(*)::int AS n FROM clusters WHERE name = $1', [`${engine}-c3`]), 0);
      const other = await api.newUser();
      t.equal((await createCluster(other, api, `${engine}-other`)).status, 200, 'another user has a quota of their own');

      t.equal((await api.request('DELETE', `/2/clusters/${second.body.id}`, { token: u.token })).status, 200);
      t.equal((await createCluster(u, api, `${engine}-c3`)).status, 200, 'a deleted cluster frees its place');
    });

    t.test('clusters: concurrent creates for the last place let exactly one through', async (t) => {
      const u = await api.newUser();
      t.equal((await createCluster(u, api, `${engine}-race-0`)).status, 200);
      const rs = await Promise.all([1, 2, 3, 4, 5].map((i) => createCluster(u, api, `${engine}-race-${i}`)));
      t.same(statuses(rs), [200, 403, 403, 403, 403]);
      for (const r of rs.filter((x) => x.status === 403)) isError(t, r, 403, /^quota exceeded: at most 2 clusters per user \(you have 2\)/);
      t.equal(await clustersOf(api, u), 2);
    });

    t.test('code packages: counted across projects; a new revision is not a new package', async (t) => {
      const u = await api.newUser();
      const p2 = await secondProject(api, u);
      await codeOk(t, u, 'a');
      await codeOk(t, p2, 'b');
      const over = await uploadCode(u, { name: 'c' });
      isError(t, over, 403, 'quota exceeded: at most 2 code packages per user (you have 2); delete one or ask an operator to raise it (gantry user quota)');
      t.equal(await codesOf(api, u), 2, 'no package added');
      t.equal(await count(api, `SELECT count(*)::int AS n FROM codes WHERE name = 'c'`, []), 0);
      t.equal((await codeOk(t, u, 'a', { command: 'echo 2' })).rev, 2, 'a new revision of a package passes at the limit');
      isError(t, await uploadCode(p2, { name: 'c' }), 403, /at most 2 code packages per user \(you have 2\)/, 'from the other project too');

      const b = await p2.project('GET', '/codes');
      const id = b.body.codes.find((c: { name: string }) => c.name === 'b').id;
      t.equal((await p2.project('DELETE', `/codes/${id}`)).status, 200);
      await codeOk(t, u, 'c');
      t.equal(await codesOf(api, u), 2);
    });

    t.test('code packages: concurrent uploads for the last place let one new package through', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'first');
      const rs = await Promise.all(['n1', 'n2', 'n3', 'n4'].map((name) => uploadCode(u, { name })));
      t.same(statuses(rs), [200, 403, 403, 403]);
      t.equal(await codesOf(api, u), 2);
      // Concurrent first uploads of one name at the limit: one makes the package, the rest are its revisions.
      const v = await api.newUser();
      await codeOk(t, v, 'first');
      const same = await Promise.all([1, 2, 3].map(() => uploadCode(v, { name: 'same' })));
      t.same(statuses(same), [200, 200, 200], 'all pass: only one of them makes a package');
      t.same(same.map((r) => r.body.rev).sort(), [1, 2, 3]);
      t.equal(await codesOf(api, v), 2);
    });

    t.test('schedules: a batch past the limit is refused whole; cancelled and completed ones free places', async (t) => {
      const u = await api.newUser();
      const p2 = await secondProject(api, u);
      await codeOk(t, u, 'w');
      await codeOk(t, p2, 'w');
      const sched = (x: ApiUser, n: number, o: Record<string, unknown> = {}) =>
        x.project('POST', '/schedules', { json: { schedules: Array.from({ length: n }, () => ({ code_name: 'w', run_every: 3600, ...o })) } });
      t.equal((await sched(u, 1)).status, 200);
      const once = await sched(p2, 1, { run_every: undefined, run_times: 1 });
      t.equal(once.status, 200);
      const over = await sched(u, 2);
      isError(
        t,
        over,
        403,
        'quota exceeded: at most 3 active schedules per user (you have 2; this request adds 2); cancel some or ask an operator to raise it (gantry user quota)',
      );
      t.equal(await schedulesOf(api, u), 2, 'none of the batch was made');
      const third = await sched(u, 1);
      t.equal(third.status, 200);
      isError(t, await sched(p2, 1), 403, /^quota exceeded: at most 3 active schedules per user \(you have 3\); cancel one/);

      t.equal((await u.project('POST', `/schedules/${third.body.schedules[0].id}/cancel`)).status, 200);
      t.equal((await sched(u, 1)).status, 200, 'a cancelled schedule frees its place');
      isError(t, await sched(u, 1), 403, /you have 3/);
      // The run-once schedule fires and completes: it is no longer active.
      await api.store.schedules.fireDue(clock.now());
      t.equal((await p2.project('GET', `/schedules/${once.body.schedules[0].id}`)).body.status, 'complete');
      t.equal((await sched(u, 1)).status, 200, 'a completed schedule frees its place');
      t.equal(await count(api, `SELECT count(*)::int AS n FROM schedules s JOIN projects p ON p.id = s.project_id WHERE p.user_id = $1 AND s.status = 'scheduled'`, [u.userId]), 3);
    });

    t.test('schedules: concurrent creates for the last place let exactly one through', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'w');
      const one = () => u.project('POST', '/schedules', { json: { schedules: [{ code_name: 'w', run_every: 3600 }] } });
      t.equal((await one()).status, 200);
      t.equal((await one()).status, 200);
      t.same(statuses(await Promise.all([one(), one(), one(), one()])), [200, 403, 403, 403]);
      t.equal(await schedulesOf(api, u), 3);
    });

    t.test('queued tasks: 429 with Retry-After past the limit, delayed ones counted, a cancel frees one', async (t) => {
      const u = await api.newUser();
      const p2 = await secondProject(api, u);
      await codeOk(t, u, 'w');
      await codeOk(t, p2, 'w');
      t.equal((await queue(u, 3)).status, 200);
      const over = await queue(p2, 3);
      isError(
        t,
        over,
        429,
        'quota exceeded: at most 5 queued tasks per user (you have 3; this request adds 3); retry after 7 s when some have run, cancel some, or ask an operator to raise it (gantry user quota)',
      );
      t.equal(over.headers.get('retry-after'), '7');
      t.equal(await tasksOf(api, u), 3, 'none of the batch was queued');
      t.equal((await queue(p2, 2, { delay: 600 })).status, 200, 'up to the limit, from the other project');
      const single = await queue(u, 1);
      isError(t, single, 429, /^quota exceeded: at most 5 queued tasks per user \(you have 5\); retry after 7 s/, 'delayed tasks count');
      t.equal(single.headers.get('retry-after'), '7');
      const hook = await u.project('POST', '/tasks/webhook', { query: { code_name: 'w' }, body: 'x', headers: { 'Content-Type': 'text/plain' } });
      isError(t, hook, 429, /at most 5 queued tasks/, 'the webhook counts too');
      t.equal(await tasksOf(api, u), 5);

      const [first] = (await u.project('GET', '/tasks')).body.tasks;
      t.equal((await u.project('POST', `/tasks/${first.id}/cancel`)).status, 200);
      t.equal((await queue(u, 1)).status, 200, 'a cancelled task frees its place at once');
      isError(t, await u.project('POST', `/tasks/${first.id}/retry`, { json: {} }), 429, /at most 5 queued tasks/, 'a retry asked for counts');
      t.equal(await queuedOf(api, u), 5);
      t.equal(await tasksOf(api, u), 6, 'the cancelled task and five queued: nothing else');

      const other = await api.newUser();
      await codeOk(t, other, 'w');
      t.equal((await queue(other, 5)).status, 200, 'another user has a quota of their own');
    });

    t.test('the counted queueing keeps every value as given (one array per column)', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'w');
      const payloads = ['NULL', '{"a":"b\\\\c","q":"\\"x\\""}', 'ünïcødé\n{braces}, commas', ''];
      const labels = [null, 'NULL', '"quoted"', '{x}'];
      const r = await u.project('POST', '/tasks', {
        json: { tasks: payloads.map((payload, i) => ({ code_name: 'w', payload, ...(labels[i] === null ? {} : { label: labels[i] }), delay: i, priority: i % 3 })) },
      });
      t.equal(r.status, 200, r.text);
      const rows = (
        await api.store.db.query<{ id: string; payload: string; label: string | null; delay: number; priority: number; status: string }>(
          'SELECT id, payload, label, delay, priority, status FROM tasks WHERE id = ANY($1::text[])',
          [r.body.tasks.map((x: { id: string }) => x.id)],
        )
      ).rows;
      const byId = new Map(rows.map((x) => [x.id, x]));
      t.same(
        r.body.tasks.map((x: { id: string }) => byId.get(x.id)),
        payloads.map((payload, i) => ({ id: r.body.tasks[i].id, payload, label: labels[i], delay: i, priority: i % 3, status: 'queued' })),
        'ids in request order, values exact',
      );
    });

    t.test('queued tasks: finished tasks free places (seen by the recount)', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'w');
      const name = `${engine}-run`;
      const { cluster } = await api.store.clusters.create(name);
      const runner = await api.store.runners.connect(
        { runnerId: `r-${name}`, clusterId: cluster.id, bootId: 'b', hostname: 'h', agentVersion: '1', dockerVersion: '1', instanceId: '', slots: 4, memoryMb: 2048 },
        's1',
        'server',
      );
      const ref = { id: runner!.id, epoch: runner!.sessionEpoch, cluster: name };
      t.equal((await queue(u, 5, { cluster: name })).status, 200);
      const run = async (n: number) => {
        for (const o of await api.store.claims.claim(ref, n, { acceptDeadlineMs: 10_000, ageingS: 600 })) {
          const key = { leaseId: o.leaseId, attempt: o.attempt };
          t.ok((await api.store.leases.acceptMany(ref.id, [key], CFG.leaseTtlMs)).has(o.leaseId));
          t.ok((await api.store.leases.startedMany(ref.id, [{ ...key, containerId: 'ctr', startedAt: clock.now() }], CFG.leaseTtlMs)).has(o.leaseId));
          const done = { ...key, outcome: 'succeeded' as const, exitCode: 0, oomKilled: false, msg: '', startedAt: 0, finishedAt: 0 };
          const { dispositions, ended } = await api.store.outcomes.completeMany(ref.id, [done], CFG);
          t.same({ dispositions, ended }, { dispositions: ['recorded'], ended: [o.leaseId] });
        }
      };
      await run(2);
      t.equal(await queuedOf(api, u), 3);
      // The first queueing counted the user's tasks exactly; the next recount may come
      // RECOUNT_INTERVAL_MS later, and until then the count stands.
      isError(t, await queue(u, 2), 429, /at most 5 queued tasks per user \(you have 5; this request adds 2\)/, 'within a second of the last count');
      clock.advance(RECOUNT_INTERVAL_MS);
      t.equal((await queue(u, 2)).status, 200, 'then the two finished tasks are seen');
      isError(t, await queue(u, 1), 429, /at most 5 queued tasks per user \(you have 5\)/);
      await run(1);
      isError(t, await queue(u, 1), 429, /you have 5/);
      clock.advance(RECOUNT_INTERVAL_MS);
      t.equal((await queue(u, 1)).status, 200, 'and the next one');
      t.equal(await queuedOf(api, u), 5);
    });

    t.test('queued tasks: concurrent requests for the last place let exactly one through', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'w');
      t.equal((await queue(u, 4)).status, 200);
      const rs = await Promise.all([1, 2, 3, 4, 5, 6].map(() => queue(u, 1)));
      t.same(statuses(rs), [200, 429, 429, 429, 429, 429]);
      t.equal(await queuedOf(api, u), 5);
      // Batches: of three batches of three, only one fits in five.
      const v = await api.newUser();
      await codeOk(t, v, 'w');
      t.same(statuses(await Promise.all([1, 2, 3].map(() => queue(v, 3)))), [200, 429, 429]);
      t.equal(await queuedOf(api, v), 3);
    });

    t.test('queued tasks: many concurrent requests with room for some get exactly the limit, batches all or none', async (t) => {
      const u = await api.newUser();
      const email = (await api.store.db.query<{ email: string }>('SELECT email FROM users WHERE id = $1', [u.userId])).rows[0]!.email;
      await admin('--email', email, '--queued-tasks', '40');
      await codeOk(t, u, 'w');
      const rs = await Promise.all(Array.from({ length: 60 }, (_, i) => queue(u, i % 3 === 0 ? 2 : 1)));
      const admitted = rs.reduce((n, r, i) => n + (r.status === 200 ? (i % 3 === 0 ? 2 : 1) : 0), 0);
      t.ok(rs.every((r) => r.status === 200 || r.status === 429), 'each request passes or is refused');
      t.equal(await queuedOf(api, u), admitted, 'every admitted task is queued, and only those');
      t.ok(admitted >= 39 && admitted <= 40, `the limit is reached and never passed (${admitted} of 40)`);
      const counted = (await api.store.db.query<{ n: number }>('SELECT sum(queued)::int AS n FROM user_queued WHERE user_id = $1', [u.userId])).rows[0]!.n;
      t.ok(counted >= admitted && counted <= 40, `the counters hold an upper bound within the limit (${counted})`);
    });

    t.test('a schedule firing past the queued-tasks quota queues nothing and says why', async (t) => {
      const u = await api.newUser();
      await codeOk(t, u, 'w');
      const s = await u.project('POST', '/schedules', { json: { schedules: [{ code_name: 'w', run_every: 3600 }] } });
      t.equal(s.status, 200);
      t.equal((await queue(u, 5)).status, 200);
      t.equal(await api.store.schedules.fireDue(clock.now()), 1, 'the loop carries on');
      const after = (await u.project('GET', `/schedules/${s.body.schedules[0].id}`)).body;
      t.equal(after.error_count, 1);
      t.match(after.msg, /^Quota exceeded: at most 5 queued tasks per user \(5 queued\); no task queued/);
      t.equal(after.run_count, 0);
      t.equal(await tasksOf(api, u), 5, 'no task queued');
      t.ok(new Date(after.next_start) > clock.now(), 'the period passed');
    });

    t.test('an operator raises a quota (gantry user quota) and the next request passes', async (t) => {
      const u = await api.newUser();
      const email = (await api.store.db.query<{ email: string }>('SELECT email FROM users WHERE id = $1', [u.userId])).rows[0]!.email;
      await codeOk(t, u, 'w');
      t.equal((await queue(u, 5)).status, 200);
      isError(t, await queue(u, 1), 429);
      t.equal((await createCluster(u, api, `${engine}-op-1`)).status, 200);
      t.equal((await createCluster(u, api, `${engine}-op-2`)).status, 200);
      isError(t, await createCluster(u, api, `${engine}-op-3`), 403);

      const shown = await admin('--email', email);
      t.match(shown, new RegExp(`^quotas of ${email.replace(/[.]/g, '\\.')} \\(user ${u.userId}\\)`));
      t.match(shown, /clusters\s+2 \(default\), in use 2/);
      t.match(shown, /codes\s+2 \(default\), in use 1/);
      t.match(shown, /schedules\s+3 \(default\), in use 0/);
      t.match(shown, /queued-tasks\s+5 \(default\), in use 5/);
      const set = await admin('--email', email, '--clusters', '3', '--queued-tasks', '8');
      t.match(set, /clusters\s+3 \(set by an operator; default 2\), in use 2/);
      t.match(set, /queued-tasks\s+8 \(set by an operator; default 5\), in use 5/);
      t.equal((await createCluster(u, api, `${engine}-op-3`)).status, 200, 'the next cluster passes');
      t.equal((await queue(u, 3)).status, 200, 'the next tasks pass (the raised limit, no recount needed)');
      isError(t, await queue(u, 1), 429, /at most 8 queued tasks per user \(you have 8\)/);
      isError(t, await createCluster(u, api, `${engine}-op-4`), 403, /at most 3 clusters per user \(you have 3\)/);

      const back = await admin('--user', u.userId, '--clusters', 'default');
      t.match(back, /clusters\s+2 \(default\), in use 3/, 'default returns to the configured value');
      t.match(back, /queued-tasks\s+8 \(set by an operator/, 'a quota left out keeps its setting');
      isError(t, await createCluster(u, api, `${engine}-op-4`), 403, /at most 2 clusters per user \(you have 3\)/);
      await t.rejects(admin('--email', email, '--codes', '1.5'), { message: /--codes must be a whole number from 0 to 2147483647, or default/ });
      await t.rejects(admin('--email', 'nobody@example.com'), { message: /No user/ });
    });
  });
}

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

async function gantry(env: Record<string, string>, ...args: string[]) {
  try {
    const r = await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
    });
    return { code: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

t.test('the gantry command raises a quota of a running server (PostgreSQL)', async (t: Test) => {
  const env = { DATABASE_URL: await freshPgDatabase(t), GANTRY_DATA_DIR: tempDir(t), ...QUOTA_ENV };
  const store = await openStore(
    { databaseUrl: env.DATABASE_URL, dataDir: env.GANTRY_DATA_DIR, pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 },
    silentLogger(),
    new ManualClock(Date.UTC(2026, 0, 1)),
    newId,
  );
  t.teardown(() => store.close());
  const config = loadConfig({ ...env, GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent' });
  const cp = await startControlPlane(config, silentLogger(), { store, scheduler: false });
  t.teardown(() => cp.stop());
  const u = await store.accounts.createUser('ops-quota@example.com');
  const { token } = await store.accounts.createToken(u.id);
  const create = (name: string) =>
    fetch(`${cp.url}/2/clusters`, { method: 'POST', headers: { Authorization: `OAuth ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ name }) });
  t.equal((await create('cli-1')).status, 200);
  t.equal((await create('cli-2')).status, 200);
  const refused = await create('cli-3');
  t.equal(refused.status, 403);
  t.match(((await refused.json()) as { msg: string }).msg, /at most 2 clusters per user \(you have 2\)/);

  const show = await gantry(env, 'user', 'quota', '--email', 'ops-quota@example.com');
  t.equal(show.code, 0, show.err);
  t.match(show.out, /clusters\s+2 \(default\), in use 2/, 'the command shows the environment default and the usage');
  const set = await gantry(env, 'user', 'quota', '--email', 'ops-quota@example.com', '--clusters', '100', '--queued-tasks', '500000');
  t.equal(set.code, 0, set.err);
  t.match(set.out, /clusters\s+100 \(set by an operator; default 2\), in use 2/);
  t.match(set.out, /queued-tasks\s+500000 \(set by an operator; default 5\), in use 0/);
  t.equal((await create('cli-3')).status, 200, 'the running server admits the next cluster');
  const bad = await gantry(env, 'user', 'quota', '--email', 'ops-quota@example.com', '--schedules', 'lots');
  t.equal(bad.code, 2);
  t.match(bad.err, /--schedules must be a whole number/);
});
