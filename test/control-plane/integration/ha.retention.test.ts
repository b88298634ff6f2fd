/**
 * Retention across a leader failover: two replicas on one PostgreSQL, coordinated through
 * etcd. The leader's pass is cut off mid-way by losing its etcd session; the pass stops, the
 * new leader's pass finishes, and in the end exactly the old finished tasks are gone, each
 * whole, and every surviving task has all of its chunks and leases.
 */
import t, { type Test } from 'tap';
import { replicaRig } from '../../helpers/replicas.ts';
import { until } from '../../helpers/runner.ts';
import { DAY, captureLog, danglingLinks, deletedByKind, existing, rowsOf, taskWorld } from '../../helpers/retention.ts';

const OLD = 40;

async function rig(t: Test) {
  const { setup, replica: start } = await replicaRig(t);
  const replica = async (name: string) => {
    const { log, lines } = captureLog();
    const cp = await start(
      name,
      {
        GANTRY_COORD_TTL_S: '2',
        LOG_LEVEL: 'debug',
        // Every old task is 5 rows (itself, 3 chunks, a lease): a batch of 4 rows takes one, then pauses.
        GANTRY_RETENTION_BATCH: '4',
        GANTRY_RETENTION_PAUSE_MS: '150',
      },
      log,
    );
    const summary = (msg: string) => lines.find((l) => l.component === 'retention' && l.msg === msg);
    return { cp, lines, summary };
  };
  return { setup, replica };
}

t.test('a retention pass cut off by a leader failover is finished by the new leader; no task half deleted', async (t) => {
  const r = await rig(t);
  const w = await taskWorld(r.setup, 'ha');
  const now = Date.now();
  const old = await w.queue(30);
  for (const id of old) await w.shape(id, { status: 'complete', endedAt: new Date(now - OLD * DAY), chunks: 3, leases: 1 });
  const recent = await w.queue(6);
  for (const id of recent) await w.shape(id, { status: 'error', endedAt: new Date(now - 2 * DAY), chunks: 3, leases: 1 });
  const live = await w.queue(4);
  await w.shape(live[0]!, { status: 'running', chunks: 3, liveLease: true });
  const kept = [...recent, ...live];
  const keptRows = await rowsOf(r.setup, kept);

  const a = await r.replica('a');
  await until('a leads', async () => a.cp.coord.status().isLeader, 10_000);
  const b = await r.replica('b');
  await until('b knows a leads', async () => b.cp.coord.status().leader === 'a', 10_000);
  await until('a has deleted three tasks', async () => ((await deletedByKind(a.cp.metrics)).tasks ?? 0) >= 3, 20_000);
  t.notOk(a.summary('retention pass'), "a's pass has not finished");

  // Failover: a loses its etcd session (its lease revoked); b is elected.
  await a.cp.coord.stop();
  const stopped = await until('a says its pass stopped', async () => a.summary('retention pass stopped'), 10_000);
  t.equal(stopped.stopped, 'leadership lost', 'stopped because leadership was lost');
  await until('b leads', async () => b.cp.coord.status().isLeader, 10_000);
  const done = await until("b's pass finishes", async () => b.summary('retention pass'), 30_000);

  const byA = (await deletedByKind(a.cp.metrics)).tasks ?? 0;
  const byB = (await deletedByKind(b.cp.metrics)).tasks ?? 0;
  t.ok(byA >= 3 && byA < old.length, `a deleted part of the old tasks (${byA})`);
  t.ok(byB > 0, `b deleted the rest (${byB})`);
  t.equal(byA + byB, old.length, 'together exactly the old ones, none counted twice');
  t.equal(stopped.deleted.tasks, byA, "a's summary counts what it deleted");
  t.equal(done.deleted.tasks, byB, "b's summary counts what it deleted");
  t.same(await existing(r.setup, old), [], 'every old finished task is gone');
  t.same(await rowsOf(r.setup, old), { chunks: {}, leases: {} }, 'with all their chunks and leases');
  t.same(await existing(r.setup, kept), [...kept].sort(), 'every recent and live task is kept');
  t.same(await rowsOf(r.setup, kept), keptRows, 'each with all its chunks and leases');
  t.equal(await danglingLinks(r.setup), 0, 'no task names a deleted one');
  const total = await r.setup.db.query<{ n: number }>('SELECT count(*)::int AS n FROM task_log_chunks');
  t.equal(Number(total.rows[0]!.n), 3 * (recent.length + 1), 'no chunk is left of a deleted task');
});
