/**
 * The Docker executor against the real engine (scripts/services.sh docker), with the local
 * test image. Every container carries `gantry.test-run=<id>` and each test's teardown removes
 * what carries its id; each test has its own work dir and runner id.
 */
import t, { type Test } from 'tap';
import Dockerode from 'dockerode';
import { mkdtemp, mkdir, readdir, rm, writeFile, access } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { DockerExecutor, DockerUnavailableError } from '../../../runner/executor/docker.ts';
import type { ExecHooks, TaskSpec } from '../../../runner/executor/types.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { RUN_ID } from '../../helpers/services.ts';

const IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';
const TEST_LABEL = 'gantry.test-run';
const docker = new Dockerode();
let seq = 0;

/** A fresh executor, work dir and run id for one test; teardown removes its containers. */
async function setup(t: Test, opts: { killGraceMs?: number } = {}) {
  const id = `${RUN_ID}-${++seq}`;
  const runnerId = `test-runner-${id}`;
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-exec-'));
  const executor = new DockerExecutor({
    docker,
    runnerId,
    workDir,
    networkOverride: 'none',
    killGraceMs: opts.killGraceMs ?? 2000,
    labels: { [TEST_LABEL]: id },
    log: silentLogger(),
    progressPollMs: 100,
  });
  t.teardown(async () => {
    await executor.close();
    for (const c of await ours(id)) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  });
  let n = 0;
  const spec = (over: Partial<TaskSpec> = {}): TaskSpec => ({
    taskId: `task-${id}-${++n}`,
    leaseId: `lease-${id}-${n}`,
    attempt: 1,
    projectId: 'proj-1',
    codeId: 'code-1',
    codeName: 'hello',
    image: IMAGE,
    command: 'true',
    env: {},
    payload: '',
    config: '',
    timeoutS: 60,
    memoryMb: 64,
    ...over,
  });
  return { id, runnerId, workDir, executor, spec };
}

/** Containers (running or not) labelled with this test's run id. */
function ours(id: string): Promise<Dockerode.ContainerInfo[]> {
  return docker.listContainers({ all: true, filters: { label: [`${TEST_LABEL}=${id}`] } });
}

/** Hooks that keep everything, with promises to wait on instead of sleeping. */
function recorder() {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const progress: { percent?: number; msg?: string }[] = [];
  let startedCount = 0;
  const waiters: { text: string; resolve: () => void }[] = [];
  let onStartedResolve!: (i: { containerId: string; startedAt: number; imagePullMs: number; createMs: number }) => void;
  const started = new Promise<{ containerId: string; startedAt: number; imagePullMs: number; createMs: number }>((r) => {
    onStartedResolve = r;
  });
  const stdout = () => Buffer.concat(out).toString();
  const hooks: ExecHooks = {
    onOutput(stream, data) {
      (stream === 'stdout' ? out : err).push(data);
      for (const w of [...waiters]) {
        if (stdout().includes(w.text)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
      }
    },
    onStarted(info) {
      startedCount++;
      onStartedResolve(info);
    },
    onProgress(p) {
      progress.push(p);
    },
  };
  return {
    hooks,
    started,
    progress,
    stdout,
    stderr: () => Buffer.concat(err).toString(),
    startedCount: () => startedCount,
    /** Resolves once stdout contains `text`. */
    sawOnStdout: (text: string) =>
      new Promise<void>((resolve) => {
        if (stdout().includes(text)) resolve();
        else waiters.push({ text, resolve });
      }),
  };
}

async function assertCleanedUp(t: Test, ctx: { id: string; workDir: string }) {
  t.same(await ours(ctx.id), [], 'the container is gone after the result');
  const left = await readdir(path.join(ctx.workDir, 'tasks')).catch(() => []);
  t.same(left, [], 'the task directory is gone');
}

t.test('the engine answers ping', async (t) => {
  const { executor } = await setup(t);
  await executor.ping();
  t.pass('ping');
});

t.test('payload, config and env vars reach the task; succeeded', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const spec = ctx.spec({
    command:
      'cat $PAYLOAD_FILE; echo; echo "task=$TASK_ID project=$PROJECT_ID code=$CODE_NAME"; ' +
      'echo "config=$(cat $CONFIG_FILE)"; echo "greeting=$GREETING"; echo "progress=$PROGRESS_FILE"',
    payload: '{"hello":"world"}',
    config: '{"k":"v"}',
    env: { GREETING: 'hi there' },
  });
  const before = Date.now();
  const res = await ctx.executor.start(spec, rec.hooks).result;
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(res.exitCode, 0);
  t.equal(res.oomKilled, false);
  t.match(res.msg, /^(|exit code 0)$/);
  t.ok(res.startedAt >= before && res.finishedAt >= res.startedAt, 'ms epoch start and finish');
  const lines = rec.stdout().split('\n');
  t.equal(lines[0], '{"hello":"world"}', 'payload via $PAYLOAD_FILE');
  t.equal(lines[1], `task=${spec.taskId} project=proj-1 code=hello`);
  t.equal(lines[2], 'config={"k":"v"}');
  t.equal(lines[3], 'greeting=hi there', 'env_vars');
  t.equal(lines[4], 'progress=/gantry/out/progress');
  t.equal(rec.stderr(), '');
  t.equal(rec.startedCount(), 1, 'onStarted once');
  const info = await rec.started;
  t.ok(info.containerId.length >= 12 && info.imagePullMs >= 0 && info.createMs >= 0, 'start info');
  await assertCleanedUp(t, ctx);
});

