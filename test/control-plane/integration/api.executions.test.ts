/**
 * Executions over HTTP on both engines, with real runner processes and Docker: every attempt
 * that reached a runner has its own record and its own log, kept across a runner killed
 * with SIGKILL (two executions, two logs, the first ending runner_lost); the stop of the
 * running execution; the 404s and 409s; and the tasks a schedule queued, newest first, paged.
 */
import t from 'tap';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { ENGINES } from '../../helpers/db.ts';
import { FAST_TIMERS, finalOf, queueTasks, spawnRunnerProcess } from '../../helpers/faults.ts';
import { TEST_IMAGE, testCluster, until } from '../../helpers/runner.ts';

const ID = /^[0-9a-f]{24}$/;
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

for (const engine of ENGINES) {
  t.test(`executions on ${engine}`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: FAST_TIMERS });
    const u = api.user;
    const cluster = await testCluster(api);
    // Prints, then waits for a file the test never writes on the first runner: the first
    // execution is still running when its runner is killed. The second runs to the end.
    const command = 'echo "out $TASK_ID"; echo "err line" >&2; i=0; while [ $i -lt 40 ] && [ ! -e /tmp/never ]; do sleep 0.1; i=$((i+1)); done; echo done';
    t.equal((await uploadCode(u, { name: 'twice', image: TEST_IMAGE, command })).status, 200);
    t.equal((await uploadCode(u, { name: 'sleeper', image: TEST_IMAGE, command: 'echo started; sleep 30' })).status, 200);

    const r1 = await spawnRunnerProcess(t, api, cluster);
    const [id] = await queueTasks(api, 'twice');
    const get = (path: string, query?: Record<string, string>) => u.project('GET', `/tasks/${id}${path}`, query ? { query } : {});
    await until('the first execution to print', async () => (await get('/executions/1/log')).text.includes('err line'));
    const first = (await get('/executions/1')).body;
    t.match(first, { number: 1, attempt: 1, task_id: id, status: 'running', current: true, runner_id: r1.runnerId, image: TEST_IMAGE, command });
    t.match(first.container_id, /^[0-9a-f]{64}$/, 'the container it runs in');
    for (const k of ['offered_at', 'accepted_at', 'started_at']) t.match(first[k], TIME, `${k} is RFC 3339`);
    t.notOk('finished_at' in first || 'exit_code' in first, 'not finished');

    // The runner dies; its task is taken back and runs again on the next runner.
    r1.proc.kill('SIGKILL');
    await r1.exited;
    const r2 = await spawnRunnerProcess(t, api, cluster);
    const done = await finalOf(api, id!);
    t.equal(done.status, 'complete');

    const list = (await get('/executions')).body.executions as Record<string, any>[];
    t.equal(list.length, 2, 'two executions');
    t.match(list[0], { number: 1, attempt: 1, status: 'runner_lost', current: false, runner_id: r1.runnerId, container_id: first.container_id });
    t.match(list[0]!.msg, /Runner lost/);
    t.equal(list[0]!.error, list[0]!.msg, 'a failed execution says why as its error');
    t.match(list[0]!.finished_at, TIME);
    t.match(list[1], { number: 2, status: 'complete', current: true, runner_id: r2.runnerId, exit_code: 0, image: TEST_IMAGE });
    t.ok(list[1]!.attempt >= 2);
    t.notOk('error' in list[1]!, 'a complete execution has no error');
    t.ok(list[1]!.duration >= 0 && list[1]!.log_size > 0);
    t.same((await get('/executions/2')).body, list[1], 'one execution reads as the list shows it');

    // Each execution keeps its own log; the task's log is the last one's.
    const log1 = (await get('/executions/1/log')).text;
    t.equal(log1, `out ${id}\nerr line\n`, "the first execution's log is kept, in the order written");
    t.equal(list[0]!.log_size, log1.length);
    const log2 = (await get('/executions/2/log')).text;
    t.equal(log2, `out ${id}\nerr line\ndone\n`);
    t.equal((await get('/log')).text, log2, "the task's log is its last execution's");
    t.equal((await get('/executions/2/log', { split: '1' })).text, `${log2}\n-=-\n`, 'split: stdout, the separator, stderr (merged into stdout here)');
    t.equal((await get('/executions/2/log', { stream: 'stderr' })).text, '');
    t.equal((await get('/executions/1/log', { stream: 'stdout' })).text, log1);

    for (const n of ['3', '0', 'x', '01', '1e3']) isError(t, await get(`/executions/${n}`), 404, /^Execution not found/, `execution ${n}`);
    isError(t, await get('/executions/9/log'), 404, /^Execution not found/);
    isError(t, await get('/executions/1/log', { stream: 'both' }), 400, /^stream must be stdout or stderr/);
    isError(t, await u.project('POST', `/tasks/${id}/executions/1/stop`), 409, /^Execution 1 is not running \(it ended runner_lost\)/);
    isError(t, await u.project('POST', `/tasks/${id}/executions/2/stop`), 409, /^Execution 2 is not running \(it ended complete\)/);
    const other = await api.newUser();
    isError(t, await other.project('GET', `/tasks/${id}/executions`), 404, /Task not found/);
    isError(t, await u.project('GET', `/tasks/${'0'.repeat(24)}/executions`), 404, /Task not found/);
    t.same((await u.project('GET', `/tasks/${(await queueTasks(api, 'twice', 1, { delay: 3600 }))[0]}/executions`)).body, { executions: [] }, 'a task not run yet has none');

    // Stop: the running execution is stopped by its runner and the task ends cancelled.
    const [s] = await queueTasks(api, 'sleeper');
    await until('the sleeper to run', async () => (await u.project('GET', `/tasks/${s}/executions/1/log`)).text === 'started\n');
    const stop = await u.project('POST', `/tasks/${s}/executions/1/stop`);
    t.equal(stop.status, 200, stop.text);
    t.same(stop.body, { msg: 'Cancellation requested' });
    t.equal((await finalOf(api, s!)).status, 'cancelled');
    t.match((await u.project('GET', `/tasks/${s}/executions/1`)).body, { status: 'cancelled', current: true });
    isError(t, await other.project('POST', `/tasks/${s}/executions/1/stop`), 404, /Task not found/);
  });

  t.test(`a schedule's tasks, newest first, paged (${engine})`, async (t) => {
    const api = await startTestApi(t, engine);
    const u = api.user;
    t.equal((await uploadCode(u, { name: 'sched', image: TEST_IMAGE, command: 'true' })).status, 200);
    const mk = async () => {
      const r = await u.project('POST', '/schedules', { json: { schedules: [{ code_name: 'sched', run_every: 3600, start_at: '2099-01-01T00:00:00Z' }] } });
      t.equal(r.status, 200, r.text);
      return r.body.schedules[0].id as string;
    };
    const [a, b] = [await mk(), await mk()];
    // Tasks as the schedule loop queues them (it runs as leader work, on its own clock).
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const [tid] = await queueTasks(api, 'sched');
      await api.store.db.query('UPDATE tasks SET schedule_id = $2 WHERE id = $1', [tid, i === 2 ? b : a]);
      ids.push(tid!);
    }
    const page = async (sid: string, q: Record<string, string> = {}) =>
      ((await u.project('GET', `/schedules/${sid}/tasks`, { query: q })).body.tasks as { id: string; schedule_id: string }[]).map((x) => x.id);
    const ofA = ids.filter((_, i) => i !== 2).reverse();
    t.same(await page(a), ofA, 'newest first, only its own');
    t.same(await page(a, { per_page: '2' }), ofA.slice(0, 2));
    t.same(await page(a, { per_page: '2', page: '1' }), ofA.slice(2, 4));
    t.same(await page(a, { per_page: '2', page: '2' }), []);
    t.same(await page(b), [ids[2]]);
    const one = (await u.project('GET', `/schedules/${a}/tasks`)).body.tasks[0];
    t.match(one, { id: ofA[0], schedule_id: a, code_name: 'sched', status: 'queued' });
    t.match(one.id, ID);
    isError(t, await u.project('GET', `/schedules/${a}/tasks`, { query: { per_page: '101' } }), 400, /^per_page must be/);
    isError(t, await u.project('GET', `/schedules/${'0'.repeat(24)}/tasks`), 404, /Schedule not found/);
    isError(t, await (await api.newUser()).project('GET', `/schedules/${a}/tasks`), 404, /Schedule not found/);
  });
}
