/**
 * The container policy (lib/container-policy.ts) as the Docker executor applies it, each
 * setting read from inside a real container of the test image: capabilities, the pids
 * limit, device nodes, the read-only root filesystem and its /tmp, the user, the nofile
 * limit, and the files a non-root task is given. Every container carries
 * `gantry.test-run=<id>`; each test's teardown removes what carries its id.
 */
import t, { type Test } from 'tap';
import Dockerode from 'dockerode';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CONTAINER_DEFAULTS, type ContainerPolicyInput } from '../../../lib/container-policy.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { DockerExecutor } from '../../../runner/executor/docker.ts';
import type { ExecHooks, ExecResult, TaskSpec } from '../../../runner/executor/types.ts';
import { RUN_ID } from '../../helpers/services.ts';

const IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';
const TEST_LABEL = 'gantry.test-run';
const docker = new Dockerode();
let seq = 0;

/** Prints one `key=value` line per setting the policy governs, as seen from inside. */
const PROBE = [
  `echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"`,
  `echo "capbnd=$(grep CapBnd /proc/self/status | cut -f2)"`,
  // cgroup v2 puts the container's pids.max at the root of its cgroup mount, v1 under pids/.
  `echo "pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"`,
  `echo "nofile=$(ulimit -n)/$(ulimit -Hn)"`,
  `echo "uid=$(id -u) gid=$(id -g)"`,
  `if mknod /tmp/blk b 1 1 2>/dev/null; then echo mknod=ok; else echo mknod=refused; fi`,
  `if touch /rootfs-probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi`,
  `if touch /tmp/tmp-probe 2>/dev/null; then echo tmp=writable; else echo tmp=not-writable; fi`,
].join('; ');

/** A fresh executor, work dir and run id for one test; teardown removes its containers. */
async function setup(t: Test, o: { networkOverride?: string } = { networkOverride: 'none' }) {
  const id = `${RUN_ID}-cp-${++seq}`;
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-policy-'));
  const executor = new DockerExecutor({
    docker,
    runnerId: `test-runner-${id}`,
    workDir,
    ...(o.networkOverride ? { networkOverride: o.networkOverride } : {}),
    killGraceMs: 1000,
    labels: { [TEST_LABEL]: id },
    log: silentLogger(),
    progressPollMs: 50,
  });
  t.teardown(async () => {
    await executor.close();
    const left = await docker.listContainers({ all: true, filters: { label: [`${TEST_LABEL}=${id}`] } });
    for (const c of left) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  });
  let n = 0;
  const spec = (over: Partial<TaskSpec> = {}): TaskSpec => ({
    taskId: `task-${id}-${++n}`,
    leaseId: `lease-${id}-${n}`,
    attempt: 1,
    projectId: 'proj-1',
    codeId: 'code-1',
    codeName: 'policy',
    image: IMAGE,
    command: PROBE,
    env: {},
    payload: '{"secret":"payload"}',
    config: '{"k":"config"}',
    timeoutS: 60,
    memoryMb: 64,
    ...over,
  });
  /** Runs the spec to its end; the result, stdout, stderr, progress seen, and the container's HostConfig while it ran. */
  const run = async (over: Partial<TaskSpec> = {}) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const progress: { percent?: number; msg?: string }[] = [];
    let inspected: Promise<Dockerode.ContainerInspectInfo> | undefined;
    const hooks: ExecHooks = {
      onOutput: (s, d) => (s === 'stdout' ? out : err).push(d),
      onStarted: (i) => {
        // Inspected from the start hook: the container exists until its output is drained.
        inspected = docker.getContainer(i.containerId).inspect();
      },
      onProgress: (p) => progress.push(p),
    };
    const res: ExecResult = await executor.start(spec(over), hooks).result;
    const stdout = Buffer.concat(out).toString();
    return {
      res,
      stdout,
      stderr: Buffer.concat(err).toString(),
      progress,
      info: inspected ? await inspected : undefined,
      /** The `key=value` lines of PROBE as an object. */
      seen: Object.fromEntries(stdout.split('\n').filter((l) => /^[a-z]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])),
    };
  };
  return { id, workDir, executor, spec, run };
}

