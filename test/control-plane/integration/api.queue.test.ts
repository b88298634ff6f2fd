import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { ControlPlaneMetrics } from '../../../control-plane/metrics.ts';
import { queueLoadJob } from '../../../control-plane/scheduler/queue-load.ts';
import { retentionJob } from '../../../control-plane/scheduler/retention.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import type { Fence } from '../../../control-plane/store/fence.ts';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, type ApiUser, type TestApi } from '../../helpers/api.ts';
import { codeOk, isError } from '../../helpers/assert.ts';
import { until } from '../../helpers/runner.ts';

/**
 * The queue services on both engines, in virtual time: the load the leader records (its
 * job ticked by hand with a ManualClock), its hourly roll-up and retention, and the
 * endpoints load, queue/status, queue/new-job and queue/requeue-jobs with every field,
 * limit and error.
 */

const T0 = Date.UTC(2026, 5, 1, 10, 0, 0);
const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
const FENCE: Fence = { term: 1, holder: 'test' };
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/** Queues `n` tasks of `code` through the API. */
async function queue(u: ApiUser, code: string, n: number, extra: Record<string, unknown> = {}): Promise<string[]> {
  const r = await u.project('POST', '/tasks', { json: { tasks: Array.from({ length: n }, (_, i) => ({ code_name: code, payload: `p${i}`, ...extra })) } });
  if (r.status !== 200) throw new Error(r.text);
  return (r.body.tasks as { id: string }[]).map((x) => x.id);
}

/** Gives tasks a live lease (running, as a runner would hold it). */
async function lease(api: TestApi, ids: string[]) {
  for (const id of ids) {
    await api.store.db.query(
      `INSERT INTO task_leases (id, task_id, attempt, runner_id, code_id, granted_at, expires_at, state, cluster)
       SELECT $1, id, 1, 'r1', code_id, $2, $2, 'running', cluster FROM tasks WHERE id = $3`,
      [`${id}-l`, api.store.clock.now(), id],
    );
    await api.store.db.query(`UPDATE tasks SET lease_id = $2, status = 'running', attempt = 1 WHERE id = $1`, [id, `${id}-l`]);
  }
}

/** Ends tasks with `status` at the clock's now, their leases too. */
async function finish(api: TestApi, ids: string[], status: string) {
  await api.store.db.query(`UPDATE task_leases SET ended_at = $2, state = 'done' WHERE task_id = ANY($1::text[])`, [ids, api.store.clock.now()]);
  await api.store.db.query(`UPDATE tasks SET status = $2, end_time = $3, lease_id = NULL WHERE id = ANY($1::text[])`, [ids, status, api.store.clock.now()]);
}

t.test('embedded mode: the local coordinator leads, and its leader records on its own', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: { GANTRY_QUEUE_LOAD_INTERVAL_S: '1' } });
  await codeOk(t, api.user, 'solo');
  await queue(api.user, 'solo', 2);
  await until('two instants recorded', async () => {
    const r = await api.user.project('GET', '/load?started=PT1M');
    return r.body.count >= 2 && r.body.results.at(-1).queued_count === 2;
  }, 20_000, 100);
  const r = await api.user.project('GET', '/load?started=PT1M');
  t.ok(r.body.results.every((x: any, i: number, a: any[]) => i === 0 || Date.parse(x.time) > Date.parse(a[i - 1].time)), 'one point per instant, in order');
});

