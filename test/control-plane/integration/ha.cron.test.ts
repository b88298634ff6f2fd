/**
 * A cron schedule across a leader failover: two replicas on real PostgreSQL and real etcd,
 * sharing an injected clock; the leader is stopped as an instant comes due, and every
 * instant still queues exactly one task, whoever leads.
 */
import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import type { ControlPlane } from '../../../control-plane/start.ts';
import { replicaRig } from '../../helpers/replicas.ts';
import { until } from '../../helpers/runner.ts';

t.test('a cron schedule fires each instant exactly once across a leader failover', async (t) => {
  const clock = new ManualClock(Date.parse('2026-03-29T00:00:30Z'));
  const { setup, replica } = await replicaRig(t, clock);
  const user = await setup.accounts.createUser(`cron${Date.now()}@example.com`);
  const project = await setup.accounts.createProject(user.id, 'cron');
  await setup.clusters.create('default', { memoryMb: 64 });
  await setup.codes.upload(project.id, 'tick', { image: 'gantry-test/busybox:latest', command: 'true' });
  const [id] = await setup.schedules.create(project.id, [
    { codeName: 'tick', name: null, payload: '', priority: 0, timeout: 60, cluster: 'default', taskDelay: 0, startAt: clock.now(), runEvery: null, cron: '* * * * *', timezone: 'Europe/Berlin', endAt: null, runTimes: null },
  ]);

  const replicas = new Map<string, ControlPlane>();
  for (const name of ['cron-a', 'cron-b']) replicas.set(name, await replica(name, { GANTRY_COORD_TTL_S: '1', GANTRY_SCHEDULER_TICK_MS: '50' }));
  const fired = async () =>
    (await setup.db.query<{ at: Date }>('SELECT scheduled_for AS at FROM tasks WHERE schedule_id = $1 ORDER BY scheduled_for', [id])).rows.map((r) => r.at.toISOString());
  const leader = () => until('a leader', async () => [...replicas.entries()].find(([, cp]) => cp.coord.status().isLeader));

  const [first] = await leader();
  clock.set(Date.parse('2026-03-29T00:01:00Z'));
  await until('the first instant fired', async () => (await fired()).length === 1);

  // The next instant comes due and the leader goes at once: it fired it, or its successor does.
  clock.set(Date.parse('2026-03-29T00:02:00Z'));
  await replicas.get(first)!.stop();
  replicas.delete(first);
  const [second] = await leader();
  t.not(second, first, 'the other replica leads');
  await until('the instant due at the failover fired', async () => (await fired()).length === 2);
  clock.set(Date.parse('2026-03-29T00:03:30Z'));
  await until('the next instant fired', async () => (await fired()).length === 3);
  // Each instant fired once.
  t.same(await fired(), ['2026-03-29T00:01:00.000Z', '2026-03-29T00:02:00.000Z', '2026-03-29T00:03:00.000Z'], 'each instant once, none doubled, none missed');
  const s = (await setup.schedules.get(project.id, id!))!;
  t.match(s, { runCount: 3, nextStart: new Date('2026-03-29T00:04:00Z'), status: 'scheduled' });
});