/** The CapEff bits of these capability numbers, as /proc/self/status prints them. */
function capHex(...bits: number[]): string {
  return bits.reduce((m, b) => m | (1n << BigInt(b)), 0n).toString(16).padStart(16, '0');
}

const CAP = { CHOWN: 0, KILL: 5, NET_BIND_SERVICE: 10, MKNOD: 27 };

t.test('an offer without a policy (an older control plane) runs with the locked-down defaults', async (t) => {
  const ctx = await setup(t);
  const { res, seen, info } = await ctx.run();
  t.equal(res.outcome, 'succeeded', res.msg);
  t.same(seen, {
    capeff: capHex(),
    capbnd: capHex(),
    pids: String(CONTAINER_DEFAULTS.pidsLimit),
    nofile: `${CONTAINER_DEFAULTS.nofile}/${CONTAINER_DEFAULTS.nofile}`,
    uid: '0 gid=0',
    mknod: 'refused',
    rootfs: 'writable',
    tmp: 'writable',
  }, 'no capability at all (not even in the bounding set), 1024 pids, 4096 files, no device nodes, the image\'s user');
  t.ok(info, 'inspected while it ran');
  t.equal(info!.HostConfig.Privileged, false, 'never privileged');
  t.same(info!.HostConfig.SecurityOpt, ['no-new-privileges']);
  t.same(info!.HostConfig.CapDrop, ['ALL']);
  t.same(info!.HostConfig.CapAdd ?? [], []);
  t.equal(info!.HostConfig.PidsLimit, 1024);
  t.equal(info!.HostConfig.ReadonlyRootfs, false);
  t.same(info!.HostConfig.Tmpfs ?? {}, {}, 'no tmpfs over a writable root filesystem: /tmp stays as big as the disk allows');
  t.same(info!.HostConfig.Ulimits, [{ Name: 'nofile', Soft: 4096, Hard: 4096 }]);
  t.equal(info!.Config.User, '', 'the image\'s own user');
});

t.test('a message with every field zero (as protobuf reads a missing one) is the defaults too', async (t) => {
  const ctx = await setup(t);
  const zero: ContainerPolicyInput = { capAdd: [], pidsLimit: 0, readOnlyRootfs: false, tmpSizeMb: 0, user: '', nofile: 0 };
  const { res, seen } = await ctx.run({ container: zero });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.match(seen, { capeff: capHex(), pids: '1024', nofile: '4096/4096', uid: '0 gid=0' });
});

t.test('cap_add gives exactly the listed capabilities back, in any spelling; nothing outside Docker\'s default set', async (t) => {
  const ctx = await setup(t);
  const { res, seen, info, stdout } = await ctx.run({
    container: { capAdd: ['chown', 'CAP_NET_BIND_SERVICE', 'Cap_Kill', 'mknod', 'SYS_ADMIN', 'CAP_SYS_PTRACE'] },
    command: `${PROBE}; if chown 5:5 /tmp/tmp-probe; then echo chown=ok; fi`,
  });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.capeff, capHex(CAP.CHOWN, CAP.KILL, CAP.NET_BIND_SERVICE, CAP.MKNOD), 'CHOWN, KILL, NET_BIND_SERVICE and MKNOD only');
  t.equal(seen.capbnd, seen.capeff, 'the bounding set holds no more');
  t.equal(seen.mknod, 'ok', 'with MKNOD added, mknod works: the default refusal is the dropped capability');
  t.match(stdout, /^chown=ok$/m);
  t.same(info!.HostConfig.CapAdd, ['CAP_CHOWN', 'CAP_KILL', 'CAP_MKNOD', 'CAP_NET_BIND_SERVICE'], 'SYS_ADMIN and SYS_PTRACE were left out by the runner');
  t.same(info!.HostConfig.CapDrop, ['ALL']);
});

t.test('pids_limit: the cgroup shows it and forking past it fails', async (t) => {
  const ctx = await setup(t);
  const { res, seen, stdout } = await ctx.run({
    container: { pidsLimit: 32 },
    command:
      `${PROBE}; (for i in $(seq 1 100); do sleep 30 & done) 2>/dev/null; echo "forkloop=$?"; ` +
      `n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "procs=$n"`,
  });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.pids, '32');
  t.not(seen.forkloop, '0', 'the fork loop failed');
  const procs = Number(/^procs=(\d+)$/m.exec(stdout)?.[1]);
  t.ok(procs > 1 && procs <= 32, `at most 32 processes existed (${procs})`);
});

