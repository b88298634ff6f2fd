import t, { type Test } from 'tap';
import { Etcd3 } from 'etcd3';
import { ManualClock } from '../../../lib/clock.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { EtcdCoordinator } from '../../../control-plane/coord/etcd.ts';
import { watchDatabaseForLeadership } from '../../../control-plane/coord/db-watch.ts';
import { EtcdKeys } from '../../../control-plane/coord/keys.ts';
import type { CoordEvent, Leadership } from '../../../control-plane/coord/types.ts';
import { checkFence, FencedError } from '../../../control-plane/store/fence.ts';
import { freshStore } from '../../helpers/db.ts';
import { EtcdInstance, etcdPrefix } from '../../helpers/etcd.ts';
import { until } from '../../helpers/runner.ts';
import { etcdEndpoint } from '../../helpers/services.ts';

/** A coordinator on etcd, stopped at teardown; `leaderships` records what it won. */
async function coordinator(t: Test, o: { prefix: string; id: string; endpoint?: string; ttlS?: number; start?: boolean }) {
  const c = new EtcdCoordinator({
    endpoints: [o.endpoint ?? etcdEndpoint()],
    prefix: o.prefix,
    ttlS: o.ttlS ?? 2,
    replicaId: o.id,
    log: silentLogger(),
  });
  const leaderships: Leadership[] = [];
  c.onLeadership((l) => leaderships.push(l));
  t.teardown(() => c.stop());
  if (o.start ?? true) await c.start();
  return { c, leaderships, leading: () => leaderships.some((l) => !l.signal.aborted) };
}

type Coord = Awaited<ReturnType<typeof coordinator>>;

/** The replicas standing for leadership under `prefix` (their candidate keys' values). */
async function candidates(prefix: string): Promise<string[]> {
  const etcd = new Etcd3({ hosts: [etcdEndpoint()] });
  try {
    return Object.values(await etcd.getAll().prefix(new EtcdKeys(prefix).electionPrefix()).strings());
  } finally {
    etcd.close();
  }
}
const leaders = (cs: Coord[]) => cs.filter((x) => x.leading());

t.test('one leader among three; when it stops another is elected with a higher term', async (t) => {
  const prefix = etcdPrefix(t);
  const cs = [await coordinator(t, { prefix, id: 'a' }), await coordinator(t, { prefix, id: 'b' }), await coordinator(t, { prefix, id: 'c' })];
  await until('a leader is elected', async () => (() => leaders(cs).length === 1)(), 5000);
  const first = leaders(cs)[0]!;
  t.equal(first.c.replicaId, 'a', 'the first candidate leads');
  for (const x of cs) t.equal(x.c.status().leader, 'a', `${x.c.replicaId} knows the leader`);
  const term1 = first.c.status().term!;
  await first.c.stop();
  t.ok(first.leaderships[0]!.signal.aborted, 'stopping aborts leader work');
  const rest = cs.filter((x) => x !== first);
  await until('a successor is elected', async () => (() => leaders(rest).length === 1)(), 5000);
  const next = leaders(rest)[0]!;
  t.ok(next.c.status().term! > term1, 'the successor has a higher term');
  for (const x of rest) t.equal(x.c.status().leader, next.c.replicaId);
  t.equal(leaders(cs).length, 1, 'still exactly one leader');
});

t.test('a replica that stands down gives way at once; standing again it comes behind the others', async (t) => {
  const prefix = etcdPrefix(t);
  const a = await coordinator(t, { prefix, id: 'a' });
  const b = await coordinator(t, { prefix, id: 'b' });
  await until('a leads', async () => a.leading() && b.c.status().leader === 'a', 5000);
  const term = a.c.status().term!;
  a.c.setCandidate(false, 'the database has not answered');
  t.ok(a.leaderships[0]!.signal.aborted, "standing down aborts the leader's work at once");
  t.equal(a.c.status().isLeader, false);
  await until('b leads', async () => b.leading() && a.c.status().leader === 'b', 5000);
  t.ok(b.c.status().term! > term, 'with a higher term');
  t.equal(a.c.status().healthy, true, 'a keeps its session (its slots and events) while it stands down');
  a.c.setCandidate(false, 'still');
  a.c.setCandidate(true, 'the database answers again');
  // A's new candidate key is behind b's: b keeps leading, a follows.
  await until('a is a candidate again', async () => (await candidates(prefix)).includes('a'), 5000);
  t.equal(b.c.status().leader, 'b');
  t.equal(leaders([a, b]).length, 1, 'one leader');
  t.notOk(a.leading(), 'a does not lead while b does');
  await b.c.stop();
  await until('a leads again once b is gone', async () => a.leading(), 5000);
  t.ok(a.c.status().term! > b.leaderships.at(-1)!.term, 'with a newer term');
});