t.test('stdout and stderr are kept apart, in order', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const res = await ctx.executor.start(ctx.spec({ command: 'echo out; echo err >&2; echo out2; echo err2 >&2' }), rec.hooks).result;
  t.equal(res.outcome, 'succeeded');
  t.equal(rec.stdout(), 'out\nout2\n');
  t.equal(rec.stderr(), 'err\nerr2\n');
});

/** Lines 1-out, 1-err, 2-out, ... as a shell writes them, each line a write of its own. */
const INTERLEAVED = 'i=1; while [ $i -le 300 ]; do echo $i-out; echo $i-err >&2; i=$((i+1)); done';
const interleaved = Array.from({ length: 300 }, (_, i) => `${i + 1}-out\n${i + 1}-err\n`).join('');

t.test('mergeStderr: stderr joins stdout in the container, and the order of every line is kept', async (t) => {
  const ctx = await setup(t);
  // Two pipes read apart swap lines of the two written microseconds apart; one pipe cannot.
  for (let round = 0; round < 3; round++) {
    const rec = recorder();
    const res = await ctx.executor.start(ctx.spec({ command: INTERLEAVED, mergeStderr: true }), rec.hooks).result;
    t.equal(res.outcome, 'succeeded', res.msg);
    t.ok(rec.stdout() === interleaved, `round ${round}: 300 pairs in the order written (${rec.stdout().slice(0, 40)}...)`);
    t.equal(rec.stderr(), '', 'nothing arrives as stderr');
  }
  const rec = recorder();
  const res = await ctx.executor.start(ctx.spec({ command: 'echo out; echo err >&2; exit 4', mergeStderr: true }), rec.hooks).result;
  t.match(res, { outcome: 'failed', exitCode: 4 }, 'the exit code is the command\'s');
  t.equal(rec.stdout(), 'out\nerr\n');
});