for (const engine of ENGINES) {
  t.test(`queue services on ${engine}`, async (t) => {
    const clock = new ManualClock(T0);
    const api = await startTestApi(t, engine, { clock });
    const u = api.user;
    const job = queueLoadJob({ store: api.store, clock, intervalS: 60, aliveMs: 15_000, log: silentLogger() });
    const tick = () => job.tick(FENCE, new AbortController().signal);

    const alpha = await codeOk(t, u, 'alpha', { category: 'etl' });
    const beta = await codeOk(t, u, 'beta');

    t.test('category: set on upload, inherited by a new revision, cleared by null or "", never shown unset', async (t) => {
      let r = await u.project('GET', `/codes/${alpha.id}`);
      t.equal(r.body.category, 'etl');
      r = await u.project('GET', `/codes/${beta.id}`);
      t.notOk('category' in r.body, 'a package without one shows none');
      const again = await codeOk(t, u, 'alpha', { command: 'true' });
      t.equal((again as any).category, 'etl', 'inherited by the next revision');
      const g = await codeOk(t, u, 'gamma', { category: 'x' });
      const cleared = await codeOk(t, u, 'gamma', { category: null });
      t.notOk('category' in cleared, 'null clears it');
      r = await u.project('GET', `/codes/${g.id}/revisions`);
      t.same(r.body.revisions.map((x: any) => x.category ?? null), ['x', null], 'each revision keeps its own');
      await codeOk(t, u, 'gamma', { category: 'y' });
      t.notOk('category' in (await codeOk(t, u, 'gamma', { category: '' })), '"" clears it');
      const bad = await u.project('POST', '/codes', { body: (() => { const f = new FormData(); f.append('data', JSON.stringify({ name: 'delta', image: 'busybox', category: 'a'.repeat(256) })); return f; })() });
      isError(t, bad, 400, /category must be at most 255 bytes/);
    });

    t.test('recording: one row per project, package and priority in each state; an instant once; the cluster demand', async (t) => {
      const { cluster } = await api.store.clusters.create('fleet', { userId: u.userId });
      for (const [id, slots, draining] of [['r-a', 4, false], ['r-b', 8, true]] as const) {
        await api.store.db.query(
          `INSERT INTO runners (id, cluster_id, slots, connected, draining, last_beat_at, created_at) VALUES ($1, $2, $3, true, $4, $5, $5)`,
          [id, cluster.id, slots, draining, new Date(T0 + 25_000)],
        );
      }
      for (const [id, type] of [['i-1', 'ADD'], ['i-2', 'LIVE'], ['i-3', 'TERMINATE']]) {
        await api.store.db.query(
          `INSERT INTO cluster_instances (id, cluster_id, instance_id, provider, type, created_at, updated_at) VALUES ($1, $2, $1, 'local', $3, $4, $4)`,
          [id, cluster.id, type, clock.now()],
        );
      }
      // The fleet's autoscaler has a state: its EWMA is recorded with the load.
      await api.store.db.query(`INSERT INTO autoscaler_state (cluster_id, state, ewma, updated_at) VALUES ($1, '{}'::jsonb, 3.5, $2)`, [cluster.id, clock.now()]);
      const queuedA = await queue(u, 'alpha', 3, { priority: 2 });
      await queue(u, 'alpha', 2, { delay: 3600 }); // pending
      const runningB = await queue(u, 'beta', 2);
      await lease(api, runningB);
      await queue(u, 'beta', 1, { priority: 1 });
      clock.set(T0 + 30_000);
      await tick();
      const rows = await api.store.db.query<any>('SELECT code_id, priority, pending, queued, running, at FROM queue_load ORDER BY code_id, priority');
      t.same(
        rows.rows.map((r) => [r.code_id, r.priority, r.pending, r.queued, r.running]).sort(),
        [
          [alpha.id, 0, 2, 0, 0],
          [alpha.id, 2, 0, 3, 0],
          [beta.id, 0, 0, 0, 2],
          [beta.id, 1, 0, 1, 0],
        ].sort(),
        'pending (delayed), queued (eligible) and running (leased) per series',
      );
      t.equal(rows.rows[0].at.getTime(), T0, 'the instant is the start of its interval');
      const cl = (await api.store.queueLoad.clusterLoad('default', new Date(T0), new Date(T0))).points;
      t.match(cl, [{ cluster: 'default', busy: 2, queued: 4, runners: 0, slots: 0, instances: { add: 0, live: 0, kill: 0 }, ewma: null }], "the autoscaler's demand: busy + leasable now (no autoscaler state: no EWMA)");
      const fleet = (await api.store.queueLoad.clusterLoad('fleet', new Date(T0), new Date(T0))).points;
      t.match(fleet, [{ cluster: 'fleet', busy: 0, queued: 0, runners: 2, slots: 4, instances: { add: 1, live: 1, kill: 0 }, ewma: 3.5 }], 'the fleet: runners, slots (a draining runner\'s not counted), instances by state, the EWMA');
      clock.set(T0 + 50_000);
      await tick();
      const again = await api.store.queueLoad.record(new Date(T0), 15_000, FENCE);
      t.same(again, { recorded: false, series: 0, clusters: 0 }, 'an instant recorded already is not recorded again (a second leader writes nothing)');
      t.equal(Number((await api.store.db.query<any>('SELECT count(*)::int AS n FROM queue_load')).rows[0].n), 4, 'no double rows for one instant');
      for (let m = 1; m <= 4; m++) {
        clock.set(T0 + m * MIN + 1000);
        await tick();
      }
      t.equal(Number((await api.store.db.query<any>('SELECT count(*)::int AS n FROM queue_load_ticks')).rows[0].n), 5, 'one tick per interval');
      const r = await api.request('GET', `/2/clusters/${cluster.id}/load?per_page=2`);
      t.equal(r.status, 200, r.text);
      t.equal(r.body.count, 5, "the cluster's five instants");
      t.same(r.body.results[0], { time: new Date(T0).toISOString(), busy: 0, queued: 0, runners: 2, slots: 4, instances: { add: 1, live: 1, kill: 0 }, ewma: 3.5 });
      t.match(r.body.next, new RegExp(`/2/clusters/${cluster.id}/load\\?.*page=1`));
      isError(t, await api.request('GET', `/2/clusters/${cluster.id}/load?started=P40D`), 400, /at most 31 days/);
      const other = await api.newUser();
      isError(t, await api.request('GET', `/2/clusters/${cluster.id}/load`, { token: other.token }), 404, undefined, "another user's cluster");
      isError(t, await api.request('GET', `/2/clusters/${cluster.id}/load`, { token: null }), 401);
      void queuedA;
      const stale = api.store.queueLoad.record(new Date(T0 + 10 * MIN), 15_000, { term: 0, holder: 'stale' });
      await t.rejects(stale, { code: 'fenced' }, "a stale leader's pass is refused");
      t.equal(Number((await api.store.db.query<any>('SELECT count(*)::int AS n FROM queue_load_ticks WHERE at = $1', [new Date(T0 + 10 * MIN)])).rows[0].n), 0, 'and writes nothing');
    });

    t.test('load: fields, filters (repeatable), default range, paging', async (t) => {
      clock.set(T0 + 5 * MIN);
      let r = await u.project('GET', '/load');
      t.equal(r.status, 200, r.text);
      t.equal(r.body.count, 5, 'the past week holds the five instants');
      t.equal(r.body.next, null);
      t.equal(r.body.previous, null);
      t.match(r.body.results[0], { pending_count: 2, queued_count: 4, running_count: 2 });
      t.match(r.body.results[0].time, RFC3339);
      t.equal(new Date(r.body.results[0].time).getTime(), T0 + 30_000, 'time: when the counts were actually read');
      t.same(Object.keys(r.body.results[0]).sort(), ['pending_count', 'queued_count', 'running_count', 'time']);
      r = await u.project('GET', `/load?job_type_id=${alpha.id}`);
      t.match(r.body.results[0], { pending_count: 2, queued_count: 3, running_count: 0 }, 'by code package id');
      r = await u.project('GET', `/load?job_type_id=${alpha.id}&job_type_id=${beta.id}`);
      t.match(r.body.results[0], { pending_count: 2, queued_count: 4, running_count: 2 }, 'repeated: any of them');
      r = await u.project('GET', '/load?job_type_name=beta');
      t.match(r.body.results[0], { pending_count: 0, queued_count: 1, running_count: 2 }, 'by name');
      r = await u.project('GET', '/load?job_type_category=etl');
      t.match(r.body.results[0], { pending_count: 2, queued_count: 3, running_count: 0 }, 'by category');
      r = await u.project('GET', '/load?job_type_priority=1&job_type_priority=2');
      t.match(r.body.results[0], { pending_count: 0, queued_count: 4, running_count: 0 }, 'by priority, repeated');
      r = await u.project('GET', '/load?job_type_name=beta&job_type_priority=0');
      t.match(r.body.results[0], { pending_count: 0, queued_count: 0, running_count: 2 }, 'filters of different kinds combine');
      r = await u.project('GET', '/load?job_type_name=beta&job_type_category=etl');
      t.match(r.body.results[0], { pending_count: 0, queued_count: 0, running_count: 0 }, 'a name and a category that never meet');
      r = await u.project('GET', '/load?job_type_name=nothing');
      t.equal(r.body.count, 5, 'instants without matching rows count 0');
      t.match(r.body.results[0], { pending_count: 0, queued_count: 0, running_count: 0 });
      r = await u.project('GET', '/load?per_page=2');
      t.equal(r.body.results.length, 2);
      t.match(r.body.next, /\/2\/projects\/[0-9a-f]{24}\/load\?.*page=1/);
      const next = new URL(r.body.next);
      r = await api.request('GET', next.pathname + next.search);
      t.equal(r.body.results.length, 2);
      t.match(r.body.previous, /page=0/);
      t.match(r.body.next, /page=2/);
      r = await u.project('GET', '/load?per_page=2&page=2');
      t.equal(r.body.results.length, 1);
      t.equal(r.body.next, null);
      // A host no URL can carry (a client's own X-Forwarded-Host): links relative to the server, not a 500.
      r = await u.project('GET', '/load?per_page=2&page=1', { headers: { 'X-Forwarded-Host': 'a b' } });
      t.equal(r.status, 200, r.text);
      t.match(r.body.next, /^\/2\/projects\/[0-9a-f]{24}\/load\?.*page=2/);
      r = await u.project('GET', `/load?started=${new Date(T0 + 2 * MIN).toISOString()}&ended=${new Date(T0 + 3 * MIN).toISOString()}`);
      t.equal(r.body.count, 2, 'started and ended as date-times, both inclusive');
      r = await u.project('GET', '/load?started=PT2M30S');
      t.equal(r.body.count, 2, 'started as a duration before now (PT2M30S: the instants from T0 + 3 min)');
      r = await u.project('GET', '/load?started=P1D&ended=PT4M');
      t.equal(r.body.count, 2, 'ended as a duration');
    });

    t.test('load: every error a 400 naming the field and the limit; 401; 404 for another user', async (t) => {
      isError(t, await u.project('GET', '/load?started=P32D'), 400, /at most 31 days, got 32\.00 days/);
      isError(t, await u.project('GET', `/load?started=2026-01-01T00:00:00Z&ended=2026-03-01T00:00:00Z`), 400, /at most 31 days/);
      isError(t, await u.project('GET', `/load?started=2026-06-02T00:00:00Z&ended=2026-06-01T00:00:00Z`), 400, /started .* must not be after ended/);
      isError(t, await u.project('GET', '/load?started=yesterday'), 400, /started must be an ISO 8601 date-time .* or an ISO 8601 duration/);
      isError(t, await u.project('GET', '/load?ended=PXYZ'), 400, /ended must be an ISO 8601/);
      isError(t, await u.project('GET', '/load?started=2026-02-30T00:00:00Z'), 400, /started must be an ISO 8601/);
      isError(t, await u.project('GET', '/load?job_type_id=nope'), 400, /job_type_id must be a code package id/);
      isError(t, await u.project('GET', `/load?job_type_id=${alpha.id}&job_type_id=x`), 400, /job_type_id\[1\] must be a code package id/);
      isError(t, await u.project('GET', '/load?job_type_priority=3'), 400, /job_type_priority must be an integer from 0 to 2, got 3/);
      isError(t, await u.project('GET', `/load?${Array.from({ length: 101 }, () => 'job_type_name=a').join('&')}`), 400, /job_type_name must hold at most 100 entries, got 101/);
      isError(t, await u.project('GET', '/load?per_page=1001'), 400, /per_page must be an integer from 1 to 1000/);
      isError(t, await u.project('GET', '/load?page=100001'), 400, /page must be an integer from 0 to 100000/);
      isError(t, await u.project('GET', `/load?job_type_category=${'c'.repeat(256)}`), 400, /job_type_category must be at most 255 bytes/);
      isError(t, await u.project('GET', '/load?resolution=second'), 400, /resolution must be one of minute, hour/);
      isError(t, await u.project('GET', '/load', { token: null }), 401);
      isError(t, await u.project('GET', '/queue/status', { token: null }), 401);
      const other = await api.newUser();
      for (const [m, p] of [['GET', '/load'], ['GET', '/queue/status'], ['POST', '/queue/new-job'], ['POST', '/queue/requeue-jobs']] as const) {
        const r = await api.request(m, `/2/projects/${u.projectId}${p}`, { token: other.token, ...(m === 'POST' ? { json: { job_type_id: alpha.id } } : {}) });
        isError(t, r, 404, undefined, `${m} ${p} of another user's project`);
      }
    });

    t.test('queue/status: eligible waiting tasks by package revision', async (t) => {
      clock.set(T0 + 5 * MIN);
      await api.store.codes.setPaused(u.projectId, beta.id, true);
      const r = await u.project('GET', '/queue/status');
      t.equal(r.status, 200, r.text);
      const byName = Object.fromEntries(r.body.queue_status.map((e: any) => [e.job_type_name, e]));
      t.same(byName.alpha, {
        job_type_id: alpha.id,
        job_type_name: 'alpha',
        job_type_version: '2',
        job_type_category: 'etl',
        count: 3,
        longest_queued: new Date(T0).toISOString(),
        highest_priority: 2,
        is_job_type_paused: false,
      }, 'delayed ones are not queued yet');
      t.same(byName.beta, {
        job_type_id: beta.id,
        job_type_name: 'beta',
        job_type_version: '1',
        count: 1,
        longest_queued: new Date(T0).toISOString(),
        highest_priority: 1,
        is_job_type_paused: true,
      }, 'leased ones are running, not queued; the package is paused');
      await api.store.codes.setPaused(u.projectId, beta.id, false);
    });

    t.test('new-job: 201 with Location and the task; job_data is its payload', async (t) => {
      const data = { version: '1.0', input_data: [{ name: 'Param 1', value: 'HELLO' }] };
      let r = await u.project('POST', '/queue/new-job', { json: { job_type_id: beta.id, job_data: data, priority: 1, delay: 60 } });
      t.equal(r.status, 201, r.text);
      t.equal(r.headers.get('location'), `${api.url}/2/projects/${u.projectId}/tasks/${r.body.id}`);
      t.match(r.body, { code_id: beta.id, code_name: 'beta', status: 'queued', priority: 1, delay: 60, payload: JSON.stringify(data) });
      const got = await api.request('GET', new URL(r.headers.get('location')!).pathname);
      t.equal(got.body.payload, JSON.stringify(data), 'the Location names the task');
      r = await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id } });
      t.equal(r.status, 201);
      t.equal(r.body.payload, '', 'no job_data: an empty payload');
      isError(t, await u.project('POST', '/queue/new-job', { json: {} }), 400, /job_type_id is required/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: 7 } }), 400, /job_type_id must be a string/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: 'ab'.repeat(12) } }), 404, /job_type_id: no code package with id/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id, job_data: { x: 'a'.repeat(65536) } } }), 400, /job_data must be at most 65536 bytes as JSON text, got 65544/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id, priority: 3 } }), 400, /priority must be an integer from 0 to 2/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id, cluster: 'nowhere' } }), 400, /cluster: no cluster named "nowhere"/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id, timeout: 3601 } }), 400, /timeout must be an integer from 1 to 3600, got 3601/);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id }, headers: { 'Content-Type': 'text/plain' } }), 406);
      const before = Number((await api.store.db.query<any>('SELECT count(*)::int AS n FROM tasks')).rows[0].n);
      isError(t, await u.project('POST', '/queue/new-job', { json: { job_type_id: alpha.id, delay: -1 } }), 400, /delay must be an integer from 0 to 604800/);
      t.equal(Number((await api.store.db.query<any>('SELECT count(*)::int AS n FROM tasks')).rows[0].n), before, 'a refused request queues nothing');
    });

    t.test('requeue-jobs: finished tasks become new linked tasks, in one transaction, paged', async (t) => {
      clock.set(T0 + 10 * MIN);
      const failed = await queue(u, 'beta', 4);
      await finish(api, failed.slice(0, 3), 'error');
      await finish(api, [failed[3]!], 'cancelled');
      const done = await queue(u, 'beta', 1);
      await finish(api, done, 'complete');
      const timedOut = await queue(u, 'alpha', 2);
      clock.set(T0 + 20 * MIN);
      await finish(api, timedOut, 'timeout');

      await codeOk(t, u, 'beta', { retries: 2 });
      let r = await u.project('POST', '/queue/requeue-jobs?per_page=2', { json: { status: 'FAILED', job_type_names: ['beta'], priority: 2 } });
      t.equal(r.status, 200, r.text);
      t.equal(r.body.results[0].code_rev, '2', "as retry does: the package's latest revision");
      const budget = await api.store.db.query<any>('SELECT retries_left, retry_count, payload FROM tasks WHERE id = $1', [r.body.results[0].id]);
      t.match(budget.rows[0], { retries_left: 2, retry_count: 1 }, "its retries, and one deeper in the chain");
      t.equal(r.body.count, 3, 'FAILED: the three errors of beta');
      t.equal(r.body.results.length, 2);
      t.match(r.body.results[0], { status: 'queued', priority: 2, code_name: 'beta' });
      t.ok(failed.slice(0, 3).includes(r.body.results[0].original_task_id), 'linked to its original');
      const origs = await api.store.db.query<any>('SELECT id, retry_task_id FROM tasks WHERE id = ANY($1::text[]) ORDER BY id', [failed.slice(0, 3)]);
      t.ok(origs.rows.every((x) => x.retry_task_id), 'each original names its retry');
      const nextUrl = new URL(r.body.next);
      t.equal(nextUrl.pathname, `/2/projects/${u.projectId}/queue/requeue-jobs/${r.body.requeue_id}`);
      const page2 = await api.request('GET', nextUrl.pathname + nextUrl.search);
      t.equal(page2.body.results.length, 1, 'the next page has the rest');
      t.equal(page2.body.next, null);
      t.match(page2.body.previous, /page=0/);

      r = await u.project('POST', '/queue/requeue-jobs', { json: { status: 'FAILED', job_type_names: ['beta'] } });
      t.equal(r.body.count, 0, 'requeued tasks are not requeued again (only the last of a chain matches)');

      r = await u.project('POST', '/queue/requeue-jobs', { json: { started: new Date(T0 + 15 * MIN).toISOString() } });
      t.equal(r.body.count, 2, 'started: only tasks that ended since (the two timeouts)');
      t.same(r.body.results.map((x: any) => x.original_task_id).sort(), [...timedOut].sort());

      r = await u.project('POST', '/queue/requeue-jobs', { json: { job_ids: [failed[3], done[0]], status: ['CANCELED'] } });
      t.equal(r.body.count, 1, 'by id and CANCELED; a complete task is never requeued');
      t.equal(r.body.results[0].original_task_id, failed[3]);

      r = await u.project('POST', '/queue/requeue-jobs', { json: { job_type_categories: ['etl'], job_type_ids: [alpha.id] } });
      t.equal(r.body.count, 0, 'the timeouts of alpha were requeued above');

      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { status: 'DONE' } }), 400, /status must be one of CANCELED, FAILED/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { status: ['FAILED', 'nope'] } }), 400, /status\[1\] must be one of/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { priority: 5 } }), 400, /priority must be an integer from 0 to 2, got 5/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { started: 'PT1H', ended: 'PT2H' } }), 400, /must not be after ended/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { job_ids: ['x'] } }), 400, /job_ids\[0\] must be a task id/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { job_ids: Array.from({ length: 10_001 }, () => failed[0]) } }), 400, /job_ids must hold at most 10000 entries, got 10001/);
      isError(t, await api.request('GET', `/2/projects/${u.projectId}/queue/requeue-jobs/${'0'.repeat(24)}`), 404);
      isError(t, await u.project('POST', '/queue/requeue-jobs?per_page=0', { json: {} }), 400, /per_page must be an integer from 1 to 1000, got 0/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { job_type_names: ['a'.repeat(256)] } }), 400, /job_type_names\[0\] must be at most 255 bytes/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { job_type_ids: Array.from({ length: 101 }, () => alpha.id) } }), 400, /job_type_ids must hold at most 100 entries, got 101/);
      isError(t, await u.project('POST', '/queue/requeue-jobs', { json: { started: 'soon' } }), 400, /started must be an ISO 8601 date-time/);
      const other = await api.newUser();
      isError(t, await api.request('GET', `/2/projects/${u.projectId}/queue/requeue-jobs/${r.body.requeue_id}`, { token: other.token }), 404, undefined, "another user's requeue");
    });

    t.test('requeue-jobs: more than 10,000 matches requeue nothing and say how many', async (t) => {
      const p = await api.store.accounts.createProject(u.userId, 'many');
      const c = await api.store.codes.upload(p.id, 'bulk', { image: 'busybox' });
      await api.store.db.query(
        `INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout, payload,
           created_at, updated_at, eligible_at, end_time)
         SELECT lpad(to_hex(g), 24, '0'), $1, $2, 'bulk', $3, 1, 'error', 0, 'default', 60, '', $4, $4, $4, $4 FROM generate_series(1, 10001) g`,
        [p.id, c.id, c.latestRevisionId, clock.now()],
      );
      const r = await api.request('POST', `/2/projects/${p.id}/queue/requeue-jobs`, { json: {} });
      isError(t, r, 400, 'at most 10000 tasks are requeued per call, and 10001 match: narrow the filters (started, ended, status, job_ids, job_type_ids, job_type_names, job_type_categories)');
      const n = await api.store.db.query<any>(`SELECT count(*)::int AS n FROM tasks WHERE project_id = $1 AND status = 'queued'`, [p.id]);
      t.equal(Number(n.rows[0].n), 0, 'nothing was queued');
    });

    t.test('roll-up: each finished hour once, means over its passes; load by the hour; retention keeps each for its period', async (t) => {
      clock.set(T0 + HOUR + 1000);
      await tick();
      const hours = await api.store.db.query<any>('SELECT hour, ticks FROM queue_load_hours');
      t.same(hours.rows.map((h) => [h.hour.getTime(), h.ticks]), [[T0, 5]], 'the hour from T0 had five passes');
      const a2 = await api.store.db.query<any>('SELECT pending_mean, queued_mean, queued_max FROM queue_load_hourly WHERE code_id = $1 AND priority = 2', [alpha.id]);
      t.same(a2.rows, [{ pending_mean: 0, queued_mean: 3, queued_max: 3 }]);
      t.equal(await api.store.queueLoad.rollUp(new Date(T0 + HOUR + 5 * MIN), 24, FENCE), 0, 'an hour is rolled up once, and only once it is over');
      let r = await u.project('GET', `/load?resolution=hour&started=${new Date(T0).toISOString()}`);
      t.equal(r.body.count, 1);
      t.same(r.body.results[0], { time: new Date(T0).toISOString(), pending_count: 2, queued_count: 4, running_count: 2 });

      const config = loadConfig({ LOG_LEVEL: 'silent' });
      const metrics = new ControlPlaneMetrics();
      const ret = retentionJob({ store: api.store, clock, settings: { ...config.retention, pauseMs: 0 }, metrics, log: silentLogger() });
      const count = async (table: string) => Number((await api.store.db.query<any>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n);
      clock.set(T0 + 30 * DAY + 30_000);
      await ret.tick(FENCE, new AbortController().signal);
      t.equal(await count('queue_load_ticks'), 5, 'rows of 30 days ago are kept');
      clock.set(T0 + 30 * DAY + 2 * MIN + 30_000);
      await ret.tick(FENCE, new AbortController().signal);
      t.equal(await count('queue_load_ticks'), 3, 'per-interval rows older than 30 days go');
      clock.set(T0 + 30 * DAY + HOUR / 2);
      await ret.tick(FENCE, new AbortController().signal);
      for (const table of ['queue_load_ticks', 'queue_load', 'cluster_load']) {
        const left = await api.store.db.query<any>(`SELECT DISTINCT at FROM ${table}`);
        t.same(left.rows.map((x) => x.at.getTime()), [T0 + HOUR], `${table}: only the rows of the instant after the hour are left`);
      }
      t.equal(await count('queue_load_hourly'), 4, 'the roll-up stays');
      r = await u.project('GET', `/load?started=${new Date(T0).toISOString()}&ended=${new Date(T0 + 2 * HOUR).toISOString()}`);
      t.equal(r.body.count, 1, 'a range older than the per-interval rows is read from the roll-up');
      clock.set(T0 + 366 * DAY);
      await ret.tick(FENCE, new AbortController().signal);
      for (const table of ['queue_load_hours', 'queue_load_hourly', 'cluster_load_hourly', 'queue_load_ticks']) t.equal(await count(table), 0, `${table}: gone after its period`);
      const deleted = (await metrics.retentionDeleted.get()).values.map((v) => String(v.labels.kind)).filter((k) => /load/.test(k)).sort();
      t.same(deleted, ['cluster_load', 'cluster_load_hourly', 'queue_load', 'queue_load_hourly', 'queue_load_hours', 'queue_load_ticks'], 'counted by kind');
    });
  });
}