t.test('the database watch: a leader whose database stops answering stands down after the grace, and stands again when it answers', async (t) => {
  const prefix = etcdPrefix(t);
  const a = await coordinator(t, { prefix, id: 'a' });
  const b = await coordinator(t, { prefix, id: 'b' });
  await until('a leads', async () => a.leading(), 5000);
  let up = true;
  // A cut database: the question hangs (half-open connections), it does not fail fast.
  const ping = () => (up ? Promise.resolve(true) : new Promise<boolean>(() => {}));
  const watch = watchDatabaseForLeadership({ coord: a.c, ping, everyMs: 100, graceMs: 800 });
  t.teardown(() => watch.stop());
  await new Promise((r) => setTimeout(r, 400));
  t.ok(a.leading(), 'a database that answers: a keeps leading');
  up = false;
  const cut = Date.now();
  await until('b leads', async () => b.leading(), 5000);
  const took = Date.now() - cut;
  t.ok(took >= 700, `not before the grace (${took} ms)`);
  t.notOk(a.leading(), 'a stood down');
  up = true;
  await until('a stands again', async () => (await candidates(prefix)).includes('a'), 5000);
  t.ok(b.leading() && !a.leading(), 'behind b');
});

t.test('two replicas racing for the last slot never both admit; a crashed holder frees its slots by itself', async (t) => {
  const prefix = etcdPrefix(t);
  const a = await coordinator(t, { prefix, id: 'a', ttlS: 1 });
  const b = await coordinator(t, { prefix, id: 'b', ttlS: 1 });
  for (let round = 0; round < 40; round++) {
    const scope = `code:race${round % 4}`;
    const limit = 1 + (round % 3);
    // Fill all but the last slot, then race for it.
    for (let i = 0; i < limit - 1; i++) t.ok(await a.c.acquire(scope, limit, `fill-${round}-${i}`));
    const [x, y] = await Promise.all([a.c.acquire(scope, limit, `a-${round}`), b.c.acquire(scope, limit, `b-${round}`)]);
    t.equal(Number(x) + Number(y), 1, `round ${round}: exactly one admitted`);
    const held = (await a.c.slots()).filter((s) => s.scope === scope);
    t.equal(held.length, limit, 'the slots held equal the limit');
    await a.c.release([...Array(limit - 1).keys()].map((i) => `fill-${round}-${i}`).concat(`a-${round}`));
    await b.c.release([`b-${round}`]);
    t.equal((await a.c.slots()).filter((s) => s.scope === scope).length, 0, 'all released');
  }
  t.ok(await a.c.acquire('code:held', 2, 'x1'));
  t.ok(await a.c.acquire('code:held', 2, 'x2'));
  t.notOk(await b.c.acquire('code:held', 2, 'y1'), 'full');
  t.ok(await a.c.acquire('code:held', 2, 'x1'), 'a holder asking again keeps its slot');

  // A holder that dies without a word: its etcd lease expires within the TTL and takes the slots.
  const raw = new Etcd3({ hosts: etcdEndpoint() });
  t.teardown(() => raw.close());
  const keys = new EtcdKeys(prefix);
  const lease = raw.lease(1, { autoKeepAlive: false });
  await lease.put(keys.slot('code:crash', 0)).value('dead-holder');
  t.notOk(await b.c.acquire('code:crash', 1, 'live'), 'the dead holder still has it');
  const t0 = Date.now();
  await until('the slot frees itself', () => b.c.acquire('code:crash', 1, 'live'), 5000);
  t.ok(Date.now() - t0 < 3000, 'within about one TTL');
});