t.test("mergeStderr with the image's own entrypoint, and an image without /bin/sh", async (t) => {
  const ctx = await setup(t);
  const tag = (name: string) => `gantry-test/${name}-${ctx.id}:latest`.toLowerCase();
  const withEntry = tag('entry');
  const noShell = tag('no-shell');
  t.teardown(async () => {
    for (const image of [withEntry, noShell]) await docker.getImage(image).remove({ force: true }).catch(() => undefined);
  });
  // The test image with an entrypoint and a command of its own, which the task runs.
  const base = await docker.createContainer({ Image: IMAGE, Cmd: ['true'] });
  await base.commit({ repo: withEntry.split(':')[0], tag: 'latest', changes: ['ENTRYPOINT ["/bin/sh", "-c"]', `CMD ["${INTERLEAVED.replaceAll('"', '\\"')}"]`] });
  await base.remove();
  // An image with no /bin/sh at all: one static busybox under /app, as its entrypoint.
  const root = await mkdtemp(path.join(os.tmpdir(), 'gantry-noshell-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await mkdir(path.join(root, 'app'));
  execFileSync('cp', ['/bin/busybox', path.join(root, 'app', 'busybox')]);
  execFileSync('sh', [
    '-c',
    `tar -C '${root}' -c . | docker import --change 'ENTRYPOINT ["/app/busybox", "sh", "-c", "/app/busybox echo out; /app/busybox echo err >&2"]' - ${noShell}`,
  ]);

  for (let round = 0; round < 2; round++) {
    const rec = recorder();
    const res = await ctx.executor.start(ctx.spec({ image: withEntry, command: '', mergeStderr: true }), rec.hooks).result;
    t.equal(res.outcome, 'succeeded', res.msg);
    t.ok(rec.stdout() === interleaved, `round ${round}: the image's own command, every line in order`);
    t.equal(rec.stderr(), '');
  }
  // Without /bin/sh nothing can join the streams: the task runs all the same, its streams read
  // apart (the second time from what the executor remembers of the image).
  for (let round = 0; round < 2; round++) {
    const rec = recorder();
    const res = await ctx.executor.start(ctx.spec({ image: noShell, command: '', mergeStderr: true }), rec.hooks).result;
    t.equal(res.outcome, 'succeeded', `round ${round}: ${res.msg}`);
    t.equal(rec.stdout(), 'out\n');
    t.equal(rec.stderr(), 'err\n');
  }
  t.same(await ours(ctx.id), [], 'no container left behind, the one made to look for /bin/sh included');
});

t.test('large output arrives whole and in order', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const res = await ctx.executor.start(ctx.spec({ command: 'seq 1 50000' }), rec.hooks).result;
  t.equal(res.outcome, 'succeeded');
  const expected = Array.from({ length: 50000 }, (_, i) => `${i + 1}\n`).join('');
  t.ok(rec.stdout() === expected, `stdout is 1..50000 (${rec.stdout().length} of ${expected.length} bytes)`);
});

t.test('a non-zero exit fails with the code', async (t) => {
  const ctx = await setup(t);
  const res = await ctx.executor.start(ctx.spec({ command: 'echo bye; exit 3' }), recorder().hooks).result;
  t.equal(res.outcome, 'failed');
  t.equal(res.exitCode, 3);
  t.match(res.msg, /3/);
  await assertCleanedUp(t, ctx);
});

t.test('the image default command runs when command is empty', async (t) => {
  const ctx = await setup(t);
  const res = await ctx.executor.start(ctx.spec({ command: '' }), recorder().hooks).result;
  t.equal(res.outcome, 'succeeded', res.msg);
});

t.test('a timeout: SIGTERM, then SIGKILL after the grace; timed_out', async (t) => {
  const ctx = await setup(t, { killGraceMs: 500 });
  const rec = recorder();
  const e = ctx.executor.start(ctx.spec({ command: 'sleep 30', timeoutS: 1 }), rec.hooks);
  await rec.started;
  const t0 = Date.now();
  const res = await e.result;
  const ms = Date.now() - t0;
  t.equal(res.outcome, 'timed_out');
  t.equal(res.msg, 'timed out after 1 s');
  t.ok(ms >= 900 && ms < 6000, `ended ${ms} ms after start`);
  await assertCleanedUp(t, ctx);
});

t.test('cancel: a task ignoring SIGTERM is SIGKILLed after the grace; cancelled', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const e = ctx.executor.start(ctx.spec({ command: 'trap "" TERM; echo ready; sleep 30; echo survived' }), rec.hooks);
  await rec.sawOnStdout('ready');
  const t0 = Date.now();
  e.cancel(500);
  const res = await e.result;
  const ms = Date.now() - t0;
  t.equal(res.outcome, 'cancelled');
  t.equal(res.exitCode, 137, 'killed by SIGKILL');
  t.ok(ms >= 450 && ms < 5000, `ended ${ms} ms after cancel (grace 500 ms)`);
  t.notMatch(rec.stdout(), /survived/);
  await assertCleanedUp(t, ctx);
});

t.test('cancel before the container starts: cancelled, nothing left', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const e = ctx.executor.start(ctx.spec({ command: 'sleep 30' }), rec.hooks);
  e.cancel(0);
  const res = await e.result;
  t.equal(res.outcome, 'cancelled');
  t.equal(rec.startedCount(), 0, 'never started');
  await assertCleanedUp(t, ctx);
});

