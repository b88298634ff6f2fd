// The lease store on both engines, in virtual time: claims (priority, ageing, round-robin,
// paused, delay, max_concurrency), the lease state machine, fencing, retries, and the sweeper.
import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import type { Store } from '../../../control-plane/store/index.ts';
import type { CodeSettings } from '../../../control-plane/store/codes.ts';
import type { RunnerRef } from '../../../control-plane/store/claims.ts';
import type { Completion, LeaseConfig } from '../../../control-plane/store/outcomes.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';

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
  const ref: RunnerRef = { id: runner!.id, epoch: runner!.sessionEpoch, cluster };
  const code = async (name: string, extra: Partial<CodeSettings> = {}) => store.codes.upload(p.id, name, { image: 'busybox', ...extra });
  const queue = async (c: Awaited<ReturnType<typeof code>>, o: { priority?: number; delay?: number; n?: number; payload?: string } = {}) =>
    store.tasks.queue(
      Array.from({ length: o.n ?? 1 }, (_, i) => ({
        projectId: p.id, codeId: c.id, codeName: c.name, revisionId: c.latestRevisionId, rev: c.rev,
        retries: c.retries, retriesDelay: c.retriesDelay, payload: o.payload ?? `${c.name}-${i}`,
        priority: o.priority ?? 0, cluster, timeout: 60, delay: o.delay ?? 0, label: null,
      })),
    );
  return { p, ref, code, queue };
}

// One-lease forms of the store's batched transitions, as a runner's single frame would use them.
const accept = async (store: Store, leaseId: string, attempt: number, runnerId: string, ttlMs: number) =>
  (await store.leases.acceptMany(runnerId, [{ leaseId, attempt }], ttlMs)).has(leaseId);
const started = async (store: Store, leaseId: string, attempt: number, runnerId: string, containerId: string, startedAt: Date, ttlMs: number) =>
  (await store.leases.startedMany(runnerId, [{ leaseId, attempt, containerId, startedAt }], ttlMs)).has(leaseId);
const complete = async (store: Store, c: Completion, runnerId: string, cfg: LeaseConfig) =>
  (await store.outcomes.completeMany(runnerId, [c], cfg)).dispositions[0]!;