t.test('events published on one replica reach the others, not itself', async (t) => {
  const prefix = etcdPrefix(t);
  const a = await coordinator(t, { prefix, id: 'a' });
  const b = await coordinator(t, { prefix, id: 'b' });
  const got: { a: CoordEvent[]; b: CoordEvent[] } = { a: [], b: [] };
  a.c.onEvent((e) => got.a.push(e));
  b.c.onEvent((e) => got.b.push(e));
  a.c.publish({ type: 'ready', cluster: 'default' });
  a.c.publish({ type: 'cancel', runnerId: 'r1' });
  a.c.publish({ type: 'ready', cluster: 'default' });
  await until('b hears a', async () => (() => got.b.length >= 2)(), 3000);
  t.same(got.b, [
    { type: 'ready', cluster: 'default' },
    { type: 'cancel', runnerId: 'r1' },
  ], 'coalesced, in order');
  t.same(got.a, [], 'a does not hear itself');
});

t.test('a stale leader is refused by the store once a newer term has written', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 5, 1));
  const store = await freshStore(t, 'postgres', clock);
  await store.db.tx((q) => checkFence(q, { term: 10, holder: 'old' }));
  await store.db.tx((q) => checkFence(q, { term: 12, holder: 'new' }));
  await store.db.tx((q) => checkFence(q, { term: 12, holder: 'new' }));
  await t.rejects(store.db.tx((q) => checkFence(q, { term: 10, holder: 'old' })), FencedError);

  // Leader work that is really due, so the fenced transactions open: a schedule past its
  // next_start and an offer past its accept deadline.
  const u = await store.accounts.createUser('fence@x');
  const p = await store.accounts.createProject(u.id, 'p');
  const { cluster } = await store.clusters.create('fence');
  const runner = (await store.runners.connect(
    { runnerId: 'r-fence', clusterId: cluster.id, bootId: 'b', hostname: 'h', agentVersion: '1', dockerVersion: '1', instanceId: '', slots: 4, memoryMb: 2048 },
    's1',
    'server',
  ))!;
  const code = await store.codes.upload(p.id, 'fenced', { image: 'busybox' });
  const [schedId] = await store.schedules.create(p.id, [{
    codeName: 'fenced', name: null, payload: '', priority: 0, timeout: 60, cluster: 'fence', taskDelay: 0,
    startAt: new Date(clock.now().getTime() - 1000), runEvery: 60, endAt: null, runTimes: null,
  }]);
  const [taskId] = await store.tasks.queue([{
    projectId: p.id, codeId: code.id, codeName: code.name, revisionId: code.latestRevisionId, rev: code.rev,
    retries: code.retries, retriesDelay: code.retriesDelay, payload: 'x', priority: 0, cluster: 'fence', timeout: 60, delay: 0, label: null,
  }]);
  const [offer] = await store.claims.claim({ id: runner.id, epoch: runner.sessionEpoch, cluster: 'fence' }, 1, { acceptDeadlineMs: 1000, ageingS: 600 });
  t.equal(offer?.taskId, taskId, 'the task is offered');
  clock.advance(2000);
  const before = (await store.schedules.get(p.id, schedId!))!;
  const stale = { term: 11, holder: 'old' };
  const cfg = { leaseTtlMs: 1000, runnerLossBudget: 1 };

  // A refused firing and a refused sweep change nothing: each write is inside the fenced transaction.
  await t.rejects(store.schedules.fireDue(clock.now(), 100, stale), FencedError, 'a stale leader cannot fire a due schedule');
  await t.rejects(store.outcomes.sweep(cfg, 10, stale), FencedError, 'a stale leader cannot sweep an expired offer');
  await t.rejects(store.outcomes.timeOut(offer!.leaseId, 1, stale), FencedError, 'nor time a lease out');
  const fired = await store.db.query('SELECT id FROM tasks WHERE schedule_id = $1', [schedId]);
  t.equal(fired.rows.length, 0, 'no task was queued for the schedule');
  const after = (await store.schedules.get(p.id, schedId!))!;
  t.same(
    { next: after.nextStart?.getTime(), runs: after.runCount, errors: after.errorCount, status: after.status },
    { next: before.nextStart?.getTime(), runs: 0, errors: 0, status: 'scheduled' },
    'the schedule is untouched (next_start unchanged)',
  );
  const lease = (await store.leases.get(offer!.leaseId))!;
  t.same({ state: lease.state, ended: lease.endedAt }, { state: 'offered', ended: null }, 'the expired offer is still open');
  const task = (await store.db.query<{ status: string; lease_id: string | null }>('SELECT status, lease_id FROM tasks WHERE id = $1', [taskId])).rows[0];
  t.same(task, { status: 'queued', lease_id: offer!.leaseId }, 'the task still points at its lease');

  // The current leader does the same work: so the refusals above were the fence, not an empty queue.
  const current = { term: 12, holder: 'new' };
  t.equal(await store.schedules.fireDue(clock.now(), 100, current), 1, 'the current leader fires the schedule');
  t.same(await store.outcomes.sweep(cfg, 10, current), { expiredOffers: 1, reclaimed: 0, killed: 0, ended: [offer!.leaseId] }, 'and sweeps the expired offer');
  t.equal((await store.db.query('SELECT id FROM tasks WHERE schedule_id = $1', [schedId])).rows.length, 1);
  t.not((await store.leases.get(offer!.leaseId))!.endedAt, null, 'the offer is ended');
});