t.test('kill: resolves when the container is gone', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const e = ctx.executor.start(ctx.spec({ command: 'echo ready; sleep 30' }), rec.hooks);
  await rec.sawOnStdout('ready');
  await e.kill();
  t.same(await ours(ctx.id), [], 'gone when kill() resolves');
  const res = await e.result;
  t.equal(res.outcome, 'cancelled');
  await assertCleanedUp(t, ctx);
});

t.test('out of memory: failed, oomKilled, the limit in the message', async (t) => {
  const ctx = await setup(t);
  const res = await ctx.executor.start(ctx.spec({ command: 'head -c 200m /dev/zero | tail', memoryMb: 32 }), recorder().hooks)
    .result;
  t.equal(res.outcome, 'failed');
  t.equal(res.oomKilled, true);
  t.match(res.msg, /out of memory/);
  t.match(res.msg, /32 MB/);
  await assertCleanedUp(t, ctx);
});

t.test('the progress file reaches onProgress; malformed content is ignored', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const res = await ctx.executor.start(
    ctx.spec({ command: `echo 'not json' > $PROGRESS_FILE; sleep 0.3; echo '{"percent":40,"msg":"half"}' > $PROGRESS_FILE; sleep 1` }),
    rec.hooks,
  ).result;
  t.equal(res.outcome, 'succeeded');
  t.same(rec.progress, [{ percent: 40, msg: 'half' }]);
});

t.test('a progress file that links to a host file is not followed', async (t) => {
  const ctx = await setup(t);
  const secret = path.join(ctx.workDir, 'host-secret.json');
  await writeFile(secret, '{"percent":99,"msg":"host secret"}');
  const rec = recorder();
  const res = await ctx.executor.start(
    ctx.spec({ command: `ln -s ${secret} $PROGRESS_FILE; sleep 0.5; rm $PROGRESS_FILE; echo '{"percent":1}' > $PROGRESS_FILE` }),
    rec.hooks,
  ).result;
  t.equal(res.outcome, 'succeeded', res.msg);
  t.same(rec.progress, [{ percent: 1 }], 'only the real file was read');
});

t.test('a zip code package is the read-only working directory', async (t) => {
  const ctx = await setup(t);
  const codeDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-code-'));
  t.teardown(() => rm(codeDir, { recursive: true, force: true }));
  await writeFile(path.join(codeDir, 'script.sh'), 'echo from-script\n');
  const rec = recorder();
  const res = await ctx.executor.start(
    ctx.spec({
      codeDir,
      command: 'pwd; cat ./script.sh; sh ./script.sh; if echo x > ./new 2>/dev/null; then echo writable; else echo read-only; fi',
    }),
    rec.hooks,
  ).result;
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(rec.stdout(), '/mnt/code\necho from-script\nfrom-script\nread-only\n');
  await t.rejects(access(path.join(codeDir, 'new')), 'nothing was written to the code dir');
});

t.test('the container: not privileged, network none, labels, memory limit', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const spec = ctx.spec({ command: 'echo ready; sleep 30', memoryMb: 48, attempt: 3 });
  const e = ctx.executor.start(spec, rec.hooks);
  const { containerId } = await rec.started;
  const info = await docker.getContainer(containerId).inspect();
  t.equal(info.State.Running, true);
  t.equal(info.HostConfig.Privileged, false);
  t.same(info.HostConfig.SecurityOpt, ['no-new-privileges']);
  t.equal(info.HostConfig.NetworkMode, 'none');
  t.equal(info.HostConfig.Memory, 48 * 1024 * 1024);
  t.equal(info.HostConfig.MemorySwap, 48 * 1024 * 1024, 'no swap on top');
  t.equal(info.Config.Tty, false);
  t.equal(info.Name, `/gantry-${spec.leaseId}`);
  t.match(info.Config.Labels, {
    'gantry.runner': ctx.runnerId,
    'gantry.task': spec.taskId,
    'gantry.lease': spec.leaseId,
    'gantry.attempt': '3',
    [TEST_LABEL]: ctx.id,
  });
  t.same(info.Config.Cmd, ['/bin/sh', '-c', spec.command]);
  t.ok(info.Mounts.some((m) => m.Destination === '/gantry/in' && m.RW === false), 'inputs read-only');
  t.ok(info.Mounts.some((m) => m.Destination === '/gantry/out' && m.RW === true), 'outputs writable');
  e.cancel(100);
  t.equal((await e.result).outcome, 'cancelled');
  const gone = await docker.getContainer(containerId).inspect().then(
    () => 0,
    (err: { statusCode?: number }) => err.statusCode,
  );
  t.equal(gone, 404, 'no such container afterwards');
});

