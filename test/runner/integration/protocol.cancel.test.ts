// Failure injection: cancel while the runner is offline, and cancel after completion,
// against real runner processes and the real Docker engine.
import t from 'tap';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { LeasePhase, Outcome } from '../../../proto/gen/gantry/runner/v1/runner.ts';
import { containerState, FAST_TIMERS, finalOf, leasesOf, metric, queueTasks, spawnRunnerProcess, taskRow } from '../../helpers/faults.ts';
import { connectProtocolClient, type ProtocolClient } from '../../helpers/protocol.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

t.test('cancel while the runner is frozen (shorter than the lease TTL): the Cancel waits in the stream', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST_TIMERS, GANTRY_LEASE_TTL_MS: '5000' } });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'long', image: TEST_IMAGE, command: 'echo started; sleep 60' })).status, 200);
  const r = await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'long');
  const [lease] = await until('the task to run', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.state === 'running' ? ls : undefined;
  });
  t.equal(await containerState(lease!.container_id!), 'running', 'its container runs');

  r.proc.kill('SIGSTOP');
  const c = await api.user.project('POST', `/tasks/${id}/cancel`);
  t.equal(c.status, 200);
  t.equal(c.body.msg, 'Cancellation requested');
  const during = await taskRow(api, id!);
  t.equal(during.status, 'running', 'still running while its runner cannot hear');
  t.ok(during.cancel_requested_at, 'the cancel is recorded');
  // The route sends the Cancel after its reply: wait until it has really been written into
  // the frozen runner's stream, then keep the runner frozen a while longer (well inside the
  // 5 s lease TTL), so the Cancel sits unread in the stream.
  const cancelSent = async () =>
    (await api.store.db.query<{ cancel_sent_at: Date | null }>('SELECT cancel_sent_at FROM task_leases WHERE id = $1', [lease!.id])).rows[0]
      ?.cancel_sent_at;
  await until('the Cancel to be sent to the frozen runner', cancelSent, 5000);
  t.equal(await metric(api, 'gantry_stream_frames_total', { type: 'cancel', dir: 'out' }), 1, 'one Cancel written into the stream');
  const frozenUntil = Date.now() + 1500;
  while (Date.now() < frozenUntil) {
    const l = (await leasesOf(api, id!))[0]!;
    t.same([l.state, l.ended_at, (await taskRow(api, id!)).status], ['running', null, 'running'], 'the lease stays live while the runner is frozen');
    await new Promise((res) => setTimeout(res, 250));
  }
  t.equal(await metric(api, 'gantry_stream_frames_total', { type: 'cancelAck', dir: 'in' }), 0, 'the frozen runner has not answered it');
  r.proc.kill('SIGCONT');

  const row = await finalOf(api, id!);
  t.match(row, { status: 'cancelled', run_times: 1, runner_losses: 0 });
  t.equal(await metric(api, 'gantry_stream_frames_total', { type: 'cancel', dir: 'out' }), 1, 'the one Cancel, read after the thaw, was enough');
  t.equal(await metric(api, 'gantry_stream_frames_total', { type: 'cancelAck', dir: 'in' }), 1, 'and the thawed runner acknowledged it');
  const leases = await leasesOf(api, id!);
  t.same(leases.map((l) => [l.runner_id, l.outcome]), [[r.runnerId, 'cancelled']], 'one lease, ended by the runner as cancelled');
  await until('the container to be removed', async () => (await containerState(lease!.container_id!)) === undefined);
  t.pass('the container is gone');
});

