// End to end over HTTP with real runner processes' code path and a real Docker engine:
// upload, queue, run in a container, outcome and log.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { tempDir } from '../../helpers/db.ts';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { startTestRunner, TEST_IMAGE, until } from '../../helpers/runner.ts';

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
  const up = async (name: string, command: string, more: Record<string, unknown> = {}) =>
    t.equal((await uploadCode(api.user, { name, image: TEST_IMAGE, command, ...more })).status, 200);
  await up('cat', 'cat $PAYLOAD_FILE; echo; echo to-stderr >&2', { log_streams: 'separate' });
  // A new package's default: stderr joined to stdout, so the log is in the order written.
  await up('order', 'i=1; while [ $i -le 200 ]; do echo $i-out; echo $i-err >&2; i=$((i+1)); done');
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

  const ordered = await runTask(api, 'order');
  t.equal((await finalOf(api, ordered)).status, 'complete');
  const want = Array.from({ length: 200 }, (_, i) => `${i + 1}-out\n${i + 1}-err\n`).join('');
  const got = await until('ordered log complete', async () => {
    const r = await api.user.project('GET', `/tasks/${ordered}/log`);
    return r.text.length >= want.length ? r.text : undefined;
  });
  t.ok(got === want, `the log keeps the order of stdout and stderr lines (${JSON.stringify(got.slice(0, 60))}...)`);

  const failT = await finalOf(api, fail);
  t.equal(failT.status, 'error');
  t.match(failT.msg, /\bexit code 3\b/, 'msg names the exit code');

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

t.test('zip packages, progress from inside the task, heartbeat stats, and no polling delay (PGlite)', async (t) => {
  // A dispatcher tick of a minute: a task that starts at once was offered by an event.
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: { ...FAST, GANTRY_DISPATCH_TICK_MS: '60000' } });
  const runner = await startTestRunner(t, api);

  // A zip code package holding an executable script (python3's zipfile keeps the mode bits).
  const dir = tempDir(t, 'gantry-zip-');
  fs.writeFileSync(path.join(dir, 'hello.sh'), '#!/bin/sh\necho "from zip: $(cat $PAYLOAD_FILE)"\necho \'{"percent": 42, "msg": "halfway"}\' > $PROGRESS_FILE\nsleep 1\n', { mode: 0o755 });
  const zipPath = path.join(dir, 'code.zip');
  execFileSync('python3', ['-c', `import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1],'w')\ni=zipfile.ZipInfo('hello.sh')\ni.external_attr=0o755<<16\nz.writestr(i, open(sys.argv[2]).read())\nz.close()`, zipPath, path.join(dir, 'hello.sh')]);
  const up = await uploadCode(api.user, { name: 'zipped', image: TEST_IMAGE, command: './hello.sh' }, { data: fs.readFileSync(zipPath), name: 'code.zip' });
  t.equal(up.status, 200, up.text);

  const id = await runTask(api, 'zipped');
  const running = await until('progress visible', async () => {
    const r = await api.user.project('GET', `/tasks/${id}`);
    return r.body.percent === 42 ? r.body : undefined;
  });
  t.equal(running.msg, 'halfway', 'the task set its own progress through PROGRESS_FILE');
  const done = await finalOf(api, id);
  t.equal(done.status, 'complete');
  t.equal(done.msg, 'halfway', 'its last progress message stays');
  const log = await until('log', async () => {
    const r = await api.user.project('GET', `/tasks/${id}/log`);
    return r.text.includes('from zip') ? r.text : undefined;
  });
  t.match(log, /from zip: hello-payload/, 'the zip package ran as the working directory');

  const stats = await until('heartbeat stats', async () => {
    const r = await api.store.db.query<{ stats: Record<string, number> | null }>('SELECT stats FROM runners WHERE id = $1', [runner.agent.runnerId]);
    return r.rows[0]?.stats?.memTotalMb ? r.rows[0].stats : undefined;
  });
  t.ok((stats.memTotalMb ?? 0) > 0 && stats.totalSlots === 2, 'heartbeats carry machine stats');
});
