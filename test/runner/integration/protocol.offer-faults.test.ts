// Failure injection around offers (proto/README.md, 3 Credits and offers, 6.5 Penalties),
// against the real gateway, real runner processes and the real Docker engine: a stream cut
// between Offer and Accept; Accept and Started lost with a stream (the reconnect's ledger
// must catch the lease up or revoke it); a runner whose Docker engine is gone; a runner that
// rejects everything. A hand-driven protocol client plays the runners that misbehave.
import t from 'tap';
import { LeasePhase, Outcome, RejectReason, type ServerFrame } from '../../../proto/gen/gantry/runner/v1/runner.ts';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import {
  FAST_TIMERS,
  finalOf,
  healthz,
  leasesOf,
  metric,
  metricAt,
  queueTasks,
  spawnRunnerProcess,
  taskRow,
} from '../../helpers/faults.ts';
import { connectProtocolClient } from '../../helpers/protocol.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

const ACCEPT_DEADLINE_MS = Number(FAST_TIMERS.GANTRY_ACCEPT_DEADLINE_MS);
const SWEEP_MS = Number(FAST_TIMERS.GANTRY_SWEEP_INTERVAL_MS);
/** Scheduling slack on a loaded two-core machine. */
const SLACK_MS = 1000;

t.test('a stream cut between Offer and Accept: the offer expires, the task is requeued and runs once', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'hello', image: TEST_IMAGE, command: 'echo hello-$TASK_ID' })).status, 200);

  const pc = await connectProtocolClient(t, api, cluster, { slots: 1 });
  pc.credit(1);
  const [id] = await queueTasks(api, 'hello');
  const offer = await pc.next('offer');
  t.equal(offer.taskId, id, 'the task is offered to the protocol client');
  pc.cancel(); // no Accept: the connection dies with the offer in hand

  const [lease] = await until(
    'the offer to expire',
    async () => {
      const ls = await leasesOf(api, id!);
      return ls[0]?.ended_at ? ls : undefined;
    },
    ACCEPT_DEADLINE_MS + SWEEP_MS + 10_000,
  );
  t.equal(lease!.id, offer.leaseId);
  t.equal(lease!.outcome, 'offer_expired', 'the lease ends offer_expired');
  t.ok(lease!.ended_at!.getTime() >= lease!.expires_at.getTime(), 'not before the accept deadline');
  t.ok(
    lease!.ended_at!.getTime() - lease!.granted_at.getTime() <= ACCEPT_DEADLINE_MS + SWEEP_MS + SLACK_MS,
    `requeued within accept deadline + sweep (took ${lease!.ended_at!.getTime() - lease!.granted_at.getTime()} ms)`,
  );
  let row = await taskRow(api, id!);
  t.match(row, { status: 'queued', lease_id: null, run_times: 0, runner_losses: 0 }, 'back in the queue, nothing spent');
  t.equal(await metric(api, 'gantry_offer_results_total', { result: 'expired' }), 1, 'counted as an expired offer');

  const runner = await spawnRunnerProcess(t, api, cluster);
  row = await finalOf(api, id!, 60000, { log: true });
  t.match(row, { status: 'complete', run_times: 1, runner_losses: 0, runner_id: runner.runnerId, log_complete: true });
  const leases = await leasesOf(api, id!);
  t.same(
    leases.map((l) => [l.runner_id, l.outcome]),
    [
      [pc.runnerId, 'offer_expired'],
      [runner.runnerId, 'complete'],
    ],
    'lease history: the expired offer, then one run',
  );
  t.equal((await api.user.project('GET', `/tasks/${id}/log`)).text, `hello-${id}\n`, 'the log is the one run');
});

t.test('Accept and Started lost with the stream: the reconnect\'s ledger catches the lease up, or revokes it', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST_TIMERS, GANTRY_ACCEPT_DEADLINE_MS: '1500' } });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'hello', image: TEST_IMAGE, command: 'echo hello' })).status, 200);

  // (1) Back within the accept deadline: the lease is kept and brought up to the runner's phase.
  let pc = await connectProtocolClient(t, api, cluster, { slots: 1 });
  pc.credit(1);
  const [id] = await queueTasks(api, 'hello');
  const offer = await pc.next('offer');
  const lease = { leaseId: offer.leaseId, attempt: offer.attempt };
  // The runner accepted and started the container, but the stream died before either frame left.
  pc.cancel();
  pc = await connectProtocolClient(t, api, cluster, {
    runnerId: pc.runnerId,
    inFlight: [{ ...lease, taskId: id!, phase: LeasePhase.LEASE_PHASE_RUNNING, containerId: 'c-1' }],
  });
  t.same(pc.welcome.keep, [lease.leaseId], 'kept');
  let row = await taskRow(api, id!);
  t.match(row, { status: 'running', run_times: 1 }, 'the task is running and its run counted');
  const [l] = await leasesOf(api, id!);
  t.match(l, { state: 'running', container_id: 'c-1' }, 'the lease is running, not an offer about to expire');
  // Beats past the accept deadline: the lease must not expire as an offer.
  const beat = () => pc.send({ $case: 'beat', value: { seq: 1, sentAt: Date.now(), leases: [{ ...lease, phase: LeasePhase.LEASE_PHASE_RUNNING, logBytesWritten: 0 }] } });
  const beats = setInterval(beat, 200);
  t.teardown(() => clearInterval(beats));
  const ttl = Number(FAST_TIMERS.GANTRY_LEASE_TTL_MS);
  await until('a beat to renew the lease after its accept deadline and a sweep passed', async () => {
    const [now] = await leasesOf(api, id!);
    return now!.expires_at.getTime() - ttl > l!.granted_at.getTime() + 1500 + 2 * SWEEP_MS;
  });
  t.match(await taskRow(api, id!), { status: 'running', lease_id: lease.leaseId }, 'still running on its lease');
  clearInterval(beats);
  pc.send({ $case: 'completed', value: { ...lease, outcome: Outcome.OUTCOME_SUCCEEDED, startedAt: Date.now() - 100, finishedAt: Date.now() } });
  t.equal((await pc.next('completedAck')).leaseId, lease.leaseId);
  row = await finalOf(api, id!);
  t.match(row, { status: 'complete', run_times: 1, runner_losses: 0 });
  t.equal((await leasesOf(api, id!)).length, 1, 'one lease');

  // (2) Back after the accept deadline: the offer went back to the queue, so the runner is
  // told to revoke what it started; the task runs once, elsewhere.
  pc.credit(1);
  const [id2] = await queueTasks(api, 'hello');
  const offer2 = await pc.next('offer');
  const lease2 = { leaseId: offer2.leaseId, attempt: offer2.attempt };
  pc.cancel();
  await until('the offer to expire', async () => (await leasesOf(api, id2!))[0]?.outcome === 'offer_expired', 10000);
  pc = await connectProtocolClient(t, api, cluster, {
    runnerId: pc.runnerId,
    inFlight: [{ ...lease2, taskId: id2!, phase: LeasePhase.LEASE_PHASE_RUNNING, containerId: 'c-2' }],
  });
  t.same(pc.welcome.revoke, [lease2.leaseId], 'revoked in the Welcome');
  t.match(await taskRow(api, id2!), { status: 'queued', run_times: 0 }, 'the task waits in the queue, no run counted');
  const good = await spawnRunnerProcess(t, api, cluster);
  t.match(await finalOf(api, id2!), { status: 'complete', run_times: 1, runner_id: good.runnerId });
});