/** The sweep's counts (the leases it ended are checked where they matter). */
const sweep = async (store: Store, cfg: LeaseConfig) => {
  const { ended: _, ...counts } = await store.outcomes.sweep(cfg);
  return counts;
};

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
      await store.codes.setPaused(paused.projectId, paused.id, true);
      clock.advance(1);
      const offers = await store.claims.claim(ref, 4, CLAIM);
      t.equal(offers[0]!.taskId, hi, 'priority 2 first');
      t.same(offers.slice(1).map((o) => o.codeName), ['a', 'b', 'a'], 'then round-robin across packages');
      t.notOk(offers.some((o) => o.taskId === delayed), 'a delayed task is not offered before its time');
      t.notOk(offers.some((o) => o.codeName === 'paused'), 'a paused package is not offered');
      t.ok(offers.every((o) => o.attempt === 1 && o.image === 'busybox'), 'offers carry attempt and code');
      clock.advance(30_000);
      const next = await store.claims.claim(ref, 1, CLAIM);
      t.equal(next[0]!.taskId, delayed, 'the delayed task once eligible, with its priority');
    });

    t.test('ageing: a long-waiting priority 0 task overtakes fresh priority 1 tasks', async (t) => {
      const { ref, code, queue } = await setup(store, 'c2');
      const c = await code('age');
      const [old] = await queue(c, { priority: 0 });
      clock.advance(1_300_000); // > 2 ageing steps: effectively priority 2
      await queue(c, { priority: 1, n: 3 });
      const offers = await store.claims.claim(ref, 1, CLAIM);
      t.equal(offers[0]!.taskId, old);
    });

    t.test('max_concurrency counts live leases, across claims', async (t) => {
      const { ref, code, queue } = await setup(store, 'c3');
      const c = await code('limited', { maxConcurrency: 2 });
      await queue(c, { n: 5 });
      const first = await store.claims.claim(ref, 5, CLAIM);
      t.equal(first.length, 2, 'two admitted');
      t.equal((await store.claims.claim(ref, 5, CLAIM)).length, 0, 'none while both slots are held');
      await store.outcomes.release(first[0]!.leaseId, 1, ref.id, 'rejected');
      const again = await store.claims.claim(ref, 5, CLAIM);
      t.equal(again.length, 1, 'a released slot admits one more');
    });

    t.test('a package at its limit does not block the head of the queue', async (t) => {
      const { ref, code, queue } = await setup(store, 'c10');
      const busy = await code('busy', { maxConcurrency: 1 });
      const other = await code('other');
      await queue(busy, { n: 300, priority: 2 });
      clock.advance(1);
      const [otherTask] = await queue(other, { priority: 0 });
      clock.advance(1);
      t.equal((await store.claims.claim(ref, 1, CLAIM)).length, 1, 'the limited package gets its one slot');
      const next = await store.claims.claim(ref, 5, CLAIM);
      t.same(next.map((o) => o.taskId), [otherTask], "the other package's task is offered past the blocked backlog");
    });

    t.test('concurrent claims never over-admit the last slot', async (t) => {
      const { ref, code, queue } = await setup(store, 'c4');
      const c = await code('race', { maxConcurrency: 3 });
      await queue(c, { n: 20 });
      const results = await Promise.all(Array.from({ length: 8 }, () => store.claims.claim(ref, 2, CLAIM)));
      t.equal(results.flat().length, 3, 'exactly the limit admitted');
      t.equal(new Set(results.flat().map((o) => o.taskId)).size, 3, 'no task offered twice');
    });

    t.test('the lease lifecycle: accept, start, complete; duplicates and stale results', async (t) => {
      const { ref, code, queue } = await setup(store, 'c5');
      const c = await code('life');
      const [id] = await queue(c);
      const [o] = await store.claims.claim(ref, 1, CLAIM);
      t.equal((await status(store, id!)).status, 'queued', 'still queued while offered');
      t.ok(await accept(store, o!.leaseId, 1, ref.id, CFG.leaseTtlMs));
      t.notOk(await accept(store, o!.leaseId, 1, 'someone-else', CFG.leaseTtlMs), 'fenced by runner');
      t.ok(await started(store, o!.leaseId, 1, ref.id, 'ctr', clock.now(), CFG.leaseTtlMs));
      t.equal((await status(store, id!)).status, 'running');
      const done = { leaseId: o!.leaseId, attempt: 1, outcome: 'succeeded' as const, exitCode: 0, oomKilled: false, msg: '', startedAt: clock.now().getTime(), finishedAt: clock.now().getTime() + 5 };
      t.equal(await complete(store, { ...done, attempt: 2 }, ref.id, CFG), 'stale', 'a wrong attempt is stale');
      t.equal(await complete(store, done, ref.id, CFG), 'recorded');
      t.equal(await complete(store, done, ref.id, CFG), 'duplicate');
      t.equal((await status(store, id!)).status, 'complete');
      const lease = await store.leases.get(o!.leaseId);
      t.match(lease, { state: 'done', outcome: 'complete' });
    });

    t.test('errors spend the user-visible retries as new linked tasks', async (t) => {
      const { ref, code, queue } = await setup(store, 'c6');
      const c = await code('flaky', { retries: 1, retriesDelay: 5 });
      const [id] = await queue(c);
      const [o] = await store.claims.claim(ref, 1, CLAIM);
      await started(store, o!.leaseId, 1, ref.id, 'ctr', clock.now(), CFG.leaseTtlMs);
      await complete(store, { leaseId: o!.leaseId, attempt: 1, outcome: 'failed', exitCode: 3, oomKilled: false, msg: 'exit code 3', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
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
        const [o] = await store.claims.claim(ref, 1, CLAIM);
        t.equal(o!.taskId, id);
        t.equal(o!.attempt, i, `attempt ${i}`);
        await complete(store, { leaseId: o!.leaseId, attempt: i, outcome: 'runner_error', exitCode: -1, oomKilled: false, msg: 'image pull failed', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
      }
      t.match(await status(store, id!), { status: 'error', msg: /image pull failed/ }, 'budget of 2 spent: error');
    });

    t.test('the sweeper: expired offers requeue; silent runners lose leases; budget then killed', async (t) => {
      const { ref, code, queue } = await setup(store, 'c8');
      const c = await code('lost');
      const [id] = await queue(c);
      let [o] = await store.claims.claim(ref, 1, CLAIM);
      clock.advance(CLAIM.acceptDeadlineMs + 1);
      const swept = await sweep(store, CFG);
      t.ok(swept.expiredOffers >= 1, 'the offer expired (with any left by earlier subtests)');
      t.match(await status(store, id!), { status: 'queued' }, 'an unaccepted offer goes back to the queue');
      for (let i = 0; i < 3; i++) {
        [o] = await store.claims.claim(ref, 1, CLAIM);
        await accept(store, o!.leaseId, o!.attempt, ref.id, CFG.leaseTtlMs);
        await started(store, o!.leaseId, o!.attempt, ref.id, 'c', clock.now(), CFG.leaseTtlMs);
        clock.advance(CFG.leaseTtlMs - 1);
        t.same(await store.leases.renew(ref.id, [{ leaseId: o!.leaseId, attempt: o!.attempt }], CFG.leaseTtlMs), [], 'a beat renews');
        clock.advance(CFG.leaseTtlMs + 1);
        await sweep(store, CFG);
      }
      t.match(await status(store, id!), { status: 'killed', msg: /runner lost/ });
      const stale = await complete(store, { leaseId: o!.leaseId, attempt: o!.attempt, outcome: 'succeeded', exitCode: 0, oomKilled: false, msg: '', startedAt: 0, finishedAt: 0 }, ref.id, CFG);
      t.equal(stale, 'stale', "the lost runner's late result is stale");
      t.same(await store.leases.renew(ref.id, [{ leaseId: o!.leaseId, attempt: o!.attempt }], CFG.leaseTtlMs), [o!.leaseId], 'its beat names the lease to revoke');
    });

    t.test('cancel of a running task is pending for its runner; a reclaim then ends it cancelled', async (t) => {
      const { p, ref, code, queue } = await setup(store, 'c9');
      const c = await code('cx');
      const [id] = await queue(c);
      const [o] = await store.claims.claim(ref, 1, CLAIM);
      await started(store, o!.leaseId, 1, ref.id, 'c', clock.now(), CFG.leaseTtlMs);
      await store.tasks.cancel(p.id, id!);
      t.same(await store.leases.pendingCancels(ref.id), [{ leaseId: o!.leaseId, attempt: 1 }]);
      await store.leases.markCancelSent(o!.leaseId);
      t.same(await store.leases.pendingCancels(ref.id), []);
      clock.advance(CFG.leaseTtlMs + 1);
      await sweep(store, CFG);
      t.match(await status(store, id!), { status: 'cancelled' });
    });

    t.test('cancel of an offered task: its runner is told; the lease ends it cancelled, and Started cannot revive it', async (t) => {
      const { p, ref, code, queue } = await setup(store, 'c9o');
      const c = await code('cxo');
      const [a, b] = await queue(c, { n: 2 });
      const offers = await store.claims.claim(ref, 2, CLAIM);
      t.equal(offers.length, 2);
      t.match(await store.tasks.cancel(p.id, a!), { kind: 'cancelling' }, 'an offered task is cancelled through its runner');
      t.match(await store.tasks.cancel(p.id, b!), { kind: 'cancelling' });
      t.match(await status(store, a!), { status: 'queued' }, 'it stays queued while its lease lives');
      t.same((await store.leases.pendingCancels(ref.id)).map((x) => x.leaseId).sort(), offers.map((o) => o.leaseId).sort(), 'a Cancel is due for both leases');
      // One runner rejects its offer: the task ends cancelled, not back in the queue.
      const oa = offers.find((o) => o.taskId === a)!;
      t.ok(await store.outcomes.release(oa.leaseId, oa.attempt, ref.id, 'rejected'));
      t.match(await status(store, a!), { status: 'cancelled', msg: 'Cancelled by user' }, 'a released lease ends a cancelled task');
      t.same(await store.claims.claim(ref, 5, CLAIM), [], 'and nothing is claimed again');
      // The other had started before it heard: its result decides, as for a running task.
      const ob = offers.find((o) => o.taskId === b)!;
      t.ok(await started(store, ob.leaseId, ob.attempt, ref.id, 'ctr', clock.now(), CFG.leaseTtlMs));
      t.match(await status(store, b!), { status: 'running' });
      const r = await complete(store, { leaseId: ob.leaseId, attempt: ob.attempt, outcome: 'cancelled', exitCode: 137, oomKilled: false, msg: '', startedAt: clock.now().getTime(), finishedAt: clock.now().getTime() + 1 }, ref.id, CFG);
      t.equal(r, 'recorded');
      t.match(await status(store, b!), { status: 'cancelled' });
    });

    t.test('queueAndGrant: a new task goes straight to a runner only when nothing stands before it', async (t) => {
      const { p, ref, code } = await setup(store, 'c-hand');
      const newTask = (c: Awaited<ReturnType<typeof code>>, o: { delay?: number; priority?: number } = {}) => ({
        projectId: p.id, codeId: c.id, codeName: c.name, revisionId: c.latestRevisionId, rev: c.rev,
        retries: c.retries, retriesDelay: c.retriesDelay, payload: 'hand', priority: o.priority ?? 0,
        cluster: 'c-hand', timeout: 60, delay: o.delay ?? 0, label: null,
      });
      const lease = async (taskId: string) =>
        (await store.db.query<{ state: string; attempt: number; runner_id: string }>('SELECT state, attempt, runner_id FROM task_leases WHERE task_id = $1', [taskId])).rows;
      const task = async (taskId: string) =>
        (await store.db.query<{ status: string; lease_id: string | null; attempt: number }>('SELECT status, lease_id, attempt FROM tasks WHERE id = $1', [taskId])).rows[0]!;

      const a = await code('hand-a');
      const granted = await store.claims.queueAndGrant(newTask(a), ref, CLAIM.acceptDeadlineMs);
      t.ok(granted.offer, 'an idle queue: granted in the insert');
      t.equal(granted.offer!.taskId, granted.taskId);
      t.match(granted.offer, { attempt: 1, image: 'busybox', payload: 'hand', max_concurrency: null, project_max_running: null });
      t.same(await lease(granted.taskId), [{ state: 'offered', attempt: 1, runner_id: ref.id }], 'its lease is offered to the runner');
      t.match(await task(granted.taskId), { status: 'queued', lease_id: granted.offer!.leaseId, attempt: 1 });
      t.same(await store.claims.claim(ref, 4, CLAIM), [], 'a claim does not offer it again');

      const delayed = await store.claims.queueAndGrant(newTask(a, { delay: 30 }), ref, CLAIM.acceptDeadlineMs);
      t.notOk(delayed.offer, 'a delayed task is only queued');
      t.match(await task(delayed.taskId), { status: 'queued', lease_id: null, attempt: 0 });
      t.same(await lease(delayed.taskId), []);

      const limited = await code('hand-limited', { maxConcurrency: 5 });
      t.notOk((await store.claims.queueAndGrant(newTask(limited), ref, CLAIM.acceptDeadlineMs)).offer, 'a package with a limit goes through the claim');
      const paused = await code('hand-paused');
      await store.codes.setPaused(p.id, paused.id, true);
      t.notOk((await store.claims.queueAndGrant(newTask(paused), ref, CLAIM.acceptDeadlineMs)).offer, 'a paused package is only queued');
      await store.codes.setPaused(p.id, paused.id, false);

      // Now eligible tasks wait (the limited one and the unpaused one): a new task does not pass them.
      const behind = await store.claims.queueAndGrant(newTask(a, { priority: 2 }), ref, CLAIM.acceptDeadlineMs);
      t.notOk(behind.offer, 'eligible tasks are waiting: the new one queues behind them for the claim');
      const offers = await store.claims.claim(ref, 8, CLAIM);
      t.equal(offers[0]!.taskId, behind.taskId, 'and the claim orders it by priority as usual');
      t.equal(offers.length, 3, 'the waiting ones are claimed with it');

      await store.accounts.setProjectLimit(p.id, 100);
      t.notOk((await store.claims.queueAndGrant(newTask(a), ref, CLAIM.acceptDeadlineMs)).offer, 'a project with a limit goes through the claim');
      await store.accounts.setProjectLimit(p.id, null);
    });
  });
}