t.test('read_only_rootfs: / refuses writes, /tmp is a bounded tmpfs, the task files and a zip package work', async (t) => {
  const ctx = await setup(t);
  const codeDir = await mkdtemp(path.join(os.tmpdir(), 'gantry-policy-code-'));
  t.teardown(() => rm(codeDir, { recursive: true, force: true }));
  await writeFile(path.join(codeDir, 'run.sh'), 'echo "from-zip payload=$(cat $PAYLOAD_FILE) config=$(cat $CONFIG_FILE)"\n');
  const { res, seen, stdout, progress, info } = await ctx.run({
    codeDir,
    container: { readOnlyRootfs: true, tmpSizeMb: 8 },
    command:
      `${PROBE}; sh ./run.sh; echo '{"percent":7,"msg":"ro"}' > $PROGRESS_FILE; ` +
      `if head -c 16m /dev/zero > /tmp/fill 2>/dev/null; then echo fill=fit; else echo "fill=full at $(($(wc -c < /tmp/fill) / 1048576)) MiB"; fi`,
  });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.rootfs, 'read-only', 'touch / fails');
  t.equal(seen.tmp, 'writable', 'touch /tmp works');
  t.match(stdout, /^from-zip payload=\{"secret":"payload"\} config=\{"k":"config"\}$/m, 'the zip package runs from its mount and reads the task files');
  t.match(stdout, /^fill=full at [78] MiB$/m, '/tmp holds at most its 8 MiB');
  t.same(progress, [{ percent: 7, msg: 'ro' }], 'the progress file is writable');
  t.equal(info!.HostConfig.ReadonlyRootfs, true);
  t.same(Object.keys(info!.HostConfig.Tmpfs ?? {}), ['/tmp']);
  t.match(info!.HostConfig.Tmpfs!['/tmp'], /(^|,)size=8m(,|$)/);
});

t.test('user: the task runs as it and can read its files and write its progress, whatever the runner\'s umask', async (t) => {
  const ctx = await setup(t);
  const umask = process.umask(0o077);
  t.teardown(() => void process.umask(umask));
  const { res, seen, stdout, progress, info } = await ctx.run({
    container: { user: '1000:1000' },
    command: `${PROBE}; echo "payload=$(cat $PAYLOAD_FILE) config=$(cat $CONFIG_FILE)"; echo '{"percent":50}' > $PROGRESS_FILE`,
  });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.uid, '1000 gid=1000');
  t.equal(seen.capeff, capHex(), 'and holds no capability');
  t.match(stdout, /^payload=\{"secret":"payload"\} config=\{"k":"config"\}$/m, 'PAYLOAD_FILE and CONFIG_FILE are readable');
  t.same(progress, [{ percent: 50 }], 'PROGRESS_FILE is writable');
  t.equal(info!.Config.User, '1000:1000');

  const named = await ctx.run({ container: { user: 'nobody' } });
  t.equal(named.res.outcome, 'succeeded', named.res.msg);
  t.equal(named.seen.uid, '65534 gid=65534', 'a name is looked up in the image');
});

t.test('a user the image does not have is the task\'s fault, not the runner\'s; a malformed one is never run', async (t) => {
  const ctx = await setup(t);
  const unknown = await ctx.run({ container: { user: 'nosuchuser' } });
  t.equal(unknown.res.outcome, 'task_fault', unknown.res.msg);
  t.match(unknown.res.msg, /container\.user nosuchuser.*unable to find user nosuchuser/);

  const bad = await ctx.run({ container: { user: 'root; rm -rf /' } });
  t.equal(bad.res.outcome, 'failed');
  t.match(bad.res.msg, /^not run: the container user "root; rm -rf \/" is not uid\[:gid\] or name\[:group\]$/);
  t.equal(bad.info, undefined, 'no container was started');
  t.same(await readdir(path.join(ctx.workDir, 'tasks')).catch(() => []), [], 'nothing left behind');
});

