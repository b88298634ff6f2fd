// A task controls what it prints and what it writes to PROGRESS_FILE. None of it may fail
// the writes of its own result or close its runner's session, which would disturb every
// other task on that runner (other tenants' among them).
import t from 'tap';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { startTestRunner, TEST_IMAGE, until } from '../../helpers/runner.ts';

const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50' };

t.test('NUL, unpaired surrogates and out-of-range numbers from a task are stored safely; its runner keeps its session', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_SLOTS: '2' } });
  const other = await api.newUser();
  // JSON escapes reach the runner as real NUL and lone-surrogate characters once parsed.
  const progress = String.raw`printf '{"percent": 99999999999, "msg": "a\u0000b\ud800c"}' > $PROGRESS_FILE`;
  t.equal((await uploadCode(api.user, { name: 'odd', image: TEST_IMAGE, command: `${progress}; sleep 1; printf 'x\\000y\\n'; exit 7` })).status, 200);
  t.equal((await uploadCode(other, { name: 'slow', image: TEST_IMAGE, command: 'sleep 2; echo done' })).status, 200);

  const sessionBefore = await until('runner connected', async () => {
    const r = await api.store.db.query<{ id: string; session_id: string | null }>('SELECT id, session_id FROM runners WHERE session_id IS NOT NULL');
    return r.rows[0];
  });
  const slow = (await other.project('POST', '/tasks', { json: { tasks: [{ code_name: 'slow' }] } })).body.tasks[0].id as string;
  const odd = (await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'odd' }] } })).body.tasks[0].id as string;

  const progressed = await until('progress stored', async () => {
    const r = await api.user.project('GET', `/tasks/${odd}`);
    return r.body.percent !== undefined ? r.body : undefined;
  });
  t.equal(progressed.percent, 100, 'a percent out of range is clamped to 0..100');
  t.equal(progressed.msg, 'ab\ufffdc', 'NUL dropped, the lone surrogate replaced');

  const final = async (u: typeof api.user, id: string) =>
    until(`task ${id} final`, async () => {
      const r = await u.project('GET', `/tasks/${id}`);
      return ['complete', 'error', 'timeout', 'cancelled', 'killed'].includes(r.body.status) ? r.body : undefined;
    }, 60000);
  const oddT = await final(api.user, odd);
  t.equal(oddT.status, 'error', 'the task ends as its exit code says');
  const slowT = await final(other, slow);
  t.equal(slowT.status, 'complete', "the other tenant's task on the same runner completes");
  const log = await until('log', async () => {
    const r = await api.user.project('GET', `/tasks/${odd}/log`);
    return r.text.includes('y') ? r.text : undefined;
  });
  t.equal(log, 'x\u0000y\n', 'the log keeps the bytes the task printed');
  const sessionAfter = (await api.store.db.query<{ session_id: string | null }>('SELECT session_id FROM runners WHERE id = $1', [sessionBefore.id])).rows[0];
  t.equal(sessionAfter?.session_id, sessionBefore.session_id, 'the runner kept the session it had: nothing closed it');
});
