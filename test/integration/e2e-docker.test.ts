// End to end over HTTP with real runner processes' code path and a real Docker engine:
// upload, queue, run in a container, outcome and log.
import t from 'tap';
import { startTestApi, uploadCode, type TestApi } from '../helpers/api.ts';
import { startTestRunner, TEST_IMAGE, until } from '../helpers/runner.ts';

const FAST = {
  GANTRY_BEAT_INTERVAL_MS: '200',
  GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
  GANTRY_SWEEP_INTERVAL_MS: '100',
  GANTRY_CANCEL_GRACE_MS: '500',
};

async function runTask(api: TestApi, code: string, task: Record<string, unknown> = {}) {
  const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: code, payload: 'hello-payload', ...task }] } });
  if (q.status !== 200) throw new Error(q.text);
  return q.body.tasks[0].id as string;
}

async function finalOf(api: TestApi, id: string, timeoutMs = 60000) {
  return until(
    `task ${id} final`,
    async () => {
      const r = await api.user.project('GET', `/tasks/${id}`);
      return ['complete', 'error', 'timeout', 'cancelled', 'killed'].includes(r.body.status) ? r.body : undefined;
    },
    timeoutMs,
  );
}

t.test('tasks run in Docker containers and reach the right status (PostgreSQL)', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_SLOTS: '4' } });
  const up = async (name: string, command: string) => t.equal((await uploadCode(api.user, { name, image: TEST_IMAGE, command })).status, 200);
  await up('cat', 'cat $PAYLOAD_FILE; echo; echo to-stderr >&2');
  await up('exit3', 'echo failing; exit 3');
  await up('sleepy', 'sleep 30');
  await up('hog', 'head -c 400m /dev/zero | tail');

  const ok = await runTask(api, 'cat');
  const fail = await runTask(api, 'exit3');
  const slow = await runTask(api, 'sleepy', { timeout: 2 });
  const oom = await runTask(api, 'hog');

  const okT = await finalOf(api, ok);
  t.equal(okT.status, 'complete');
  const log = await until('log complete', async () => {
    const r = await api.user.project('GET', `/tasks/${ok}/log`);
    return r.text.includes('to-stderr') ? r.text : undefined;
  });
  t.match(log, /hello-payload/, 'the log contains the payload');
  t.equal((await api.user.project('GET', `/tasks/${ok}/log`, { query: { stream: 'stderr' } })).text, 'to-stderr\n', 'stderr apart');

  const failT = await finalOf(api, fail);
  t.equal(failT.status, 'error');
  t.match(failT.msg, /3/, 'msg names the exit code');

  const slowT = await finalOf(api, slow);
  t.equal(slowT.status, 'timeout');

  const oomT = await finalOf(api, oom);
  t.equal(oomT.status, 'error');
  t.match(oomT.msg, /memory/i, 'msg says it ran out of memory');

  // Cancel while running.
  const c = await runTask(api, 'sleepy');
  await until('running', async () => (await api.user.project('GET', `/tasks/${c}`)).body.status === 'running');
  const cancel = await api.user.project('POST', `/tasks/${c}/cancel`);
  t.equal(cancel.status, 200);
  const cT = await finalOf(api, c);
  t.equal(cT.status, 'cancelled');
});