t.test('nofile: soft and hard limit alike', async (t) => {
  const ctx = await setup(t);
  const { res, seen, info } = await ctx.run({ container: { nofile: 256 } });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.nofile, '256/256');
  t.same(info!.HostConfig.Ulimits, [{ Name: 'nofile', Soft: 256, Hard: 256 }]);
});

t.test('values outside the bounds are clamped by the runner', async (t) => {
  const ctx = await setup(t);
  const { res, seen } = await ctx.run({ container: { pidsLimit: 3, nofile: 10 } });
  t.equal(res.outcome, 'succeeded', res.msg);
  t.equal(seen.pids, '16', 'pids at least 16');
  t.equal(seen.nofile, '64/64', 'nofile at least 64');
});

/** The interfaces a container sees and the IPv4 addresses on them, from inside. */
const NET_PROBE = `for i in /sys/class/net/*; do echo "if=$(basename $i)"; done; ip -4 -o addr | awk '{print "addr=" $4}'`;
const seenNet = (stdout: string) => ({
  ifs: [...stdout.matchAll(/^if=(.+)$/gm)].map((m) => m[1]!).sort(),
  addrs: [...stdout.matchAll(/^addr=(.+)$/gm)].map((m) => m[1]!),
});

t.test("network: the cluster's none, host or a named network; the runner's override wins; a missing network is said", async (t) => {
  const ctx = await setup(t, {});
  const none = await ctx.run({ container: { network: 'none' }, command: NET_PROBE });
  t.equal(none.res.outcome, 'succeeded', none.res.msg);
  t.same(seenNet(none.stdout).ifs, ['lo'], 'none: loopback only');
  t.equal(none.info!.HostConfig.NetworkMode, 'none');

  const host = await ctx.run({ container: { network: 'host' }, command: NET_PROBE });
  t.equal(host.res.outcome, 'succeeded', host.res.msg);
  t.same(seenNet(host.stdout).ifs, (await readdir('/sys/class/net')).sort(), "host: the host's own interfaces");
  t.equal(host.info!.HostConfig.NetworkMode, 'host');

  // A network of the operator's, made on this engine (its bridge is a Linux bridge of its own).
  const name = `gantry-test-${ctx.id}`;
  const net = await docker.createNetwork({ Name: name, Driver: 'bridge', Labels: { [TEST_LABEL]: ctx.id } });
  t.teardown(() => net.remove().catch(() => undefined));
  const subnet = String((await net.inspect()).IPAM?.Config?.[0]?.Subnet);
  const named = await ctx.run({ container: { network: name }, command: NET_PROBE });
  t.equal(named.res.outcome, 'succeeded', named.res.msg);
  const seen = seenNet(named.stdout);
  t.same(seen.ifs, ['eth0', 'lo'], 'an interface on the named network');
  const prefix = subnet.split('.').slice(0, 2).join('.');
  t.ok(seen.addrs.some((a) => a.startsWith(`${prefix}.`)), `an address in ${subnet}: ${seen.addrs.join(', ')}`);
  t.equal(named.info!.HostConfig.NetworkMode, name);

  const missing = await ctx.run({ container: { network: `${name}-gone` }, command: NET_PROBE });
  t.equal(missing.res.outcome, 'failed', 'the operator\'s setting: neither the task\'s fault nor the runner\'s');
  t.match(missing.res.msg, new RegExp(`container network "${name}-gone" does not exist on this runner's Docker engine`));

  const bad = await ctx.run({ container: { network: 'container:abc' }, command: NET_PROBE });
  t.equal(bad.res.outcome, 'failed', "another container's namespace is never joined");
  t.match(bad.res.msg, /not run: the container network "container:abc" is not none, bridge, host or a network's name/);

  const overridden = await setup(t, { networkOverride: 'none' });
  const o = await overridden.run({ container: { network: 'host' }, command: NET_PROBE });
  t.equal(o.res.outcome, 'succeeded', o.res.msg);
  t.same(seenNet(o.stdout).ifs, ['lo'], "the runner's GANTRY_RUNNER_NETWORK wins over the cluster's host");
});