t.test('etcd stopped for 30 s and restarted: leader work stops, then exactly one leader', async (t) => {
  const etcd = await EtcdInstance.create(t);
  const prefix = '/gantry/';
  const cs = [
    await coordinator(t, { prefix, id: 'a', endpoint: etcd.endpoint }),
    await coordinator(t, { prefix, id: 'b', endpoint: etcd.endpoint }),
    await coordinator(t, { prefix, id: 'c', endpoint: etcd.endpoint }),
  ];
  await until('a leader is elected', async () => (() => leaders(cs).length === 1)(), 5000);
  const health: boolean[] = [];
  cs[1]!.c.onHealth((h) => health.push(h));
  await etcd.stop();
  const t0 = Date.now();
  await until('leader work stops without etcd', async () => leaders(cs).length === 0 && cs.every((x) => !x.c.status().healthy), 5000);
  t.ok(Date.now() - t0 < 2000, 'within the TTL (2 s): before etcd could have elected anyone else');
  t.ok(cs.every((x) => x.c.status().leader === undefined), 'no leader is claimed');
  // Watched through the whole outage, not only at its end: a leadership won and lost inside
  // the window would be aborted (and so invisible to leading()) by then.
  const won = cs.map((x) => x.leaderships.length);
  const wonDuring: string[] = [];
  for (const x of cs) x.c.onLeadership(() => wonDuring.push(x.c.replicaId));
  let samples = 0;
  const claimed = new Set<string>();
  const outageEnd = Date.now() + 30_000;
  while (Date.now() < outageEnd) {
    for (const x of cs) {
      if (x.leading() || x.c.status().isLeader) claimed.add(`${x.c.replicaId} led`);
      if (x.c.status().leader !== undefined) claimed.add(`${x.c.replicaId} named ${x.c.status().leader}`);
      if (x.c.status().healthy) claimed.add(`${x.c.replicaId} healthy`);
    }
    samples++;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(samples > 100, `the outage was watched (${samples} samples)`);
  t.same([...claimed], [], 'no one led, named a leader or was healthy at any point of the outage');
  t.same(wonDuring, [], 'no leadership was won during the outage');
  t.same(cs.map((x) => x.leaderships.length), won, 'no one led during the outage');
  await etcd.start();
  // Followers learn the new leader from a watch a moment after it wins: wait until all name it.
  await until('one leader after etcd returns, named by all', async () => cs.every((x) => x.c.status().healthy) && leaders(cs).length === 1 && new Set(cs.map((x) => x.c.status().leader)).size === 1, 30_000);
  // And it stays one: watch for a while.
  for (let i = 0; i < 20; i++) {
    t.equal(leaders(cs).length, 1, 'exactly one leader');
    const names = new Set(cs.map((x) => x.c.status().leader));
    t.equal(names.size, 1, 'all agree on it');
    await new Promise((r) => setTimeout(r, 100));
  }
  t.same(health.slice(0, 2), [false, true], 'health went down and came back');
});
