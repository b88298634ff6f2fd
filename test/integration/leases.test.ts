// The lease store on both engines, in virtual time: claims (priority, ageing, round-robin,
// paused, delay, max_concurrency), the lease state machine, fencing, retries, and the sweeper.
import t from 'tap';
import { ManualClock } from '../../lib/clock.ts';
import type { Store } from '../../control-plane/store/index.ts';
import type { RunnerRef } from '../../control-plane/store/leases.ts';
import { ENGINES, freshStore } from '../helpers/db.ts';

const CLAIM = { acceptDeadlineMs: 10_000, ageingS: 600 };
const CFG = { leaseTtlMs: 60_000, runnerLossBudget: 2 };

async function setup(store: Store, cluster: string) {
  const u = await store.accounts.createUser(`u-${cluster}-${Math.random()}@x`);
  const p = await store.accounts.createProject(u.id, 'p');
  const { cluster: c } = await store.clusters.create(cluster);
  const runner = await store.runners.connect(
    { runnerId: `r-${cluster}`, clusterId: c.id, bootId: 'b', hostname: 'h', agentVersion: '1', dockerVersion: '1', instanceId: '', slots: 4, memoryMb: 2048 },
    's1',
    'server',
  );
  const ref: RunnerRef = { id: runner!.id, epoch: runner!.session_epoch, cluster };
  const code = async (name: string, extra: Record<string, unknown> = {}) => store.codes.upload(p.id, name, { image: 'busybox', ...extra });
  const queue = async (c: Awaited<ReturnType<typeof code>>, o: { priority?: number; delay?: number; n?: number; payload?: string } = {}) =>
    store.tasks.queue(
      Array.from({ length: o.n ?? 1 }, (_, i) => ({
        projectId: p.id, codeId: c.id, codeName: c.name, revisionId: c.latest_revision_id, rev: c.rev,
        retries: c.retries, retriesDelay: c.retries_delay, payload: o.payload ?? `${c.name}-${i}`,
        priority: o.priority ?? 0, cluster, timeout: 60, delay: o.delay ?? 0, label: null,
      })),
    );
  return { p, ref, code, queue };
}

const status = async (store: Store, id: string) => (await store.db.query<{ status: string; msg: string | null }>('SELECT status, msg FROM tasks WHERE id = $1', [id])).rows[0]!;

