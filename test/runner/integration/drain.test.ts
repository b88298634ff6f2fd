// Drain of a real runner process by signal (proto/README.md, 6.3 Drain): the first
// SIGTERM stops new work and lets the running task finish, then the runner exits 0; a
// second SIGTERM hands the running task back, to be requeued (not a task error) and run to
// completion elsewhere.
import t from 'tap';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { containerState, FAST_TIMERS, finalOf, leasesOf, queueTasks, spawnRunnerProcess, taskRow } from '../../helpers/faults.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

async function runnerRow(api: TestApi, id: string) {
  return (await api.store.db.query<{ draining: boolean; connected: boolean }>('SELECT draining, connected FROM runners WHERE id = $1', [id]))
    .rows[0]!;
}

t.test('SIGTERM: no new offers, the running task completes, the runner exits 0', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'nap', image: TEST_IMAGE, command: 'sleep 3; echo done' })).status, 200);
  t.equal((await uploadCode(api.user, { name: 'quick', image: TEST_IMAGE, command: 'echo quick' })).status, 200);
  // Two slots: only the drain keeps the second task away from it.
  const a = await spawnRunnerProcess(t, api, cluster, { GANTRY_RUNNER_SLOTS: '2' });
  const [first] = await queueTasks(api, 'nap');
  const [lease] = await until('the task to run', async () => {
    const ls = await leasesOf(api, first!);
    return ls[0]?.state === 'running' ? ls : undefined;
  });

  a.proc.kill('SIGTERM');
  await until('the runner to be recorded as draining', async () => (await runnerRow(api, a.runnerId)).draining);
  const [second] = await queueTasks(api, 'quick');
  t.equal(await a.exited, 0, 'the runner exits 0 once its task is done');

  const row = await taskRow(api, first!);
  t.match(row, { status: 'complete', run_times: 1, runner_losses: 0, exit_code: 0, log_complete: true }, 'the running task completed normally');
  t.same((await leasesOf(api, first!)).map((l) => [l.runner_id, l.outcome]), [[a.runnerId, 'complete']]);
  t.equal((await api.user.project('GET', `/tasks/${first}/log`)).text, 'done\n');
  t.same(await leasesOf(api, second!), [], 'the task queued during the drain was never offered to it');
  t.match(await taskRow(api, second!), { status: 'queued', run_times: 0 });
  t.equal((await runnerRow(api, a.runnerId)).draining, true, 'draining was set');
  await until('the control plane to close its session after Goodbye', async () => !(await runnerRow(api, a.runnerId)).connected);
  t.equal(await containerState(lease!.container_id!), undefined, 'its container is gone');

  const b = await spawnRunnerProcess(t, api, cluster);
  t.match(await finalOf(api, second!), { status: 'complete', run_times: 1, runner_id: b.runnerId }, 'it runs on another runner');
});

t.test('a second SIGTERM hands the running task back: requeued, not an error, completed elsewhere', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'long', image: TEST_IMAGE, command: 'sleep 4; echo finished' })).status, 200);
  const a = await spawnRunnerProcess(t, api, cluster);
  const [id] = await queueTasks(api, 'long');
  const [first] = await until('the task to run', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.state === 'running' ? ls : undefined;
  });
  t.equal(first!.runner_id, a.runnerId);
  const b = await spawnRunnerProcess(t, api, cluster);

  a.proc.kill('SIGTERM');
  await until('the runner to be recorded as draining', async () => (await runnerRow(api, a.runnerId)).draining);
  t.equal((await taskRow(api, id!)).status, 'running', 'the first signal lets it run');
  a.proc.kill('SIGTERM');
  t.equal(await a.exited, 0, 'the runner exits 0 after handing its task back');

  const [handedBack] = await until('the hand-back', async () => {
    const ls = await leasesOf(api, id!);
    return ls[0]?.ended_at ? ls : undefined;
  });
  t.equal(handedBack!.outcome, 'handed_back', 'the lease ends handed back');
  t.equal(await containerState(first!.container_id!), undefined, 'its container was killed and removed');

  const row = await finalOf(api, id!, 60000, { log: true });
  t.match(row, { status: 'complete', exit_code: 0, run_times: 2, runner_losses: 1, runner_id: b.runnerId }, 'completed on the other runner; one internal retry spent');
  t.same(
    (await leasesOf(api, id!)).map((l) => [l.runner_id, l.outcome]),
    [
      [a.runnerId, 'handed_back'],
      [b.runnerId, 'complete'],
    ],
  );
  t.equal((await api.user.project('GET', `/tasks/${id}/log`)).text, 'finished\n', "the log is the full run's");
  const retries = await api.store.db.query('SELECT id FROM tasks WHERE original_task_id = $1', [id]);
  t.equal(retries.rows.length, 0, 'no user-visible retry task: the hand-back was not a task error');
});