t.test('cancel while the runner is frozen past the lease TTL: cancelled at expiry, the container killed on return', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'long', image: TEST_IMAGE, command: 'sleep 60' })).status, 200);
  const r = await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'long');
  const [lease] = await until('the task to run', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.state === 'running' ? ls : undefined;
  });

  r.proc.kill('SIGSTOP');
  t.equal((await api.user.project('POST', `/tasks/${id}/cancel`)).status, 200);
  const row = await finalOf(api, id!, 20000);
  t.match(row, { status: 'cancelled', msg: 'Cancelled by user', run_times: 1 }, 'the sweeper ends it cancelled when the lease expires');
  t.equal(row.runner_losses, 0, 'a cancelled task spends no runner-loss retry');
  t.equal(await containerState(lease!.container_id!), 'running', 'its container still runs under the frozen runner');

  r.proc.kill('SIGCONT');
  // On its return the runner is told its lease is gone and kills the container.
  await until('the container to be removed', async () => (await containerState(lease!.container_id!)) === undefined, 20000);
  t.pass('the container is gone');
  const after = await taskRow(api, id!);
  t.match(after, { status: 'cancelled', run_times: 1 }, 'the final state stands');
  const leases = await leasesOf(api, id!);
  t.same(leases.map((l) => [l.runner_id, l.outcome]), [[r.runnerId, 'reclaimed']], 'one lease, taken back at expiry');
});

t.test('a Cancel lost with its stream is sent again after the reconnect', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST_TIMERS, GANTRY_LEASE_TTL_MS: '10000' } });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'long', image: TEST_IMAGE, command: 'sleep 60' })).status, 200);
  let pc: ProtocolClient = await connectProtocolClient(t, api, cluster, { slots: 1 });
  pc.credit(1);
  const [id] = await queueTasks(api, 'long');
  const offer = await pc.next('offer');
  const lease = { leaseId: offer.leaseId, attempt: offer.attempt };
  pc.send({ $case: 'accept', value: lease });
  pc.send({ $case: 'started', value: { ...lease, containerId: 'not-a-container', startedAt: Date.now() } });
  // Beats keep the lease alive, on whichever stream is current.
  const beats = setInterval(() => pc.send({ $case: 'beat', value: { seq: 1, sentAt: Date.now(), leases: [{ ...lease, phase: LeasePhase.LEASE_PHASE_RUNNING, logBytesWritten: 0 }] } }), 200);
  t.teardown(() => clearInterval(beats));
  await until('the task to run', async () => (await taskRow(api, id!)).status === 'running');

  t.equal((await api.user.project('POST', `/tasks/${id}/cancel`)).status, 200);
  await pc.next('cancel');
  // The connection dies before the runner acted on the Cancel; it reconnects with its ledger.
  pc.cancel();
  pc = await connectProtocolClient(t, api, cluster, {
    runnerId: pc.runnerId,
    slots: 1,
    inFlight: [{ ...lease, taskId: id!, phase: LeasePhase.LEASE_PHASE_RUNNING, containerId: 'not-a-container' }],
  });
  t.same(pc.welcome.keep, [lease.leaseId], 'the lease stays the runner\'s');
  const again = await pc.next('cancel', 5000);
  t.equal(again.leaseId, lease.leaseId, 'the Cancel is sent again right after Welcome');
  pc.send({ $case: 'cancelAck', value: lease });
  pc.send({
    $case: 'completed',
    value: { ...lease, outcome: Outcome.OUTCOME_CANCELLED, exitCode: 143, startedAt: Date.now() - 1000, finishedAt: Date.now(), msg: 'cancelled' },
  });
  t.equal((await pc.next('completedAck')).leaseId, lease.leaseId);
  const row = await finalOf(api, id!);
  t.match(row, { status: 'cancelled', run_times: 1, runner_losses: 0 });
});

t.test('cancel after complete: 400 and the task stays complete', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'quick', image: TEST_IMAGE, command: 'echo done' })).status, 200);
  await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'quick');
  const done = await finalOf(api, id!);
  t.equal(done.status, 'complete');
  const c = await api.user.project('POST', `/tasks/${id}/cancel`);
  t.equal(c.status, 400);
  t.match(c.body.msg, /already finished with status complete/);
  const after = await taskRow(api, id!);
  t.match(after, { status: 'complete', cancel_requested_at: null, run_times: 1, exit_code: 0 }, 'nothing changed');
  t.equal((await api.user.project('GET', `/tasks/${id}`)).body.status, 'complete');
});