t.test('leftovers finds this runner’s containers and remove removes them', async (t) => {
  const ctx = await setup(t);
  const make = (runner: string, lease: string) =>
    docker.createContainer({
      Image: IMAGE,
      Cmd: ['sleep', '30'],
      Labels: {
        'gantry.runner': runner,
        'gantry.task': `task-${lease}`,
        'gantry.lease': lease,
        'gantry.attempt': '2',
        [TEST_LABEL]: ctx.id,
      },
      HostConfig: { NetworkMode: 'none' },
    });
  const stopped = await make(ctx.runnerId, 'lease-a');
  const running = await make(ctx.runnerId, 'lease-b');
  await running.start();
  const other = await make(`${ctx.runnerId}-other`, 'lease-c');

  const found = (await ctx.executor.leftovers()).sort((a, b) => a.leaseId.localeCompare(b.leaseId));
  t.same(found, [
    { containerId: stopped.id, taskId: 'task-lease-a', leaseId: 'lease-a', attempt: 2, running: false },
    { containerId: running.id, taskId: 'task-lease-b', leaseId: 'lease-b', attempt: 2, running: true },
  ]);
  await ctx.executor.remove(stopped.id);
  await ctx.executor.remove(running.id);
  await ctx.executor.remove(running.id); // gone already: fine
  t.same(await ctx.executor.leftovers(), []);
  const left = await ours(ctx.id);
  t.same(
    left.map((c) => c.Id),
    [other.id],
    'another runner’s container is untouched',
  );
});

t.test('a missing image is the task\'s fault (task_fault), quickly', async (t) => {
  const ctx = await setup(t);
  const rec = recorder();
  const t0 = Date.now();
  const res = await ctx.executor.start(ctx.spec({ image: 'gantry-test/does-not-exist:1' }), rec.hooks).result;
  t.equal(res.outcome, 'task_fault');
  t.match(res.msg, /gantry-test\/does-not-exist:1/);
  t.ok(Date.now() - t0 < 15000, `answered in ${Date.now() - t0} ms`);
  t.equal(rec.startedCount(), 0);
  await assertCleanedUp(t, ctx);
});

t.test('very short tasks never lose output (20 in parallel)', async (t) => {
  const ctx = await setup(t);
  const runs = Array.from({ length: 20 }, (_, i) => {
    const rec = recorder();
    const e = ctx.executor.start(ctx.spec({ command: `echo hi${i}; echo e${i} >&2` }), rec.hooks);
    return e.result.then((res) => ({ res, rec, i }));
  });
  for (const { res, rec, i } of await Promise.all(runs)) {
    t.equal(res.outcome, 'succeeded', `task ${i}`);
    t.equal(rec.stdout(), `hi${i}\n`, `task ${i} stdout`);
    t.equal(rec.stderr(), `e${i}\n`, `task ${i} stderr`);
  }
  await assertCleanedUp(t, ctx);
});

t.test('an unreachable engine: ping names the socket', async (t) => {
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-exec-'));
  t.teardown(() => rm(workDir, { recursive: true, force: true }));
  await mkdir(workDir, { recursive: true });
  const executor = new DockerExecutor({
    docker: new Dockerode({ socketPath: '/nonexistent/docker.sock' }),
    runnerId: 'nobody',
    workDir,
    networkOverride: 'bridge',
    log: silentLogger(),
  });
  await t.rejects(executor.ping(), DockerUnavailableError);
  await t.rejects(executor.ping(), { message: /unreachable.*\/nonexistent\/docker\.sock/ });
  const res = await executor.start(
    {
      taskId: 't', leaseId: 'l-unreachable', attempt: 1, projectId: 'p', codeId: 'c', codeName: 'n', image: IMAGE,
      command: 'true', env: {}, payload: '', config: '', timeoutS: 5, memoryMb: 64,
    },
    recorder().hooks,
  ).result;
  t.equal(res.outcome, 'runner_error', res.msg);
  await executor.close();
});
