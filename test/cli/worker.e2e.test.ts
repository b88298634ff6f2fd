// The iron worker verbs through the real binary, against a control plane on PostgreSQL and
// a real runner that runs the tasks in Docker: upload (an image and command; a directory
// the CLI zips itself), queue --wait (output on stdout, exit 0 or 1 by the task's outcome),
// log -f showing lines while the task still runs, cancel, retry, status, schedule, and
// every list, with --json replies parsed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startTestApi } from '../helpers/api.ts';
import { apiFlags, cliPlace, runCli, startCli } from '../helpers/cli.ts';
import { tempDir } from '../helpers/db.ts';
import { startTestRunner, TEST_IMAGE } from '../helpers/runner.ts';

const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100', GANTRY_CANCEL_GRACE_MS: '500' };
/** Every follow is cut by the server after 2 s, so a follow of longer has to resume (Last-Event-ID). */
const SHORT_FOLLOWS = { GANTRY_LOG_FOLLOW_MAX_S: '2' };

t.test('upload, queue --wait, log -f, cancel, retry, status, schedule and the lists (PostgreSQL, Docker)', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST, ...SHORT_FOLLOWS } });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_SLOTS: '4' } });
  // A cluster of the user's own, with a runner of its own: what clusters and runners list.
  const made = await api.request('POST', '/2/clusters', { json: { name: 'cli-test', memory: 256 * 1024 * 1024 } });
  t.equal(made.status, 200, "the user makes a cluster of their own");
  const own = await startTestRunner(t, api, { cluster: { id: made.body.id, token: made.body.token } });
  const place = cliPlace(t);
  // Configured once, as a user would: gantry login writes ./iron.json.
  const login = await runCli(t, place, ['login', ...apiFlags(api.url, api.user)]);
  t.equal(login.code, 0, login.err);
  const gantry = (...args: string[]) => runCli(t, place, args);
  const json = async (...args: string[]) => {
    const r = await gantry(...args, '--json');
    t.equal(r.code, 0, `gantry ${args.join(' ')} --json: ${r.err}`);
    return JSON.parse(r.out);
  };

  // An image and a command.
  const up = await gantry('upload', '--name', 'hello', '--image', TEST_IMAGE, '--command', 'echo "hello $(cat $PAYLOAD_FILE) $GREETING"; cat $CONFIG_FILE', '--env', 'GREETING=hi', '--retries', '0', '--config-file', writeFile(t, 'config.json', '{"db":"x"}'));
  t.equal(up.code, 0, up.err);
  t.match(up.out, /^uploaded hello: revision 1, id [0-9a-f]{24}, image gantry-test\/busybox:latest/);
  const code = (await api.user.project('GET', '/codes')).body.codes.find((c: { name: string }) => c.name === 'hello');
  t.match(code, { env_vars: { GREETING: 'hi' }, config: '{"db":"x"}', retries: 0 }, 'the flags reached the package');

  // A directory, zipped by the CLI with its script's mode kept.
  const dir = tempDir(t, 'gantry-cli-pkg-');
  fs.mkdirSync(path.join(dir, 'lib'));
  fs.writeFileSync(path.join(dir, 'run.sh'), '#!/bin/sh\necho "from zip: $(cat lib/word.txt)"\n', { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'lib', 'word.txt'), 'zipped');
  const zipUp = await json('upload', dir, '--name', 'zipped', '--image', TEST_IMAGE, '--command', './run.sh');
  t.match(zipUp, { name: 'zipped', rev: 1, code_size: Number }, '--json: the API reply, parsed');
  t.ok(zipUp.file_name.endsWith('.zip'), 'a zip went with it');
  const zipAgain = await gantry('upload', dir, '--image', TEST_IMAGE, '--command', './run.sh');
  t.same({ code: zipAgain.code, err: zipAgain.err }, { code: 0, err: '' }, 'named after its directory; no progress off a terminal');
  t.match(zipAgain.out, new RegExp(`^uploaded ${path.basename(dir)}: revision 1, .*, zip \\d+ bytes\n$`));
  const zipRev2 = await gantry('upload', dir, '--name', 'zipped');
  t.match(zipRev2.out, /^uploaded zipped: revision 2, id [0-9a-f]{24}, image gantry-test\/busybox:latest, command "\.\/run\.sh"/, 'a new revision keeps the image and command');

  // queue --wait: the task's output on stdout, exit 0.
  const ok = await gantry('queue', 'hello', '--payload', 'world', '--wait');
  t.equal(ok.code, 0, ok.err);
  t.equal(ok.out, 'hello world hi\n{"db":"x"}', 'its log, exactly, on stdout');
  t.equal(ok.err, '', 'no progress when stderr is not a terminal');
  const zipped = await gantry('queue', 'zipped', '--wait');
  t.equal(zipped.code, 0, zipped.err);
  t.equal(zipped.out, 'from zip: zipped\n', 'the zipped directory ran, its script executable');

  // A failing task: exit 1, its output still printed, the reason on stderr.
  t.equal((await gantry('upload', '--name', 'fails', '--image', TEST_IMAGE, '--command', 'echo failing; exit 3')).code, 0);
  const failed = await gantry('queue', 'fails', '--wait');
  t.equal(failed.code, 1, 'the task ended error');
  t.equal(failed.out, 'failing\n');
  t.match(failed.err, /^gantry: task ([0-9a-f]{24}) ended error: .*exit code 3.*\n  its log: gantry log \1; run it again: gantry retry \1\n$/);
  const failedId = /task ([0-9a-f]{24})/.exec(failed.err)![1]!;
  const waitedJson = await gantry('queue', 'fails', '--wait', '--json');
  t.equal(waitedJson.code, 1, '--json --wait: exit 1 too');
  t.match(JSON.parse(waitedJson.out), { status: 'error', code_name: 'fails' }, '--json --wait: the final task, parsed');

  // log -f: lines appear while the task still runs; cancel ends it and the follow.
  t.equal((await gantry('upload', '--name', 'ticker', '--image', TEST_IMAGE, '--command', 'i=0; while true; do i=$((i+1)); echo line-$i; sleep 1; done')).code, 0);
  const tickerId = (await gantry('queue', 'ticker', '--cluster', 'cli-test', '--label', 'kind=ticker', '--timeout', '600')).out.trim();
  t.match(tickerId, /^[0-9a-f]{24}$/, 'queue prints the task id');
  const follow = startCli(t, place, ['log', '-f', tickerId]);
  await follow.waitForOutput(/line-1\n/);
  await follow.waitForOutput(/line-4\n/);
  t.equal((await api.user.project('GET', `/tasks/${tickerId}`)).body.status, 'running', 'the lines came while the task still runs');
  const seen = follow.out().split('\n').filter(Boolean);
  t.same(seen, seen.map((_, i) => `line-${i + 1}`), 'past the server\'s 2 s follow limit: resumed with nothing lost or repeated');
  const cancel = await gantry('cancel', tickerId);
  t.equal(cancel.code, 0, cancel.err);
  t.match(cancel.out, new RegExp(`^task ${tickerId}: `));
  const followed = await follow.done;
  t.equal(followed.code, 0, `log -f ends with the task: ${followed.err}`);
  t.match(followed.out, /^line-1\nline-2\nline-3\nline-4\n/);
  t.match((await api.user.project('GET', `/tasks/${tickerId}`)).body, { status: 'cancelled', cluster: 'cli-test', label: 'kind=ticker', timeout: 600 }, 'cancelled; it ran as queued');
  const whole = await gantry('log', tickerId);
  t.equal(whole.code, 0);
  t.ok(whole.out.startsWith(followed.out.slice(0, followed.out.lastIndexOf('\n') + 1)), 'log prints the same log, whole');

  // status, under both names; retry.
  const st = await gantry('worker', 'status', failedId);
  t.equal(st.code, 0, st.err);
  t.match(st.out, new RegExp(`^id: +${failedId}\ncode: +fails \\(revision 1\\)\nstatus: +error\n`));
  t.match(await json('worker', 'status', failedId), { id: failedId, status: 'error' });
  const retried = await gantry('retry', failedId);
  t.equal(retried.code, 0, retried.err);
  const retryId = retried.out.trim();
  t.match(retryId, /^[0-9a-f]{24}$/);
  t.equal((await api.user.project('GET', `/tasks/${retryId}`)).body.original_task_id, failedId, 'a new task, retrying the failed one');

  // schedule: by interval and by cron; then the list.
  const every = await gantry('schedule', 'hello', '--run-every', '3600', '--run-times', '2', '--payload', 'sched', '--start-at', new Date(Date.now() + 3600_000).toISOString());
  t.equal(every.code, 0, every.err);
  const everyId = every.out.trim();
  const cron = await json('schedule', 'hello', '--cron', '30 9 * * 1-5', '--timezone', 'Europe/Berlin');
  t.match(cron, { schedules: [{ id: /^[0-9a-f]{24}$/ }] });
  const badCron = await gantry('schedule', 'hello', '--cron', 'not a cron');
  t.equal(badCron.code, 3, 'an expression the API refuses');
  t.match(badCron.err, /cron/);
  const sched = (await api.user.project('GET', `/schedules/${everyId}`)).body;
  t.match(sched, { code_name: 'hello', run_every: 3600, run_times: 2, payload: 'sched' }, 'the schedule as given');

  // Every list, as text and as JSON.
  const codesOut = await gantry('codes');
  t.match(codesOut.out, /^ID +NAME +REVISION +IMAGE/);
  for (const n of ['hello', 'zipped', 'fails', 'ticker']) t.match(codesOut.out, new RegExp(`^[0-9a-f]{24}  ${n} `, 'm'), `codes lists ${n}`);
  t.same((await json('codes')).codes.map((c: { name: string }) => c.name).sort(), [path.basename(dir), 'fails', 'hello', 'ticker', 'zipped'].sort());
  const allTasks = await json('tasks');
  t.ok(allTasks.tasks.length >= 6, `tasks lists them all (${allTasks.tasks.length})`);
  const errors = await json('tasks', '--error', '--code', 'fails');
  t.ok(errors.tasks.length >= 2 && errors.tasks.every((x: { status: string; code_name: string }) => x.status === 'error' && x.code_name === 'fails'), 'status and code filters');
  const cancelled = await gantry('tasks', '--cancelled');
  t.match(cancelled.out, new RegExp(`^${tickerId}  ticker +cancelled`, 'm'));
  t.equal((await json('tasks', '--per-page', '1', '--page', '1')).tasks.length, 1, 'paging');
  const future = await json('tasks', '--from', new Date(Date.now() + 86400_000).toISOString());
  t.same(future.tasks, [], '--from in the future: none');
  const schedList = await gantry('schedules');
  t.match(schedList.out, new RegExp(`^${everyId}  hello +scheduled +every 3600 s`, 'm'));
  t.match(schedList.out, /cron 30 9 \* \* 1-5 Europe\/Berlin/);
  t.equal((await json('schedules')).schedules.length, 2);
  t.match((await gantry('clusters')).out, /^[0-9a-f]{24}  cli-test +256 MiB/m, 'clusters lists the user\'s cluster');
  t.ok((await json('clusters')).clusters.some((c: { name: string }) => c.name === 'cli-test'));
  const runnersJson = await json('runners');
  t.match(runnersJson.workers, [{ id: own.agent.runnerId, cluster: { name: 'cli-test' }, state: 'connected' }], "runners: the workers.get_all reply, the user's runner");
  const runnersOut = await gantry('worker', 'runners');
  t.equal(runnersOut.code, 0, runnersOut.err);
  t.match(runnersOut.out, new RegExp(`^${own.agent.runnerId}  cli-test +connected `, 'm'));
});

function writeFile(t: Parameters<typeof tempDir>[0], name: string, text: string): string {
  const file = path.join(tempDir(t, 'gantry-cli-file-'), name);
  fs.writeFileSync(file, text);
  return file;
}
