import t, { type Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, type ApiUser, type Reply, type TestApi } from '../../helpers/api.ts';
import { codeOk, isError } from '../../helpers/assert.ts';
import { claimableIds } from '../../helpers/claims.ts';

/**
 * Scheduled tasks over HTTP, and their firing, on both engines. Firing runs in virtual
 * time: the API's own schedule loop is off and the tests call `fireDue` directly. Subtests
 * share one control plane per engine; after each one every schedule still scheduled is
 * cancelled, so a later subtest's `fireDue` only fires its own schedules.
 */

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const ID = /^[0-9a-f]{24}$/;
const MIN = 60_000;

async function schedule(u: ApiUser, schedules: unknown[]): Promise<Reply> {
  return u.project('POST', '/schedules', { json: { schedules } });
}

async function scheduleOne(t: Test, u: ApiUser, s: Record<string, unknown>): Promise<string> {
  const r = await schedule(u, [s]);
  t.equal(r.status, 200, r.text);
  return r.body.schedules[0].id;
}

async function getSchedule(t: Test, u: ApiUser, id: string): Promise<Record<string, any>> {
  const r = await u.project('GET', `/schedules/${id}`);
  t.equal(r.status, 200, r.text);
  return r.body;
}

async function scheduleCount(api: TestApi): Promise<number> {
  return (await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM schedules')).rows[0]!.n;
}

/** The tasks a schedule queued, oldest first. */
async function tasksOf(api: TestApi, scheduleId: string): Promise<Record<string, any>[]> {
  return (
    await api.store.db.query<Record<string, any>>('SELECT * FROM tasks WHERE schedule_id = $1 ORDER BY created_at, id', [scheduleId])
  ).rows;
}

for (const engine of ENGINES) {
  t.test(`schedules API on ${engine}`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1, 12, 0, 0));
    const api = await startTestApi(t, engine, { clock });
    const u = api.user;
    // The operator's clusters the schedules below name (a name no cluster has is refused).
    for (const name of ['high-mem', `sched-${engine}`]) await api.store.clusters.create(name);
    const fire = () => api.store.schedules.fireDue(clock.now());
    t.afterEach(async () => {
      await api.store.db.query(`UPDATE schedules SET status = 'cancelled', next_start = NULL WHERE status = 'scheduled'`);
    });

    t.test('create: reply and stored fields', async (t) => {
      await codeOk(t, u, 'sc-create', { default_priority: 1 });
      const r = await schedule(u, [
        { code_name: 'sc-create', payload: '{"x":"abc"}', name: 'MyScheduledTask', run_every: 3600 },
        {
          code_name: 'sc-create',
          payload: 'p2',
          label: 'by-label',
          start_at: '2026-01-02T13:30:00+01:00',
          end_at: '2026-02-01T00:00:00Z',
          run_every: 60,
          run_times: 5,
          priority: 2,
          timeout: 300,
          cluster: 'high-mem',
          delay: 45,
        },
      ]);
      t.equal(r.status, 200, r.text);
      t.match(r.headers.get('content-type') ?? '', /application\/json/);
      t.same(Object.keys(r.body), ['msg', 'schedules']);
      t.equal(r.body.msg, 'Scheduled');
      t.equal(r.body.schedules.length, 2);
      for (const s of r.body.schedules) {
        t.same(Object.keys(s), ['id']);
        t.match(s.id, ID);
      }
      const [a, b] = r.body.schedules.map((s: { id: string }) => s.id) as [string, string];
      const now = clock.now().toISOString();
      t.same(await getSchedule(t, u, a), {
        id: a,
        project_id: u.projectId,
        code_name: 'sc-create',
        name: 'MyScheduledTask',
        label: 'MyScheduledTask',
        payload: '{"x":"abc"}',
        status: 'scheduled',
        priority: 1,
        timeout: 3600,
        cluster: 'default',
        delay: 0,
        task_delay: 0,
        start_at: now,
        run_every: 3600,
        next_fires: [0, 1, 2, 3, 4].map((h) => new Date(clock.now().getTime() + h * 3600_000).toISOString()),
        run_count: 0,
        error_count: 0,
        next_start: now,
        created_at: now,
        updated_at: now,
      }, 'defaults: start now, priority of the code, cluster default, timeout 3600, no end');
      t.same(await getSchedule(t, u, b), {
        id: b,
        project_id: u.projectId,
        code_name: 'sc-create',
        name: 'by-label',
        label: 'by-label',
        payload: 'p2',
        status: 'scheduled',
        priority: 2,
        timeout: 300,
        cluster: 'high-mem',
        delay: 45,
        task_delay: 45,
        start_at: '2026-01-02T12:30:00.000Z',
        end_at: '2026-02-01T00:00:00.000Z',
        run_every: 60,
        next_fires: ['12:30', '12:31', '12:32', '12:33', '12:34'].map((hm) => `2026-01-02T${hm}:00.000Z`),
        run_times: 5,
        run_count: 0,
        error_count: 0,
        next_start: '2026-01-02T12:30:00.000Z',
        created_at: now,
        updated_at: now,
      });
      // start_at as seconds since the epoch works too
      const epoch = await scheduleOne(t, u, { code_name: 'sc-create', start_at: Date.UTC(2026, 5, 1) / 1000 });
      t.equal((await getSchedule(t, u, epoch)).start_at, '2026-06-01T00:00:00.000Z');
      t.equal((await getSchedule(t, u, epoch)).payload, '', 'payload defaults to empty');
    });

    t.test('create: validation, all or nothing', async (t) => {
      await codeOk(t, u, 'sc-valid');
      const before = await scheduleCount(api);
      const ok = { code_name: 'sc-valid', payload: 'x', run_every: 60 };
      const cases: [unknown[], number, RegExp][] = [
        [[ok, { payload: 'x' }], 400, /^schedules\[1\]\.code_name is required/],
        [[ok, { code_name: 'missing-code' }], 404, /^schedules\[1\]\.code_name: .*missing-code/],
        [[ok, { ...ok, run_every: 59 }], 400, /^schedules\[1\]\.run_every must be an integer from 60/],
        [[{ ...ok, run_every: 0 }], 400, /^schedules\[0\]\.run_every /],
        [[{ ...ok, run_every: 'hourly' }], 400, /^schedules\[0\]\.run_every /],
        [[{ ...ok, start_at: '2026-03-01T00:00:00Z', end_at: '2026-02-01T00:00:00Z' }], 400, /^schedules\[0\]\.end_at must be after start_at/],
        [[{ ...ok, start_at: '2026-03-01T00:00:00Z', end_at: '2026-03-01T00:00:00Z' }], 400, /^schedules\[0\]\.end_at must be after start_at/],
        [[{ ...ok, end_at: '2025-12-31T00:00:00Z' }], 400, /^schedules\[0\]\.end_at must be after start_at/],
        [[{ ...ok, start_at: 'tomorrow' }], 400, /^schedules\[0\]\.start_at must be an RFC 3339 time/],
        [[{ ...ok, end_at: '2026-13-45T99:00:00Z' }], 400, /^schedules\[0\]\.end_at /],
        [[{ ...ok, run_times: 0 }], 400, /^schedules\[0\]\.run_times /],
        [[{ ...ok, priority: 3 }], 400, /^schedules\[0\]\.priority must be an integer from 0 to 2/],
        [[{ ...ok, timeout: 3601 }], 400, /^schedules\[0\]\.timeout must be an integer from 1 to 3600/],
        [[{ ...ok, cluster: 'bad cluster' }], 400, /^schedules\[0\]\.cluster /],
        [[{ ...ok, delay: 604801 }], 400, /^schedules\[0\]\.delay must be an integer from 0 to 604800/],
        [[{ ...ok, payload: { x: 1 } }], 400, /^schedules\[0\]\.payload must be a string/],
        [[{ ...ok, payload: 'x'.repeat(65537) }], 400, /^schedules\[0\]\.payload must be at most 65536 bytes/],
        [[{ ...ok, payload: 'a\u0000' }], 400, /^schedules\[0\]\.payload .*NUL/],
        [[{ ...ok, name: 'x'.repeat(256) }], 400, /^schedules\[0\]\.name must be at most 255 bytes/],
        [[{ ...ok, cron: '0 * * * *' }], 400, /^schedules\[0\]\.cron and schedules\[0\]\.run_every cannot both be given/],
        [[{ ...ok, run_every: undefined, cron: '0 * * * * *' }], 400, /^schedules\[0\]\.cron must be a five-field cron expression .*: mode '5-part' requires exactly 5 parts/],
        [[{ ...ok, run_every: undefined, cron: '0 25 * * *' }], 400, /^schedules\[0\]\.cron must be a five-field cron expression .*hour: 25/],
        [[{ ...ok, run_every: undefined, cron: '0 0 31 2 *' }], 400, /^schedules\[0\]\.cron must be .*never fires/],
        [[{ ...ok, run_every: undefined, cron: 7 }], 400, /^schedules\[0\]\.cron must be a string/],
        [[{ ...ok, run_every: undefined, cron: '0 3 * * *', timezone: 'Mars/Base' }], 400, /^schedules\[0\]\.timezone must be an IANA time zone name: unknown time zone "Mars\/Base"/],
        [[{ ...ok, timezone: 'Europe/Berlin' }], 400, /^schedules\[0\]\.timezone is only read with schedules\[0\]\.cron/],
        [[{ ...ok, run_every: undefined, cron: '0 3 * * *', start_at: '2026-03-01T04:00:00Z', end_at: '2026-03-02T02:00:00Z' }], 400, /^schedules\[0\]\.cron has no fire time between start_at and end_at/],
        [[ok, 'nope'], 400, /^schedules\[1\] must be an object/],
        [[], 400, /^schedules is required/],
      ];
      for (const [list, status, re] of cases) isError(t, await schedule(u, list), status, re);
      isError(t, await u.project('POST', '/schedules', { json: {} }), 400, /^schedules is required/);
      isError(t, await u.project('POST', '/schedules', { json: { schedules: ok } }), 400, /^schedules is required/);
      const body = JSON.stringify({ schedules: [ok] });
      isError(t, await u.project('POST', '/schedules', { body }), 406, /application\/json/);
      isError(t, await u.project('POST', '/schedules', { body, headers: { 'Content-Type': 'text/plain' } }), 406, /application\/json/);
      t.equal(await scheduleCount(api), before, 'no schedule stored by any refused request');
      // the smallest run_every is accepted
      t.equal((await getSchedule(t, u, await scheduleOne(t, u, ok))).run_every, 60);
    });

    t.test('list: paginated, newest first', async (t) => {
      const lu = await api.newUser();
      await codeOk(t, lu, 'sc-list');
      const empty = await lu.project('GET', '/schedules');
      t.equal(empty.status, 200);
      t.same(empty.body, { schedules: [] });
      const made: string[] = [];
      for (let i = 0; i < 5; i++) made.push(await scheduleOne(t, lu, { code_name: 'sc-list', payload: `p${i}`, run_every: 60 }));
      const newestFirst = [...made].reverse();
      const l = await lu.project('GET', '/schedules');
      t.equal(l.status, 200);
      t.match(l.headers.get('content-type') ?? '', /application\/json/);
      t.same(Object.keys(l.body), ['schedules']);
      t.same(l.body.schedules.map((s: any) => s.id), newestFirst);
      t.match(l.body.schedules[0], { id: made[4], code_name: 'sc-list', payload: 'p4', status: 'scheduled', run_every: 60, project_id: lu.projectId });
      const page = async (q: Record<string, number>) =>
        (await lu.project('GET', '/schedules', { query: q })).body.schedules.map((s: any) => s.id);
      t.same(await page({ per_page: 2 }), newestFirst.slice(0, 2));
      t.same(await page({ per_page: 2, page: 1 }), newestFirst.slice(2, 4));
      t.same(await page({ per_page: 2, page: 2 }), newestFirst.slice(4));
      t.same(await page({ per_page: 2, page: 3 }), []);
      t.same(await page({ page: 1 }), [], 'default per_page 30');
      isError(t, await lu.project('GET', '/schedules', { query: { per_page: 101 } }), 400, /^per_page must be an integer from 1 to 100/);
      isError(t, await lu.project('GET', '/schedules', { query: { page: 101 } }), 400, /^page must be an integer from 0 to 100/);
      // only the project's own schedules
      t.notOk((await u.project('GET', '/schedules', { query: { per_page: 100 } })).body.schedules.some((s: any) => made.includes(s.id)));
    });

    t.test('get: not found', async (t) => {
      isError(t, await u.project('GET', '/schedules/0123456789abcdef01234567'), 404, /Schedule not found/);
      isError(t, await u.project('GET', '/schedules/xyz'), 404, /Schedule not found/);
      await codeOk(t, u, 'sc-get');
      const id = await scheduleOne(t, u, { code_name: 'sc-get', run_every: 60 });
      const other = await api.newUser();
      isError(t, await other.project('GET', `/schedules/${id}`), 404, /Schedule not found/);
      isError(t, await other.project('POST', `/schedules/${id}/cancel`), 404, /Schedule not found/);
      t.equal((await getSchedule(t, u, id)).status, 'scheduled');
    });

    t.test('fires exactly once per period', async (t) => {
      await codeOk(t, u, 'sc-period');
      const start = clock.now();
      const id = await scheduleOne(t, u, { code_name: 'sc-period', payload: 'tick', run_every: 60 });
      t.equal(await fire(), 1);
      t.equal(await fire(), 0, 'twice at the same instant: once');
      let s = await getSchedule(t, u, id);
      t.equal(s.run_count, 1);
      t.equal(s.status, 'scheduled');
      t.equal(s.last_run_time, start.toISOString());
      t.equal(s.next_start, new Date(start.getTime() + MIN).toISOString());
      t.match(s.next_start, ISO);
      t.notOk('msg' in s);

      clock.advance(MIN - 1);
      t.equal(await fire(), 0, 'not before the period ends');
      clock.advance(1);
      t.equal(await fire(), 1, 'exactly one period later: once more');
      t.equal(await fire(), 0);
      s = await getSchedule(t, u, id);
      t.equal(s.run_count, 2);
      t.equal(s.last_run_time, new Date(start.getTime() + MIN).toISOString());
      t.equal(s.next_start, new Date(start.getTime() + 2 * MIN).toISOString());
      clock.advance(MIN + 10_000);
      t.equal(await fire(), 1);
      s = await getSchedule(t, u, id);
      t.equal(s.next_start, new Date(start.getTime() + 3 * MIN).toISOString(), 'periods stay on the start_at grid');
      const tasks = await tasksOf(api, id);
      t.equal(tasks.length, 3);
      t.same(
        tasks.map((x) => new Date(x.scheduled_for).getTime() - start.getTime()),
        [0, MIN, 2 * MIN],
        'one task per period',
      );
    });

    t.test('cron: fires on its instants in its time zone, once each; next_start and next_fires shown', async (t) => {
      await codeOk(t, u, 'sc-cron');
      // 2026-01-01T12:00Z now; at 09:30 and 17:30 Berlin time (UTC+1 in winter) on weekdays.
      const id = await scheduleOne(t, u, { code_name: 'sc-cron', cron: '30 9,17 * * 1-5', timezone: 'Europe/Berlin', run_times: 4 });
      let s = await getSchedule(t, u, id);
      t.match(s, { cron: '30 9,17 * * 1-5', timezone: 'Europe/Berlin', status: 'scheduled', next_start: '2026-01-01T16:30:00.000Z' });
      t.notOk('run_every' in s);
      t.same(s.next_fires, ['2026-01-01T16:30:00.000Z', '2026-01-02T08:30:00.000Z', '2026-01-02T16:30:00.000Z', '2026-01-05T08:30:00.000Z'], 'four: run_times bounds them');
      t.equal(await fire(), 0, 'not before its first instant');
      clock.set(Date.parse('2026-01-01T16:30:00Z'));
      t.equal(await fire(), 1);
      t.equal(await fire(), 0, 'once per instant');
      // Down over the weekend: one fire on return, then the next future instant.
      clock.set(Date.parse('2026-01-05T09:00:00Z'));
      t.equal(await fire(), 1, 'after downtime: once');
      s = await getSchedule(t, u, id);
      t.match(s, { run_count: 2, next_start: '2026-01-05T16:30:00.000Z' });
      t.same(s.next_fires, ['2026-01-05T16:30:00.000Z', '2026-01-06T08:30:00.000Z']);
      t.same(
        (await tasksOf(api, id)).map((x) => new Date(x.scheduled_for).toISOString()),
        ['2026-01-01T16:30:00.000Z', '2026-01-02T08:30:00.000Z'],
        'each task is keyed by the instant it was due',
      );
      // The stored row says what the API said.
      const row = (await api.store.db.query('SELECT cron, timezone, run_every FROM schedules WHERE id = $1', [id])).rows[0];
      t.same(row, { cron: '30 9,17 * * 1-5', timezone: 'Europe/Berlin', run_every: null });
      // A cron without a time zone is read in UTC; an interval schedule shows its next five too.
      const utc = await getSchedule(t, u, await scheduleOne(t, u, { code_name: 'sc-cron', cron: '@daily' }));
      t.match(utc, { timezone: 'UTC', next_start: '2026-01-06T00:00:00.000Z' });
      const every = await getSchedule(t, u, await scheduleOne(t, u, { code_name: 'sc-cron', run_every: 3600, end_at: '2026-01-05T12:00:00Z' }));
      t.same(every.next_fires, ['2026-01-05T09:00:00.000Z', '2026-01-05T10:00:00.000Z', '2026-01-05T11:00:00.000Z', '2026-01-05T12:00:00.000Z'], 'end_at bounds them');
      t.notOk('cron' in every || 'timezone' in every);
    });

    t.test('after downtime: fires once, then on the next future boundary', async (t) => {
      await codeOk(t, u, 'sc-downtime');
      const start = clock.now();
      const id = await scheduleOne(t, u, { code_name: 'sc-downtime', run_every: 60 });
      t.equal(await fire(), 1);
      // down for ten periods and a bit
      clock.advance(10 * MIN + 25_000);
      t.equal(await fire(), 1, 'one fire, not a burst of ten');
      t.equal(await fire(), 0);
      t.equal((await tasksOf(api, id)).length, 2);
      let s = await getSchedule(t, u, id);
      t.equal(s.run_count, 2);
      t.equal(s.next_start, new Date(start.getTime() + 11 * MIN).toISOString(), 'the next boundary after now');
      t.equal(s.last_run_time, clock.now().toISOString());
      clock.set(start.getTime() + 11 * MIN - 1);
      t.equal(await fire(), 0);
      clock.set(start.getTime() + 11 * MIN);
      t.equal(await fire(), 1);
      // down for exactly ten periods: now is itself a boundary; the next one is after it
      clock.advance(10 * MIN);
      t.equal(await fire(), 1);
      t.equal(await fire(), 0);
      s = await getSchedule(t, u, id);
      t.equal(s.run_count, 4);
      t.equal(s.next_start, new Date(start.getTime() + 22 * MIN).toISOString());
      t.equal((await tasksOf(api, id)).length, 4);
    });

    t.test('run_times stops it', async (t) => {
      await codeOk(t, u, 'sc-times');
      const start = clock.now();
      const id = await scheduleOne(t, u, { code_name: 'sc-times', run_every: 60, run_times: 3 });
      for (let i = 0; i < 3; i++) {
        t.equal(await fire(), 1, `run ${i + 1}`);
        clock.advance(MIN);
      }
      const s = await getSchedule(t, u, id);
      t.equal(s.run_count, 3);
      t.equal(s.status, 'complete');
      t.equal(s.msg, 'Ran max times.');
      t.notOk('next_start' in s, 'no next start');
      t.equal(s.last_run_time, new Date(start.getTime() + 2 * MIN).toISOString());
      for (let i = 0; i < 3; i++) {
        t.equal(await fire(), 0);
        clock.advance(MIN);
      }
      t.equal((await tasksOf(api, id)).length, 3);
      isError(t, await u.project('POST', `/schedules/${id}/cancel`), 400, /already complete/);
      t.equal((await getSchedule(t, u, id)).status, 'complete');
    });

    t.test('end_at stops it', async (t) => {
      await codeOk(t, u, 'sc-end');
      const start = clock.now();
      const mid = await scheduleOne(t, u, { code_name: 'sc-end', run_every: 60, end_at: new Date(start.getTime() + 150_000).toISOString() });
      const edge = await scheduleOne(t, u, { code_name: 'sc-end', run_every: 60, end_at: new Date(start.getTime() + 2 * MIN).toISOString() });
      for (let i = 0; i < 3; i++) {
        t.equal(await fire(), 2, `period ${i}`);
        clock.advance(MIN);
      }
      for (const id of [mid, edge]) {
        const s = await getSchedule(t, u, id);
        t.equal(s.status, 'complete');
        t.equal(s.msg, 'Reached end_at.');
        t.equal(s.run_count, 3);
        t.notOk('next_start' in s);
      }
      for (let i = 0; i < 3; i++) {
        t.equal(await fire(), 0, 'never after end_at');
        clock.advance(MIN);
      }
      t.equal((await tasksOf(api, mid)).length, 3);
      t.equal((await tasksOf(api, edge)).length, 3, 'a period ending exactly at end_at still runs');
    });

    t.test('without run_every: fires once, at start_at', async (t) => {
      await codeOk(t, u, 'sc-once');
      const at = new Date(clock.now().getTime() + 5 * MIN);
      const id = await scheduleOne(t, u, { code_name: 'sc-once', payload: 'once', start_at: at.toISOString() });
      t.equal(await fire(), 0, 'not before start_at');
      t.equal((await getSchedule(t, u, id)).next_start, at.toISOString());
      clock.set(at);
      t.equal(await fire(), 1);
      const s = await getSchedule(t, u, id);
      t.equal(s.status, 'complete');
      t.equal(s.run_count, 1);
      t.equal(s.last_run_time, at.toISOString());
      t.notOk('next_start' in s);
      for (let i = 0; i < 3; i++) {
        clock.advance(MIN);
        t.equal(await fire(), 0);
      }
      t.equal((await tasksOf(api, id)).length, 1);
    });

    t.test('fired tasks are ordinary queued tasks with the schedule settings', async (t) => {
      const c = await codeOk(t, u, 'sc-task');
      const cluster = `sched-${engine}`;
      const id = await scheduleOne(t, u, {
        code_name: 'sc-task',
        payload: '{"from":"schedule"}',
        priority: 2,
        cluster,
        timeout: 120,
        name: 'nightly',
        delay: 30,
        run_every: 3600,
      });
      const firedAt = clock.now();
      t.equal(await fire(), 1);
      const [task] = await tasksOf(api, id);
      t.ok(task);
      const g = await u.project('GET', `/tasks/${task!.id}`);
      t.equal(g.status, 200, g.text);
      t.same(g.body, {
        id: task!.id,
        project_id: u.projectId,
        code_id: c.id,
        code_name: 'sc-task',
        code_rev: '1',
        code_history_id: c.latest_history_id,
        status: 'queued',
        msg: `delayed until ${new Date(firedAt.getTime() + 30_000).toISOString()}`,
        priority: 2,
        timeout: 120,
        delay: 30,
        payload: '{"from":"schedule"}',
        cluster,
        label: 'nightly',
        schedule_id: id,
        retry_count: 0,
        log_size: 0,
        created_at: firedAt.toISOString(),
        updated_at: firedAt.toISOString(),
      });
      // listed among the project's tasks too
      const l = await u.project('GET', '/tasks', { query: { code_name: 'sc-task' } });
      t.same(l.body.tasks.map((x: any) => [x.id, x.schedule_id]), [[task!.id, id]]);
      // the schedule's delay holds it back like any delayed task
      const eligible = () => claimableIds(api.store, cluster, 10);
      t.same(await eligible(), []);
      clock.advance(29_999);
      t.same(await eligible(), []);
      clock.advance(1);
      t.same(await eligible(), [task!.id]);
      // a new revision uploaded since creating the schedule is what the next task runs
      const c2 = await codeOk(t, u, 'sc-task');
      clock.advance(3600_000);
      t.equal(await fire(), 1);
      const tasks = await tasksOf(api, id);
      t.equal(tasks.length, 2);
      t.match(tasks[1], { code_rev: 2, code_revision_id: c2.latest_history_id, schedule_id: id });
    });

    t.test('a schedule whose code package was deleted counts an error and queues nothing', async (t) => {
      const c = await codeOk(t, u, 'sc-gone');
      const start = clock.now();
      const id = await scheduleOne(t, u, { code_name: 'sc-gone', run_every: 60, run_times: 2 });
      const del = await u.project('DELETE', `/codes/${c.id}`, { json: {} });
      t.equal(del.status, 200, del.text);
      const tasksBefore = (await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks')).rows[0]!.n;
      t.equal(await fire(), 1, 'the due schedule was handled');
      t.equal(await fire(), 0);
      t.same(await tasksOf(api, id), []);
      t.equal((await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks')).rows[0]!.n, tasksBefore, 'no task at all');
      let s = await getSchedule(t, u, id);
      t.equal(s.error_count, 1);
      t.equal(s.run_count, 0, 'run_count counts queued tasks');
      t.notOk('last_run_time' in s, 'never ran');
      t.match(s.msg, /sc-gone/);
      t.equal(s.status, 'scheduled', 'it keeps its schedule');
      t.equal(s.next_start, new Date(start.getTime() + MIN).toISOString(), 'and moves on to the next period');
      clock.advance(MIN);
      t.equal(await fire(), 1);
      s = await getSchedule(t, u, id);
      t.equal(s.error_count, 2);
      t.equal(s.run_count, 0);
      t.equal(s.status, 'scheduled', 'errors do not use up run_times');

      // the code comes back under the same name: the next period queues a task
      await codeOk(t, u, 'sc-gone');
      clock.advance(MIN);
      t.equal(await fire(), 1);
      s = await getSchedule(t, u, id);
      t.equal(s.run_count, 1);
      t.equal(s.error_count, 2);
      t.notOk('msg' in s, 'the error message is cleared by a good run');
      t.equal((await tasksOf(api, id)).length, 1);

      // a one-off schedule whose code is gone ends, with the error
      const c2 = await codeOk(t, u, 'sc-gone-once');
      const once = await scheduleOne(t, u, { code_name: 'sc-gone-once' });
      t.equal((await u.project('DELETE', `/codes/${c2.id}`)).status, 200);
      t.equal(await fire(), 1);
      s = await getSchedule(t, u, once);
      t.equal(s.status, 'complete');
      t.equal(s.error_count, 1);
      t.equal(s.run_count, 0);
      t.match(s.msg, /sc-gone-once.*not found/);
      t.same(await tasksOf(api, once), []);
    });

    t.test('cancel: status cancelled, never fires after', async (t) => {
      await codeOk(t, u, 'sc-cancel');
      const id = await scheduleOne(t, u, { code_name: 'sc-cancel', run_every: 60 });
      t.equal(await fire(), 1);
      clock.advance(1000);
      let r = await u.project('POST', `/schedules/${id}/cancel`);
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Cancelled' });
      const s = await getSchedule(t, u, id);
      t.equal(s.status, 'cancelled');
      t.notOk('next_start' in s);
      t.equal(s.run_count, 1);
      t.equal(s.updated_at, clock.now().toISOString());
      for (let i = 0; i < 3; i++) {
        clock.advance(MIN);
        t.equal(await fire(), 0);
      }
      t.equal((await tasksOf(api, id)).length, 1);
      // again: still cancelled, 200 (and a {} JSON body is fine)
      r = await u.project('POST', `/schedules/${id}/cancel`, { json: {} });
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Cancelled' });
      t.equal((await getSchedule(t, u, id)).status, 'cancelled');
      // cancelled before it ever ran
      const future = await scheduleOne(t, u, { code_name: 'sc-cancel', start_at: new Date(clock.now().getTime() + MIN).toISOString() });
      t.equal((await u.project('POST', `/schedules/${future}/cancel`)).status, 200);
      clock.advance(2 * MIN);
      t.equal(await fire(), 0);
      t.same(await tasksOf(api, future), []);
      isError(t, await u.project('POST', '/schedules/0123456789abcdef01234567/cancel'), 404, /Schedule not found/);
    });

    t.test('concurrent fireDue calls: one task per schedule per period', async (t) => {
      await codeOk(t, u, 'sc-race');
      const start = clock.now();
      const ids: string[] = [];
      const r = await schedule(u, Array.from({ length: 12 }, (_, i) => ({ code_name: 'sc-race', payload: `s${i}`, run_every: 60 })));
      t.equal(r.status, 200, r.text);
      ids.push(...r.body.schedules.map((s: { id: string }) => s.id));
      const periods = 4;
      for (let p = 0; p < periods; p++) {
        const now = clock.now();
        const counts = await Promise.all(Array.from({ length: 4 }, () => api.store.schedules.fireDue(now)));
        t.equal(counts.reduce((a, b) => a + b, 0), ids.length, `period ${p}: each schedule fired by exactly one caller`);
        t.equal(await api.store.schedules.fireDue(now), 0);
        clock.advance(MIN);
      }
      const rows = (
        await api.store.db.query<{ schedule_id: string; n: number; periods: number }>(
          `SELECT schedule_id, count(*)::int AS n, count(DISTINCT scheduled_for)::int AS periods
           FROM tasks WHERE schedule_id = ANY($1::text[]) GROUP BY schedule_id`,
          [ids],
        )
      ).rows;
      t.equal(rows.length, ids.length);
      for (const row of rows) t.same({ n: row.n, periods: row.periods }, { n: periods, periods }, row.schedule_id);
      for (const id of ids) {
        const s = await getSchedule(t, u, id);
        t.equal(s.run_count, periods);
        t.equal(s.next_start, new Date(start.getTime() + periods * MIN).toISOString());
      }
    });
  });

  t.test(`the schedule loop fires on its own on ${engine}`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: { GANTRY_SCHEDULER_TICK_MS: '50' } });
    const u = api.user;
    await codeOk(t, u, 'sc-loop');
    const id = await scheduleOne(t, u, { code_name: 'sc-loop', payload: 'from the loop', start_at: new Date().toISOString(), run_every: 3600 });
    const deadline = Date.now() + 15_000;
    let tasks: any[] = [];
    while (Date.now() < deadline) {
      tasks = (await u.project('GET', '/tasks')).body.tasks;
      if (tasks.length > 0) break;
      await new Promise((r) => setTimeout(r, 20)); // polling for the event, bounded by the deadline
    }
    t.equal(tasks.length, 1, 'a task appeared before the deadline');
    t.match(tasks[0], { code_name: 'sc-loop', schedule_id: id, status: 'queued' });
    const g = await u.project('GET', `/tasks/${tasks[0].id}`);
    t.equal(g.body.payload, 'from the loop');
    const s = await getSchedule(t, u, id);
    t.equal(s.run_count, 1);
    t.equal(s.status, 'scheduled');
    t.ok(new Date(s.next_start).getTime() > Date.now(), 'next start is in the future');
  });
}
