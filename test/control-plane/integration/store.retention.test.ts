// Retention on both engines, in virtual time: which finished tasks, logs, leases and schedules
// a pass deletes and which it never touches, retry chains, bounded batches, disabled
// categories, a pass stopped between batches, and a stale leader's batch refused.
import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { ControlPlaneMetrics } from '../../../control-plane/metrics.ts';
import { retentionJob } from '../../../control-plane/scheduler/retention.ts';
import type { RetentionSettings } from '../../../control-plane/config.ts';
import { checkFence, FencedError, type Fence } from '../../../control-plane/store/fence.ts';
import type { Store } from '../../../control-plane/store/index.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';
import { DAY, captureLog, danglingLinks, deletedByKind, existing, rowsOf, taskWorld } from '../../helpers/retention.ts';

const FENCE: Fence = { term: 1, holder: 'test' };
const SETTINGS: RetentionSettings = {
  tasksDays: 30, schedulesDays: 30, batch: 1000, pauseMs: 0, intervalS: 3600,
  queueLoadDays: 0, queueLoadHourlyDays: 0, statsRawDays: 0, statsMinuteDays: 0, statsHourDays: 0,
};
// (Recorded machine stats and their retention by level: api.workers.test.ts; their series: here.)
const FINAL = ['complete', 'error', 'cancelled', 'killed', 'timeout'];

function job(store: Store, clock: ManualClock, settings: Partial<RetentionSettings> = {}, onLine?: (l: Record<string, any>) => void) {
  const metrics = new ControlPlaneMetrics();
  const { log, lines } = captureLog(onLine);
  const j = retentionJob({ store, clock, settings: { ...SETTINGS, ...settings }, metrics, log });
  const pass = (signal = new AbortController().signal, fence = FENCE) => j.tick(fence, signal);
  const summaries = () => lines.filter((l) => l.msg === 'retention pass' || l.msg === 'retention pass stopped');
  const batches = () => lines.filter((l) => l.msg === 'retention batch');
  return { j, pass, metrics, lines, summaries, batches };
}

/** A schedule with a status and a last update `updatedAt`. */
async function schedule(store: Store, projectId: string, codeName: string, status: string, updatedAt: Date): Promise<string> {
  const [id] = await store.schedules.create(projectId, [
    { codeName, name: null, payload: '', priority: 0, timeout: 60, cluster: 'default', taskDelay: 0, startAt: updatedAt, runEvery: 3600, endAt: null, runTimes: null },
  ]);
  await store.db.query('UPDATE schedules SET status = $2, updated_at = $3 WHERE id = $1', [id, status, updatedAt]);
  return id!;
}

const scheduleIds = async (store: Store, ids: string[]) =>
  (await store.db.query<{ id: string }>('SELECT id FROM schedules WHERE id = ANY($1::text[]) ORDER BY id', [ids])).rows.map((r) => r.id);

