/**
 * The Docker executor tells the task's faults from the runner's, against the real engine:
 * an image that cannot be pulled or is not a valid reference, and a command that cannot be
 * executed, are the task's; a failed pull is remembered so that many tasks of one bad image
 * cost one pull. (The engine here has no registry: any image but the local test image fails
 * to pull, which is exactly the image-missing case.)
 */
import t, { type Test } from 'tap';
import Dockerode from 'dockerode';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DockerExecutor, type PullResult } from '../../../runner/executor/docker.ts';
import type { ExecHooks, TaskSpec } from '../../../runner/executor/types.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { RUN_ID } from '../../helpers/services.ts';

const IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';
const TEST_LABEL = 'gantry.test-run';
const docker = new Dockerode();
let seq = 0;

const hooks: ExecHooks = { onOutput: () => undefined, onStarted: () => undefined };

async function setup(t: Test, o: { pullFailureTtlMs?: number } = {}) {
  const id = `${RUN_ID}-f${++seq}`;
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-exec-'));
  const pulls: PullResult[] = [];
  const executor = new DockerExecutor({
    docker,
    runnerId: `test-runner-${id}`,
    workDir,
    networkOverride: 'none',
    labels: { [TEST_LABEL]: id },
    log: silentLogger(),
    onPull: (r) => pulls.push(r),
    ...(o.pullFailureTtlMs !== undefined ? { pullFailureTtlMs: o.pullFailureTtlMs } : {}),
  });
  t.teardown(async () => {
    await executor.close();
    for (const c of await docker.listContainers({ all: true, filters: { label: [`${TEST_LABEL}=${id}`] } })) {
      await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    }
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
  const count = (r: PullResult) => pulls.filter((x) => x === r).length;
  return { executor, spec, pulls, count };
}

t.test('ten tasks of an image that cannot be pulled: all the task\'s fault, one pull', async (t) => {
  const { executor, spec, count } = await setup(t);
  const image = `gantry-test/missing-${RUN_ID}:1`;
  const msg = `image "${image}" could not be pulled: `;
  const first = await Promise.all(Array.from({ length: 5 }, () => executor.start(spec({ image }), hooks).result));
  const later = await Promise.all(Array.from({ length: 5 }, () => executor.start(spec({ image }), hooks).result));
  for (const r of [...first, ...later]) {
    t.equal(r.outcome, 'task_fault', r.msg);
    t.ok(r.msg.startsWith(msg) && r.msg.endsWith("; check the code package's image"), `says what to fix: ${r.msg}`);
  }
  t.equal(count('failed'), 1, 'one pull');
  // Those started with it waited for it or, when their image check answered after it had
  // failed, failed from the memory of it; those started after it all failed from memory.
  t.equal(count('shared') + count('remembered'), 9, 'every other task failed from that one');
  t.ok(count('remembered') >= 5, 'the five started after it failed from the memory of it');
  t.equal(new Set([...first, ...later].map((r) => r.msg)).size, 1, 'all with the same message');

  // Other credentials are another key: the registry may answer them differently.
  const withAuth = await executor.start(spec({ image, dockerAuth: Buffer.from('u:p').toString('base64') }), hooks).result;
  t.equal(withAuth.outcome, 'task_fault');
  t.equal(count('failed'), 2, 'pulled again with other credentials');
  // A present image is never held back by a failure of another.
  t.equal((await executor.start(spec(), hooks).result).outcome, 'succeeded');
});

t.test('with the memory off, every task pulls', async (t) => {
  const { executor, spec, count } = await setup(t, { pullFailureTtlMs: 0 });
  const image = `gantry-test/missing-${RUN_ID}:2`;
  for (let i = 0; i < 3; i++) t.equal((await executor.start(spec({ image }), hooks).result).outcome, 'task_fault');
  t.equal(count('failed'), 3);
  t.equal(count('remembered'), 0);
});

t.test('invalid image references are the task\'s fault, said as such', async (t) => {
  const { executor, spec, pulls } = await setup(t);
  for (const image of ['Busybox:Latest', 'bad ref', '', 'a\u0000b', 'x::y']) {
    const r = await executor.start(spec({ image }), hooks).result;
    t.equal(r.outcome, 'task_fault', `${JSON.stringify(image)}: ${r.msg}`);
    t.match(r.msg, new RegExp(`^image ${JSON.stringify(image).replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')} (is not a valid image reference|could not be pulled: invalid reference format).*; check the code package's image$`));
  }
  t.same(pulls, [], 'refused before any pull');
});

t.test('a command that cannot be executed fails the task with exit 127 and says what to fix', async (t) => {
  const { executor, spec } = await setup(t);
  // An image whose own command does not exist in it (committed from the test image).
  const repo = `gantry-test/nocmd-${RUN_ID}`;
  const c = await docker.createContainer({ Image: IMAGE, Cmd: ['true'], Labels: { [TEST_LABEL]: `nocmd-${RUN_ID}` } });
  await c.commit({ repo, tag: 'latest', changes: ['CMD ["/no/such/program"]'] } as unknown as Record<string, unknown>);
  await c.remove({ force: true });
  t.teardown(() => docker.getImage(`${repo}:latest`).remove({ force: true }).catch(() => undefined));

  const fix = "exit code 127: command not found; check the code package's command and image";
  const own = await executor.start(spec({ image: `${repo}:latest`, command: '' }), hooks).result;
  t.match(own, { outcome: 'failed', exitCode: 127, msg: fix }, "the image's own command");
  const shell = await executor.start(spec({ command: 'no-such-program --flag' }), hooks).result;
  t.match(shell, { outcome: 'failed', exitCode: 127, msg: fix }, 'a command the shell cannot find');
  const notExec = await executor.start(spec({ command: '/etc/passwd' }), hooks).result;
  t.match(notExec, { outcome: 'failed', exitCode: 126, msg: "exit code 126: command not executable; check the code package's command and image" });
});