t.test('a runner with broken Docker takes no work, a rejecting runner is penalised, the queue does not stall', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'work', image: TEST_IMAGE, command: 'sleep 1; echo ok' })).status, 200);

  // Docker is unreachable for this runner process.
  const bad = await spawnRunnerProcess(t, api, cluster, { DOCKER_HOST: 'unix:///nonexistent/docker.sock', GANTRY_RUNNER_SLOTS: '4' });
  const h = await until('the bad runner to report itself unhealthy', async () => {
    const r = await healthz(bad.healthPort);
    return r.status === 503 ? r : undefined;
  });
  t.match(h.body.reason, /docker/i, '/healthz answers 503 naming Docker');
  const runnerMetrics = `http://127.0.0.1:${bad.healthPort}/metrics`;
  await until('the bad runner to send credits', async () => (await metricAt(runnerMetrics, 'gantry_runner_frames_total', { type: 'credit', dir: 'out' })) >= 2);
  t.equal(api.cp.dispatcher.session(bad.runnerId)?.freeSlots(), 0, 'its credits say it is not accepting');

  // A runner that rejects every offer (as one with a broken engine but a stale credit would).
  const rej = await connectProtocolClient(t, api, cluster, { slots: 4 });
  const rejectedAt: number[] = [];
  rej.call.on('data', (f: ServerFrame) => {
    if (f.frame?.$case !== 'offer') return;
    const o = f.frame.value;
    rej.send({ $case: 'reject', value: { leaseId: o.leaseId, attempt: o.attempt, reason: RejectReason.REJECT_REASON_INTERNAL, detail: 'docker is broken' } });
    rejectedAt.push(Date.now());
    rej.credit(4);
  });
  rej.credit(4);
  // It keeps saying it has four free slots, as a beat would.
  const creditTimer = setInterval(() => rej.credit(4), 200);
  t.teardown(() => clearInterval(creditTimer));

  const ids = await queueTasks(api, 'work', 10);
  await until('the rejecting runner to get its first offers', async () => rejectedAt.length > 0);
  const good = await spawnRunnerProcess(t, api, cluster, { GANTRY_RUNNER_SLOTS: '2' });

  const rows = await Promise.all(ids.map((id) => finalOf(api, id, 60000, { log: true })));
  const firstRejectAt = rejectedAt[0]!;
  for (const r of rows) {
    t.match(r, { status: 'complete', run_times: 1, runner_losses: 0, runner_id: good.runnerId }, `task ${r.id} ran once, on the good runner`);
  }
  t.notOk(rows.some((r) => r.status === 'error'), 'no task ends error');
  const all = (await api.store.db.query<{ runner_id: string; outcome: string; granted_at: Date }>('SELECT runner_id, outcome, granted_at FROM task_leases')).rows;
  t.equal(all.filter((l) => l.runner_id === bad.runnerId).length, 0, 'the broken-Docker runner was offered nothing');
  const toRej = all.filter((l) => l.runner_id === rej.runnerId);
  t.ok(toRej.length >= 1 && toRej.length <= 4, `the rejecting runner got one credit's worth of offers (${toRej.length})`);
  t.ok(toRej.every((l) => l.outcome === 'rejected'), 'each of them ended rejected');
  // It kept sending credit for four slots every 200 ms while the good runner worked through
  // the queue for seconds: only the penalty (5 s doubling) kept further offers away.
  t.ok(
    toRej.every((l) => l.granted_at.getTime() <= firstRejectAt + 200),
    'every offer to it came before its first Reject: penalised after, despite its credit',
  );
  t.equal(await metric(api, 'gantry_offer_results_total', { result: 'rejected' }), toRej.length, 'rejections counted');
  t.equal(all.filter((l) => l.runner_id === good.runnerId).length, 10, 'the good runner ran all ten, one lease each');
  t.equal((await healthz(bad.healthPort)).status, 503, 'the bad runner is still unhealthy');
});