for (const engine of ENGINES) {
  t.test(`retention on ${engine}`, async (t) => {
    t.test('a pass deletes exactly the old finished tasks with their chunks and leases, and old finished schedules; nothing live', async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const now = clock.now().getTime();
      const ago = (days: number, ms = 0) => new Date(now - days * DAY + ms);
      const w = await taskWorld(store, 'a');
      const gone: string[] = [];
      const kept: string[] = [];

      // Every final status, old (deleted), past the cutoff by a minute (deleted), within it by a minute and recent (kept).
      for (const status of FINAL) {
        const [old, edgeOut, edgeIn, recent] = await w.queue(4);
        await w.shape(old!, { status, endedAt: ago(40), chunks: 3, leases: 2 });
        await w.shape(edgeOut!, { status, endedAt: ago(30, -60_000), chunks: 1 });
        await w.shape(edgeIn!, { status, endedAt: ago(30, 60_000), chunks: 2 });
        await w.shape(recent!, { status, endedAt: ago(5), chunks: 2 });
        gone.push(old!, edgeOut!);
        kept.push(edgeIn!, recent!);
      }
      // Live tasks, however old they are: queued (created long ago), running with a live lease,
      // and a finished old task whose lease is still live.
      clock.set(ago(60));
      const [queued, running, leased] = await w.queue(3);
      clock.set(now);
      await w.shape(running!, { status: 'running', chunks: 2, liveLease: true });
      await w.shape(leased!, { status: 'complete', endedAt: ago(40), chunks: 1, liveLease: true });
      kept.push(queued!, running!, leased!);

      // Retry chains: all old and finished (deleted whole); one whose retry is queued; one
      // whose last retry is recent; one retried twice by hand, its second retry running.
      const [a1] = await w.queue(1);
      await w.shape(a1!, { status: 'error', endedAt: ago(50), chunks: 1 });
      const a2 = await w.retry(a1!);
      await w.shape(a2, { status: 'error', endedAt: ago(45), chunks: 1 });
      const a3 = await w.retry(a2);
      await w.shape(a3, { status: 'complete', endedAt: ago(41), chunks: 1 });
      gone.push(a1!, a2, a3);
      const [b1] = await w.queue(1);
      await w.shape(b1!, { status: 'error', endedAt: ago(50), chunks: 1 });
      const b2 = await w.retry(b1!);
      const [c1] = await w.queue(1);
      await w.shape(c1!, { status: 'timeout', endedAt: ago(50), chunks: 1 });
      const c2 = await w.retry(c1!);
      await w.shape(c2, { status: 'complete', endedAt: ago(2), chunks: 1 });
      const [d1] = await w.queue(1);
      await w.shape(d1!, { status: 'complete', endedAt: ago(50), chunks: 1 });
      const d2 = await w.retry(d1!);
      await w.shape(d2, { status: 'complete', endedAt: ago(45), chunks: 1 });
      const d3 = await w.retry(d1!);
      await w.shape(d3, { status: 'running', chunks: 1, liveLease: true });
      kept.push(b1!, b2, c1!, c2, d1!, d2, d3);

      // Schedules: finished and old (deleted), one whose fired task is kept, one whose fired
      // task goes in the same pass, an active one, a recently finished one.
      const sOld = await schedule(store, w.project.id, w.code.name, 'complete', ago(40));
      const sCancelled = await schedule(store, w.project.id, w.code.name, 'cancelled', ago(40));
      const sTaskKept = await schedule(store, w.project.id, w.code.name, 'complete', ago(40));
      const sTaskGone = await schedule(store, w.project.id, w.code.name, 'complete', ago(40));
      const sActive = await schedule(store, w.project.id, w.code.name, 'scheduled', ago(40));
      const sRecent = await schedule(store, w.project.id, w.code.name, 'cancelled', ago(3));
      await store.db.query('UPDATE tasks SET schedule_id = $2, scheduled_for = $3 WHERE id = $1', [kept[1], sTaskKept, ago(41)]);
      await store.db.query('UPDATE tasks SET schedule_id = $2, scheduled_for = $3 WHERE id = $1', [gone[0], sTaskGone, ago(41)]);
      const schedules = [sOld, sCancelled, sTaskKept, sTaskGone, sActive, sRecent];

      const before = await rowsOf(store, kept);
      const goneRows = await rowsOf(store, gone);
      const r = job(store, clock);
      await r.pass();

      t.same(await existing(store, [...gone, ...kept]), [...kept].sort(), 'exactly the old finished tasks are gone');
      t.same(await rowsOf(store, gone), { chunks: {}, leases: {} }, 'with every log chunk and lease of theirs');
      t.same(await rowsOf(store, kept), before, 'every kept task has all its chunks and leases');
      t.equal(await danglingLinks(store), 0, 'no kept task names a deleted one');
      t.same((await store.tasks.get(w.project.id, b2))?.originalTaskId, b1, "a queued retry's original is kept with it");
      t.same(await scheduleIds(store, schedules), [sTaskKept, sActive, sRecent].sort(), 'old finished schedules are gone unless a kept task names them');
      const sum = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0);
      const want = { tasks: gone.length, log_chunks: sum(goneRows.chunks), leases: sum(goneRows.leases), schedules: 3 };
      t.same(await deletedByKind(r.metrics), want, 'gantry_retention_deleted_total counts every row by kind');
      t.match(r.summaries(), [{ msg: 'retention pass', deleted: want, batches: 2 }], 'one summary: counts and batches');
      t.type(r.summaries()[0]!.ms, 'number', 'and its duration');

      await r.pass();
      t.same(await deletedByKind(r.metrics), want, 'a second pass finds nothing more');

      // 29 days later the recent ones are old too; the live ones still stay.
      clock.advance(29 * DAY);
      await r.pass();
      const left = await existing(store, kept);
      t.same(left, [queued!, running!, leased!, b1!, b2, d1!, d2, d3].sort(), 'later, what has aged goes too (live tasks and their chains stay)');
      t.equal(await danglingLinks(store), 0, 'still no link to a deleted task');
      t.same(await scheduleIds(store, schedules), [sActive], 'and the schedules whose tasks went, or that aged');
    });

    t.test('batches are bounded: at most `batch` rows each, a task whose log is bigger alone, in statements of at most `batch` rows', async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const now = clock.now().getTime();
      const w = await taskWorld(store, 'b');
      const [big, ...ten] = await w.queue(11);
      await w.shape(big!, { status: 'complete', endedAt: new Date(now - 90 * DAY), chunks: 7, leases: 0 });
      for (const [i, id] of ten.entries()) await w.shape(id, { status: 'error', endedAt: new Date(now - (60 - i) * DAY), leases: 0 });
      const sched: string[] = [];
      for (let i = 0; i < 5; i++) sched.push(await schedule(store, w.project.id, w.code.name, 'complete', new Date(now - (40 + i) * DAY)));
      const r = job(store, clock, { batch: 3 });
      await r.pass();
      const tasks = r.batches().filter((b) => b.category === 'tasks');
      t.same(tasks.map((b) => b.deleted.tasks), [1, 3, 3, 3, 1], 'the big task alone, then three, three, three, one');
      t.same(tasks[0]!.deleted, { tasks: 1, log_chunks: 7, leases: 0 }, 'the big task with its seven chunks');
      t.equal(tasks[0]!.statements, 4, 'its chunks in three statements, then the task');
      t.ok(r.batches().every((b) => b.maxRows <= 3), 'no statement deleted more than 3 rows');
      t.ok(tasks.slice(1).every((b) => b.deleted.tasks + b.deleted.log_chunks + b.deleted.leases <= 3), 'no other batch more than 3 rows');
      t.same(r.batches().filter((b) => b.category === 'schedules').map((b) => b.deleted.schedules), [3, 2], 'schedules three, then two');
      t.same(await existing(store, [big!, ...ten]), [], 'all eleven tasks are gone');
      t.same(await scheduleIds(store, sched), [], 'and the five schedules');
      t.same(await deletedByKind(r.metrics), { tasks: 11, log_chunks: 7, schedules: 5 }, 'the counter agrees');
    });

    t.test('a category with 0 days keeps everything of its kind', async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const old = new Date(clock.now().getTime() - 400 * DAY);
      const w = await taskWorld(store, 'c');
      const ids = await w.queue(3);
      for (const id of ids) await w.shape(id, { status: 'complete', endedAt: old, chunks: 1 });
      const s = await schedule(store, w.project.id, w.code.name, 'complete', old);
      const noTasks = job(store, clock, { tasksDays: 0 });
      await noTasks.pass();
      t.same(await existing(store, ids), [...ids].sort(), 'tasks days 0: every task kept');
      t.same(await scheduleIds(store, [s]), [], 'schedules still go');
      const s2 = await schedule(store, w.project.id, w.code.name, 'complete', old);
      const noSchedules = job(store, clock, { schedulesDays: 0 });
      await noSchedules.pass();
      t.same(await existing(store, ids), [], 'tasks go');
      t.same(await scheduleIds(store, [s2]), [s2], 'schedules days 0: the schedule kept');
      const none = job(store, clock, { tasksDays: 0, schedulesDays: 0 });
      await none.pass();
      t.same(none.summaries(), [], 'both 0: no pass at all');
      t.same(await scheduleIds(store, [s2]), [s2], 'still kept');
    });

    t.test('a pass stops between batches when its signal aborts; the next pass finishes, no task half deleted', async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const w = await taskWorld(store, 'd');
      const ids = await w.queue(6);
      for (const id of ids) await w.shape(id, { status: 'complete', endedAt: new Date(clock.now().getTime() - 40 * DAY), chunks: 2, leases: 0 });
      const ctl = new AbortController();
      // Leadership is lost the moment the first batch is logged (committed).
      const r = job(store, clock, { batch: 3 }, (l) => l.msg === 'retention batch' && ctl.abort());
      await r.pass(ctl.signal);
      t.match(r.summaries(), [{ msg: 'retention pass stopped', stopped: 'leadership lost', batches: 1, deleted: { tasks: 1, log_chunks: 2 } }], 'stopped after one batch');
      const left = await existing(store, ids);
      t.equal(left.length, 5, 'one task gone, five left');
      t.same(Object.values((await rowsOf(store, left)).chunks), [2, 2, 2, 2, 2], 'each left with both its chunks');
      const again = job(store, clock, { batch: 3 });
      await again.pass();
      t.same(await existing(store, ids), [], 'the next pass deletes the rest');
    });

    t.test("machine-stats series go once none of their samples is left and no recorder has used them for the raw period", async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const layout = (runnerId: string, md5 = 'aa') => ({ runnerId, clusterId: 'c1', md5, metrics: ['cpu_usage', 'memory_used'], variants: ['', ''] });
      const sample = (seriesId: number, at: Date) => store.series.insert([{ seriesId, ts: at, busy: 0, values: [1, 2] }]);
      const seriesIds = async () => (await store.db.query<{ id: number }>('SELECT id FROM runner_stat_series ORDER BY id')).rows.map((r) => Number(r.id));
      const days = (n: number) => new Date(clock.now().getTime() - n * DAY);
      // Made 10 days ago: a runner gone long since (its samples gone), one gone whose minutes
      // are still kept, one that came back today with the same layout, one still beating.
      clock.set(days(10).getTime());
      const gone = await store.series.resolve(layout('r-gone'));
      const minutes = await store.series.resolve(layout('r-minutes'));
      const back = await store.series.resolve(layout('r-back'));
      const live = await store.series.resolve(layout('r-live'));
      await sample(gone, clock.now());
      clock.set(Date.UTC(2026, 5, 1));
      await store.db.query(`INSERT INTO runner_stats_1m (series_id, ts, n, busy, avg, min, max, last) VALUES ($1, $2, 1, 0, '{1,2}', '{1,2}', '{1,2}', '{1,2}')`, [minutes, days(5)]);
      t.equal(await store.series.resolve(layout('r-back')), back, 'a runner coming back finds its series');
      await sample(live, days(0.001));
      // One made an hour ago that has no sample yet: its recorder is about to write one.
      const fresh = await store.series.resolve(layout('r-fresh'));
      // And one of a layout a live runner left 10 days ago (its samples gone with the raw period).
      clock.set(days(10).getTime());
      const oldLayout = await store.series.resolve(layout('r-live', 'bb'));
      clock.set(Date.UTC(2026, 5, 1));

      const r = job(store, clock, { statsRawDays: 2, statsMinuteDays: 30, statsHourDays: 365, batch: 2 });
      await r.pass();
      t.same(await seriesIds(), [minutes, back, live, fresh].sort((a, b) => a - b), 'the unused series are gone (the first with its raw sample, past 2 days); the rest kept');
      t.notOk((await seriesIds()).includes(oldLayout), "a live runner's old layout goes too");
      t.same(await deletedByKind(r.metrics), { stats_raw: 1, stats_series: 2 }, 'counted');
      t.ok(r.batches().length >= 2, 'in batches of at most 2');
      const keys = await store.series.metricKeys(['c1']);
      t.same(keys.sort(), ['cpu_usage', 'memory_used'], 'metric keys still come from the kept series');

      // A runner coming back after its series went gets a new one, and its samples are read.
      const again = await store.series.resolve(layout('r-gone'));
      t.not(again, gone, 'a new series');
      await sample(again, clock.now());
      t.equal(Number((await store.db.query<{ n: string }>('SELECT count(*) AS n FROM runner_stats_raw WHERE series_id = $1', [again])).rows[0]!.n), 1);
      const off = job(store, clock, { statsRawDays: 0, statsMinuteDays: 0, statsHourDays: 0 });
      clock.set(Date.UTC(2027, 5, 1));
      await off.pass();
      t.equal((await seriesIds()).length, 5, 'raw samples kept for ever (0 days): series too');
    });

    t.test("a stale leader's batch is refused whole", async (t) => {
      const clock = new ManualClock(Date.UTC(2026, 5, 1));
      const store = await freshStore(t, engine, clock);
      const w = await taskWorld(store, 'e');
      const ids = await w.queue(2);
      for (const id of ids) await w.shape(id, { status: 'complete', endedAt: new Date(clock.now().getTime() - 40 * DAY), chunks: 1 });
      const r = job(store, clock);
      await store.db.tx((q) => checkFence(q, { term: 5, holder: 'newer' }));
      await t.rejects(r.pass(undefined, { term: 4, holder: 'older' }), FencedError, 'the pass fails on the fence');
      t.same(await existing(store, ids), [...ids].sort(), 'nothing deleted');
      t.match(r.summaries(), [{ msg: 'retention pass stopped', stopped: /stale/ }], 'the summary says why it stopped');
    });
  });
}
