// Failure injection: a runner process frozen with SIGSTOP while its task runs, against
// real runner processes and the real Docker engine. Shorter than the lease TTL the lease
// rides it out; longer, the lease is reclaimed, the task runs again elsewhere and the frozen runner's late result is refused.
import t from 'tap';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import {
  containerState,
  FAST_TIMERS,
  finalOf,
  healthz,
  leasesOf,
  metric,
  queueTasks,
  spawnRunnerProcess,
  taskRow,
} from '../../helpers/faults.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

async function runnerRow(api: TestApi, id: string) {
  return (
    await api.store.db.query<{ session_epoch: string; last_beat_at: Date; connected: boolean }>(
      'SELECT session_epoch, last_beat_at, connected FROM runners WHERE id = $1',
      [id],
    )
  ).rows[0]!;
}

t.test('frozen for less than the lease TTL: the task completes on its one lease', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST_TIMERS, GANTRY_LEASE_TTL_MS: '3000' } });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'nap', image: TEST_IMAGE, command: 'sleep 3; echo woke' })).status, 200);
  const r = await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'nap');
  await until('the task to run', async () => (await taskRow(api, id!)).status === 'running');

  r.proc.kill('SIGSTOP');
  // Frozen until the control plane has heard nothing from it for 1.2 s (the TTL is 3 s).
  await until('1.2 s of silence', async () => Date.now() - (await runnerRow(api, r.runnerId)).last_beat_at.getTime() >= 1200, 10000);
  const [during] = await leasesOf(api, id!);
  t.match(during, { state: 'running', ended_at: null }, 'the lease is still live while the runner is frozen');
  r.proc.kill('SIGCONT');

  const row = await finalOf(api, id!, 60000, { log: true });
  t.match(row, { status: 'complete', run_times: 1, runner_losses: 0, runner_id: r.runnerId, log_complete: true });
  const leases = await leasesOf(api, id!);
  t.same(leases.map((l) => [l.runner_id, l.outcome]), [[r.runnerId, 'complete']], 'one lease, completed');
  t.equal(Number((await runnerRow(api, r.runnerId)).session_epoch), 1, 'the same session throughout: no reconnect, no reclaim');
  t.equal((await api.user.project('GET', `/tasks/${id}/log`)).text, 'woke\n');
  t.equal(await metric(api, 'gantry_leases_reclaimed_total'), 0, 'nothing reclaimed');
  await until('the container removed', async () => (await containerState(leases[0]!.container_id!)) === undefined);
});

t.test('frozen for longer than the lease TTL: reclaimed, run again on another runner, the late result refused', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'nap', image: TEST_IMAGE, command: 'sleep 4; echo woke' })).status, 200);
  const a = await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'nap');
  const [first] = await until('the task to run on the first runner', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.state === 'running' ? ls : undefined;
  });
  t.equal(first!.runner_id, a.runnerId);
  const b = await spawnRunnerProcess(t, api, cluster);

  a.proc.kill('SIGSTOP');
  const [reclaimed, second] = await until(
    'the lease to be reclaimed and the task to run on the second runner',
    async () => {
      const ls = await leasesOf(api, id!);
      return ls[0]?.outcome === 'reclaimed' && ls[1]?.state === 'running' ? ls : undefined;
    },
    20000,
  );
  t.equal(reclaimed!.runner_id, a.runnerId, 'the frozen runner lost its lease');
  t.equal(second!.runner_id, b.runnerId, 'the task runs again on the other runner');
  t.equal(second!.attempt, 2);
  const during = await taskRow(api, id!);
  t.match(during, { status: 'running', runner_losses: 1, run_times: 2 }, 'the rerun is counted: one runner loss');

  // The first container finishes its work while its runner is still frozen: a result that
  // the runner will try to report late.
  await until('the first container to exit', async () => (await containerState(first!.container_id!)) === 'exited', 20000);
  a.proc.kill('SIGCONT');

  const row = await finalOf(api, id!, 60000, { log: true });
  t.match(row, { status: 'complete', run_times: 2, runner_losses: 1, runner_id: b.runnerId, exit_code: 0, log_complete: true }, "the final state is the second runner's");
  // The resumed runner is told its lease is gone (Revoke) or its result is stale; either way
  // it forgets the lease, reconnects and is healthy and idle again.
  await until(
    'the frozen runner to come back healthy and idle',
    async () => {
      const h = await healthz(a.healthPort);
      return h.status === 200 && h.body.busy === 0 && Number((await runnerRow(api, a.runnerId)).session_epoch) > 1;
    },
    20000,
  );
  await until('its ledger to be empty', async () => api.cp.dispatcher.session(a.runnerId)?.freeSlots() === 1);
  const leases = await leasesOf(api, id!);
  t.same(
    leases.map((l) => [l.runner_id, l.outcome]),
    [
      [a.runnerId, 'reclaimed'],
      [b.runnerId, 'complete'],
    ],
    'lease history: reclaimed from the frozen runner, completed by the other; never overwritten',
  );
  t.equal(await metric(api, 'gantry_completions_total', { disposition: 'recorded' }), 1, 'exactly one result recorded');
  // The frozen runner's late result is refused one of two ways, depending on whether its
  // container's exit is noticed before or after it reads the end of its old stream: its
  // Completed is answered STALE, or its ledger entry is revoked (by a Revoke frame, or by
  // the Welcome of its new session, which only the runner's own log shows).
  const refusal = await until('the late result to be refused', async () => {
    const stale = await metric(api, 'gantry_completions_total', { disposition: 'stale' });
    const revokeFrames = await metric(api, 'gantry_stream_frames_total', { type: 'revoke', dir: 'out' });
    const revoked = a
      .output()
      .split('\n')
      .filter((l) => l.includes('"lease revoked by the control plane"') && l.includes(`"leaseId":"${first!.id}"`)).length;
    return stale + revokeFrames + revoked >= 1 ? { stale, revokeFrames, revoked } : undefined;
  }, 10000).catch(() => ({ stale: 0, revokeFrames: 0, revoked: 0 }));
  t.ok(refusal.stale + refusal.revokeFrames + refusal.revoked >= 1, `the late result was presented and refused (${JSON.stringify(refusal)})`);
  t.equal(await metric(api, 'gantry_leases_reclaimed_total', { reason: 'runner_lost' }), 1);
  t.equal((await api.user.project('GET', `/tasks/${id}/log`)).text, 'woke\n', "the log is the second run's");
  await until('both containers removed', async () => {
    return (await containerState(first!.container_id!)) === undefined && (await containerState(second!.container_id!)) === undefined;
  });
});
