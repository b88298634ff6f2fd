// End to end through the real gRPC gateway with the no-op executor: dispatch, logs and
// results, without Docker.
import t from 'tap';
import { startTestApi, uploadCode } from '../helpers/api.ts';
import { startTestRunner, until } from '../helpers/runner.ts';

const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100' };

t.test('a queued task runs on a runner and completes with its log (noop executor, PGlite)', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
  t.equal((await uploadCode(api.user, { name: 'hello' })).status, 200);
  const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'hello', payload: 'payload-123' }] } });
  const id = q.body.tasks[0].id;
  const done = await until('task complete', async () => {
    const r = await api.user.project('GET', `/tasks/${id}`);
    return r.body.status === 'complete' ? r.body : undefined;
  });
  t.equal(done.status, 'complete');
  t.ok(done.start_time && done.end_time, 'start and end times');
  const log = await until('log', async () => {
    const r = await api.user.project('GET', `/tasks/${id}/log`);
    return r.text.includes('payload-123') ? r.text : undefined;
  });
  t.match(log, /payload-123/);
});
