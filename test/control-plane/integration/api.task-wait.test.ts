/**
 * A queued task says why it waits, in its `msg` (GET of the task and the list): delayed, its
 * package paused, no runner in its cluster, at its package's max_concurrency, offered and
 * starting, or every slot of its cluster busy. The runner is a hand-driven protocol client,
 * so the test decides when it has free slots.
 */
import t from 'tap';
import { startTestApi, uploadCode, type ApiUser } from '../../helpers/api.ts';
import { connectProtocolClient } from '../../helpers/protocol.ts';
import { testCluster, until } from '../../helpers/runner.ts';

const msgOf = async (u: ApiUser, id: string) => (await u.project('GET', `/tasks/${id}`)).body.msg as string | undefined;
const queueOne = async (u: ApiUser, task: Record<string, unknown>) => {
  const r = await u.project('POST', '/tasks', { json: { tasks: [task] } });
  if (r.status !== 200) throw new Error(r.text);
  return r.body.tasks[0].id as string;
};

t.test('a queued task says why it waits', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true });
  const u = api.user;
  const pool = await testCluster(api, 'pool');
  t.equal((await uploadCode(u, { name: 'w', image: 'busybox' })).status, 200);
  t.equal((await uploadCode(u, { name: 'one-at-a-time', image: 'busybox', max_concurrency: 1 })).status, 200);

  const lonely = await queueOne(u, { code_name: 'w', cluster: 'pool' });
  t.equal(await msgOf(u, lonely), 'waiting: no runner is connected in cluster "pool"');
  const listed = (await u.project('GET', '/tasks', { query: { queued: '1' } })).body.tasks.find((x: { id: string }) => x.id === lonely);
  t.equal(listed.msg, 'waiting: no runner is connected in cluster "pool"', 'the list says it too');

  const delayed = await queueOne(u, { code_name: 'w', cluster: 'pool', delay: 3600 });
  t.match(await msgOf(u, delayed), /^delayed until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  // A runner with no free slot: connected, so the wait is for a slot.
  const pc = await connectProtocolClient(t, api, pool, { slots: 1 });
  pc.credit(0);
  await until('the runner is connected', async () => (await msgOf(u, lonely))?.startsWith('waiting for a free runner slot'));
  t.equal(await msgOf(u, lonely), 'waiting for a free runner slot in cluster "pool"');

  const codes = (await u.project('GET', '/codes')).body.codes as { id: string; name: string }[];
  const w = codes.find((c) => c.name === 'w')!;
  t.equal((await u.project('POST', `/codes/${w.id}/pause_task_queue`)).status, 200);
  t.equal(await msgOf(u, lonely), "waiting: the code package's task queue is paused");
  t.equal((await u.project('POST', `/codes/${w.id}/resume_task_queue`)).status, 200);

  // One slot: the limited package's first task is offered (and never accepted here), the second waits for it.
  const first = await queueOne(u, { code_name: 'one-at-a-time', cluster: 'pool', priority: 2 });
  pc.credit(1);
  await pc.next('offer');
  t.equal(await msgOf(u, first), 'offered to a runner, starting');
  const second = await queueOne(u, { code_name: 'one-at-a-time', cluster: 'pool', priority: 2 });
  t.equal(await msgOf(u, second), 'waiting: the code package is at its max_concurrency (1 running)');

  // A msg the task set itself wins.
  t.equal((await u.project('POST', `/tasks/${second}/progress`, { json: { msg: 'mine' } })).status, 200);
  t.equal(await msgOf(u, second), 'mine');
});