for (const engine of ENGINES) {
  t.test(`leases on ${engine}`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 5, 1));
    const store = await freshStore(t, engine, clock);

    t.test('priority first, round-robin across packages, paused and delayed skipped', async (t) => {
      const { ref, code, queue } = await setup(store, 'c1');
      const a = await code('a');
      const b = await code('b');
      const paused = await code('paused');
      await queue(a, { n: 3, priority: 0 });
      await queue(b, { n: 3, priority: 0 });
      const [hi] = await queue(b, { priority: 2 });
      const [delayed] = await queue(a, { priority: 2, delay: 30 });
      await queue(paused, { priority: 2 });
      await store.codes.setPaused(paused.project_id, paused.id, true);
      clock.advance(1);
      const offers = await store.leases.claim(ref, 4, CLAIM);
      t.equal(offers[0]!.task_id, hi, 'priority 2 first');
      t.same(offers.slice(1).map((o) => o.code_name), ['a', 'b', 'a'], 'then round-robin across packages');
      t.notOk(offers.some((o) => o.task_id === delayed), 'a delayed task is not offered before its time');
      t.notOk(offers.some((o) => o.code_name === 'paused'), 'a paused package is not offered');
      t.ok(offers.every((o) => o.attempt === 1 && o.image === 'busybox'), 'offers carry attempt and code');
      clock.advance(30_000);
      const next = await store.leases.claim(ref, 1, CLAIM);
      t.equal(next[0]!.task_id, delayed, 'the delayed task once eligible, with its priority');
    });

    t.test('ageing: a long-waiting priority 0 task overtakes fresh priority 1 tasks', async (t) => {
      const { ref, code, queue } = await setup(store, 'c2');
      const c = await code('age');
      const [old] = await queue(c, { priority: 0 });
      clock.advance(1_300_000); // > 2 ageing steps: effectively priority 2
      await queue(c, { priority: 1, n: 3 });
      const offers = await store.leases.claim(ref, 1, CLAIM);
      t.equal(offers[0]!.task_id, old);
    });

    t.test('max_concurrency counts live leases, across claims', async (t) => {
      const { ref, code, queue } = await setup(store, 'c3');
      const c = await code('limited', { max_concurrency: 2 });
      await queue(c, { n: 5 });
      const first = await store.leases.claim(ref, 5, CLAIM);
      t.equal(first.length, 2, 'two admitted');
      t.equal((await store.leases.claim(ref, 5, CLAIM)).length, 0, 'none while both slots are held');
      await store.leases.release(first[0]!.lease_id, 1, ref.id, 'rejected');
      const again = await store.leases.claim(ref, 5, CLAIM);
      t.equal(again.length, 1, 'a released slot admits one more');
    });

    t.test('a package at its limit does not block the head of the queue', async (t) => {
      const { ref, code, queue } = await setup(store, 'c10');
      const busy = await code('busy', { max_concurrency: 1 });
      const other = await code('other');
      await queue(busy, { n: 300, priority: 2 });
      clock.advance(1);
      const [otherTask] = await queue(other, { priority: 0 });
      clock.advance(1);
      t.equal((await store.leases.claim(ref, 1, CLAIM)).length, 1, 'the limited package gets its one slot');
      const next = await store.leases.claim(ref, 5, CLAIM);
      t.same(next.map((o) => o.task_id), [otherTask], "the other package's task is offered past the blocked backlog");
    });

    t.test('concurrent claims never over-admit the last slot', async (t) => {
      const { ref, code, queue } = await setup(store, 'c4');
      const c = await code('race', { max_concurrency: 3 });
      await queue(c, { n: 20 });
      const results = await Promise.all(Array.from({ length: 8 }, () => store.leases.claim(ref, 2, CLAIM)));
      t.equal(results.flat().length, 3, 'exactly the limit admitted');
      t.equal(new Set(results.flat().map((o) => o.task_id)).size, 3, 'no task offered twice');
    });

    t.test('the lease lifecycle: accept, start, complete; duplicates and stale results', async (t) => {
      const { ref, code, queue } = await setup(store, 'c5');
      const c = await code('life');
      const [id] = await queue(c);
      const [o] = await store.leases.claim(ref, 1, CLAIM);
      t.equal((await status(store, id!)).status, 'queued', 'still queued while offered');
      t.ok(await store.leases.accept(o!.lease_id, 1, ref.id, CFG.leaseTtlMs));
      t.notOk(await store.leases.accept(o!.lease_id, 1, 'someone-else', CFG.leaseTtlMs), 'fenced by runner');
      t.ok(await store.leases.started(o!.lease_id, 1, ref.id, 'ctr', clock.now(), CFG.leaseTtlMs));
      t.equal((await status(store, id!)).status, 'running');
      const done = { leaseId: o!.lease_id, attempt: 1, outcome: 'succeeded' as const, exitCode: 0, oomKilled: false, msg: '', startedAt: clock.now().getTime(), finishedAt: clock.now().getTime() + 5 };
      t.equal(await store.leases.complete({ ...done, attempt: 2 }, ref.id, CFG), 'stale', 'a wrong attempt is stale');
      t.equal(await store.leases.complete(done, ref.id, CFG), 'recorded');
      t.equal(await store.leases.complete(done, ref.id, CFG), 'duplicate');
      t.equal((await status(store, id!)).status, 'complete');
      const lease = await store.leases.get(o!.lease_id);
      t.match(lease, { state: 'done', outcome: 'complete' });
    });

    t.test('errors spend the user-visible retries as new linked tasks', async (t) => {
      const { ref, code, queue } = await setup(store, 'c6');
      const c = await code('flaky', { retries: 1, retries_delay: 5 });
      const [id] = await queue(c);
      const [o] = await store.leases.claim(ref, 1, CLAIM);
      await store.leases.started(o!.lease_id, 1, ref.id, 'ctr', clock.now(), CFG.leaseTtlMs);
      await store.leases.complete({ leaseId: o!.lease_id, attempt: 1, outcome: 'failed', exitCode: 3, oomKilled: false, msg: 'exit code 3', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
      t.match(await status(store, id!), { status: 'error', msg: 'exit code 3' });
      const retry = (await store.db.query<{ id: string; original_task_id: string; retry_count: number; retries_left: number; eligible_at: Date }>(
        'SELECT * FROM tasks WHERE original_task_id = $1', [id])).rows;
      t.equal(retry.length, 1, 'one linked retry');
      t.match(retry[0], { retry_count: 1, retries_left: 0 });
      t.equal(retry[0]!.eligible_at.getTime(), clock.now().getTime() + 5000, 'after retries_delay');
    });

    t.test('runner errors requeue the same task within the internal budget, then error', async (t) => {
      const { ref, code, queue } = await setup(store, 'c7');
      const c = await code('pullfail');
      const [id] = await queue(c);
      for (let i = 1; i <= 3; i++) {
        const [o] = await store.leases.claim(ref, 1, CLAIM);
        t.equal(o!.task_id, id);
        t.equal(o!.attempt, i, `attempt ${i}`);
        await store.leases.complete({ leaseId: o!.lease_id, attempt: i, outcome: 'runner_error', exitCode: -1, oomKilled: false, msg: 'image pull failed', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
      }
      t.match(await status(store, id!), { status: 'error', msg: /image pull failed/ }, 'budget of 2 spent: error');
    });

    t.test('the sweeper: expired offers requeue; silent runners lose leases; budget then killed', async (t) => {
      const { ref, code, queue } = await setup(store, 'c8');
      const c = await code('lost');
      const [id] = await queue(c);
      let [o] = await store.leases.claim(ref, 1, CLAIM);
      clock.advance(CLAIM.acceptDeadlineMs + 1);
      const swept = await store.leases.sweep(CFG);
      t.ok(swept.expiredOffers >= 1, 'the offer expired (with any left by earlier subtests)');
      t.match(await status(store, id!), { status: 'queued' }, 'an unaccepted offer goes back to the queue');
      for (let i = 0; i < 3; i++) {
        [o] = await store.leases.claim(ref, 1, CLAIM);
        await store.leases.accept(o!.lease_id, o!.attempt, ref.id, CFG.leaseTtlMs);
        await store.leases.started(o!.lease_id, o!.attempt, ref.id, 'c', clock.now(), CFG.leaseTtlMs);
        clock.advance(CFG.leaseTtlMs - 1);
        t.same(await store.leases.renew(ref.id, [{ leaseId: o!.lease_id, attempt: o!.attempt }], CFG.leaseTtlMs), [], 'a beat renews');
        clock.advance(CFG.leaseTtlMs + 1);
        await store.leases.sweep(CFG);
      }
      t.match(await status(store, id!), { status: 'killed', msg: /runner lost/ });
      const stale = await store.leases.complete({ leaseId: o!.lease_id, attempt: o!.attempt, outcome: 'succeeded', exitCode: 0, oomKilled: false, msg: '', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
      t.equal(stale, 'stale', "the lost runner's late result is stale");
      t.same(await store.leases.renew(ref.id, [{ leaseId: o!.lease_id, attempt: o!.attempt }], CFG.leaseTtlMs), [o!.lease_id], 'its beat names the lease to revoke');
    });

    t.test('cancel of a running task is pending for its runner; a reclaim then ends it cancelled', async (t) => {
      const { p, ref, code, queue } = await setup(store, 'c9');
      const c = await code('cx');
      const [id] = await queue(c);
      const [o] = await store.leases.claim(ref, 1, CLAIM);
      await store.leases.started(o!.lease_id, 1, ref.id, 'c', clock.now(), CFG.leaseTtlMs);
      await store.tasks.cancel(p.id, id!);
      t.same(await store.leases.pendingCancels(ref.id), [{ lease_id: o!.lease_id, attempt: 1 }]);
      await store.leases.markCancelSent(o!.lease_id);
      t.same(await store.leases.pendingCancels(ref.id), []);
      clock.advance(CFG.leaseTtlMs + 1);
      await store.leases.sweep(CFG);
      t.match(await status(store, id!), { status: 'cancelled' });
    });

    t.test('queueAndGrant: a new task goes straight to a runner only when nothing stands before it', async (t) => {
      const { p, ref, code } = await setup(store, 'c-hand');
      const newTask = (c: Awaited<ReturnType<typeof code>>, o: { delay?: number; priority?: number } = {}) => ({
        projectId: p.id, codeId: c.id, codeName: c.name, revisionId: c.latest_revision_id, rev: c.rev,
        retries: c.retries, retriesDelay: c.retries_delay, payload: 'hand', priority: o.priority ?? 0,
        cluster: 'c-hand', timeout: 60, delay: o.delay ?? 0, label: null,
      });
      const lease = async (taskId: string) =>
        (await store.db.query<{ state: string; attempt: number; runner_id: string }>('SELECT state, attempt, runner_id FROM task_leases WHERE task_id = $1', [taskId])).rows;
      const task = async (taskId: string) =>
        (await store.db.query<{ status: string; lease_id: string | null; attempt: number }>('SELECT status, lease_id, attempt FROM tasks WHERE id = $1', [taskId])).rows[0]!;

      const a = await code('hand-a');
      const granted = await store.leases.queueAndGrant(newTask(a), ref, CLAIM.acceptDeadlineMs);
      t.ok(granted.offer, 'an idle queue: granted in the insert');
      t.equal(granted.offer!.task_id, granted.taskId);
      t.match(granted.offer, { attempt: 1, image: 'busybox', payload: 'hand', max_concurrency: null, project_max_running: null });
      t.same(await lease(granted.taskId), [{ state: 'offered', attempt: 1, runner_id: ref.id }], 'its lease is offered to the runner');
      t.match(await task(granted.taskId), { status: 'queued', lease_id: granted.offer!.lease_id, attempt: 1 });
      t.same(await store.leases.claim(ref, 4, CLAIM), [], 'a claim does not offer it again');

      const delayed = await store.leases.queueAndGrant(newTask(a, { delay: 30 }), ref, CLAIM.acceptDeadlineMs);
      t.notOk(delayed.offer, 'a delayed task is only queued');
      t.match(await task(delayed.taskId), { status: 'queued', lease_id: null, attempt: 0 });
      t.same(await lease(delayed.taskId), []);

      const limited = await code('hand-limited', { max_concurrency: 5 });
      t.notOk((await store.leases.queueAndGrant(newTask(limited), ref, CLAIM.acceptDeadlineMs)).offer, 'a package with a limit goes through the claim');
      const paused = await code('hand-paused');
      await store.codes.setPaused(p.id, paused.id, true);
      t.notOk((await store.leases.queueAndGrant(newTask(paused), ref, CLAIM.acceptDeadlineMs)).offer, 'a paused package is only queued');
      await store.codes.setPaused(p.id, paused.id, false);

      // Now eligible tasks wait (the limited one and the unpaused one): a new task does not pass them.
      const behind = await store.leases.queueAndGrant(newTask(a, { priority: 2 }), ref, CLAIM.acceptDeadlineMs);
      t.notOk(behind.offer, 'eligible tasks are waiting: the new one queues behind them for the claim');
      const offers = await store.leases.claim(ref, 8, CLAIM);
      t.equal(offers[0]!.task_id, behind.taskId, 'and the claim orders it by priority as usual');
      t.equal(offers.length, 3, 'the waiting ones are claimed with it');

      await store.accounts.setProjectLimit(p.id, 100);
      t.notOk((await store.leases.queueAndGrant(newTask(a), ref, CLAIM.acceptDeadlineMs)).offer, 'a project with a limit goes through the claim');
      await store.accounts.setProjectLimit(p.id, null);
    });
  });
}
