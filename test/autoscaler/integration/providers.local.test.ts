/**
 * The `local` provider with real runner processes (`runner/main.ts`, noop executor). No
 * control plane is needed: GANTRY_CONTROL_PLANE points at a closed 127.0.0.1 port, so each
 * runner starts, keeps retrying its stream, and drains at once on SIGTERM (nothing running).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ConfigError } from '../../../lib/errors.ts';
import { isRunnerProcess, LocalProvider, type LocalProviderOptions } from '../../../autoscaler/providers/local.ts';
import { ProviderError, QuotaError, TAG_CLUSTER, TAG_INTENT, TAG_MANAGED } from '../../../autoscaler/providers/types.ts';
import { tempDir } from '../../helpers/db.ts';
import { until } from '../../helpers/runner.ts';

const CL = '65a1b2c3d4e5f60718293a4b';
const OTHER = '65a1b2c3d4e5f60718293aff';
const TOKEN = 'runner-token-never-logged';

/** A 127.0.0.1 port nothing listens on (taken from the OS, then released). */
async function unusedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** Polls `cond` until true; fails naming `what` after `ms`. */
async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function environ(pid: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean)) {
    const i = kv.indexOf('=');
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

interface StateRecord {
  instanceId: string;
  clusterId: string;
  intentId: string;
  pid: number | null;
  launchedAt: string;
  state: string;
  stopRequestedAt?: string;
  exit?: string;
}
const readState = (dataDir: string) => JSON.parse(fs.readFileSync(path.join(dataDir, 'instances', 'state.json'), 'utf8')) as { version: 1; instances: StateRecord[] };
const writeState = (dataDir: string, instances: StateRecord[]) => {
  fs.mkdirSync(path.join(dataDir, 'instances'), { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'instances', 'state.json'), JSON.stringify({ version: 1, instances }));
};

/**
 * A factory of providers on one dataDir. Teardown drains every provider still open and then
 * SIGKILLs any runner this test launched that is somehow still there.
 */
async function setup(t: Test) {
  const dataDir = tempDir(t, 'gantry-local-provider-');
  const port = await unusedPort();
  const open = new Set<LocalProvider>();
  const launched = new Map<string, number>();
  const tokenAsks: string[] = [];
  t.teardown(async () => {
    for (const p of open) await p.close({ stopInstances: true }).catch(() => undefined);
    for (const [id, pid] of launched) if (isRunnerProcess(pid, id)) process.kill(pid, 'SIGKILL');
  });
  const make = (o: Partial<LocalProviderOptions> = {}) => {
    const p = new LocalProvider({
      dataDir,
      controlPlane: `127.0.0.1:${port}`,
      clusterToken: (id) => {
        tokenAsks.push(id);
        return TOKEN;
      },
      slotsPerInstance: 3,
      executor: 'noop',
      extraEnv: { LOG_LEVEL: 'info' },
      ...o,
    });
    open.add(p);
    const close = p.close.bind(p);
    p.close = async (opts) => {
      await close(opts);
      open.delete(p);
    };
    const launch = p.launch.bind(p);
    p.launch = async (spec) => {
      const out = await launch(spec);
      for (const i of out.instances) launched.set(i.instanceId, Number(i.tags['gantry:pid']));
      return out;
    };
    return p;
  };
  /** Resolves once the runner logged "runner started" (its SIGTERM handler is installed). */
  const started = (p: LocalProvider, id: string) =>
    waitFor(`${id} to start`, () => fs.existsSync(p.logFile(id)) && fs.readFileSync(p.logFile(id), 'utf8').includes('"msg":"runner started"'));
  return { dataDir, port, make, started, tokenAsks };
}

t.test('launch, list, idempotent intent, terminate, crash-free adoption by a new provider', async (t) => {
  const s = await setup(t);
  process.env.GANTRY_TEST_SECRET_NOT_INHERITED = 'database-password';
  t.teardown(() => void delete process.env.GANTRY_TEST_SECRET_NOT_INHERITED);
  const a = s.make();

  const out = await a.launch({ clusterId: CL, intentId: 'intent-1', count: 2, userData: '#cloud-config\n' });
  t.equal(out.instances.length, 2);
  t.notOk(out.shortfall);
  const [i1, i2] = out.instances.map((i) => i.instanceId) as [string, string];
  for (const i of out.instances) {
    t.match(i.instanceId, /^local-[0-9a-f]{12}$/);
    t.equal(i.state, 'running');
    t.same(i.tags, { [TAG_CLUSTER]: CL, [TAG_MANAGED]: 'true', [TAG_INTENT]: 'intent-1', 'gantry:pid': i.tags['gantry:pid'] });
    t.equal(i.intentId, 'intent-1');
  }
  t.same(s.tokenAsks, [CL]);
  await Promise.all([s.started(a, i1), s.started(a, i2)]);

  // The processes are real runners with their own environment, work dir and process group.
  const state = readState(s.dataDir);
  t.same(state.instances.map((r) => [r.instanceId, r.state]), [[i1, 'running'], [i2, 'running']]);
  for (const r of state.instances) {
    const pid = r.pid!;
    t.ok(isRunnerProcess(pid, r.instanceId), `${r.instanceId} is a live runner`);
    const env = environ(pid);
    t.equal(env.GANTRY_INSTANCE_ID, r.instanceId);
    t.equal(env.GANTRY_CLUSTER_ID, CL);
    t.equal(env.GANTRY_CLUSTER_TOKEN, TOKEN);
    t.equal(env.GANTRY_CONTROL_PLANE, `127.0.0.1:${s.port}`);
    t.equal(env.GANTRY_RUNNER_SLOTS, '3');
    t.equal(env.GANTRY_RUNNER_EXECUTOR, 'noop');
    t.equal(env.GANTRY_RUNNER_HEALTH_PORT, '-1');
    t.equal(env.GANTRY_RUNNER_WORK_DIR, path.join(s.dataDir, 'instances', r.instanceId));
    t.equal(env.GANTRY_TEST_SECRET_NOT_INHERITED, undefined, 'the control plane environment is not handed down');
    const pgrp = Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[2]);
    t.equal(pgrp, pid, 'detached: leads its own process group');
    t.ok(fs.existsSync(path.join(s.dataDir, 'instances', r.instanceId, 'runner-id')), 'runner id kept in its work dir');
  }
  t.notMatch(fs.readFileSync(path.join(s.dataDir, 'instances', 'state.json'), 'utf8'), TOKEN, 'no token in the state file');

  const l1 = await a.list(CL);
  t.same(l1.instances.map((i) => [i.instanceId, i.state]), [[i1, 'running'], [i2, 'running']]);
  t.same((await a.list(OTHER)).instances, [], 'another cluster lists nothing');

  // The same intent again (also marked resumed) launches nothing.
  const again = await a.launch({ clusterId: CL, intentId: 'intent-1', count: 2, userData: '', resumed: true });
  t.same(again.instances.map((i) => i.instanceId), [i1, i2]);
  t.notOk(again.shortfall);
  t.equal(readState(s.dataDir).instances.length, 2);
  t.same(s.tokenAsks, [CL], 'a settled intent does not even ask for the token');

  // Another cluster cannot terminate them.
  t.same(await a.terminate(OTHER, [i1]), []);
  t.same(await a.terminate(CL, ['local-000000000000']), [], 'unknown ids are left out');
  t.equal((await a.list(CL)).instances.find((i) => i.instanceId === i1)?.state, 'running');

  // Terminate one: SIGTERM, the runner drains and exits 0 on its own.
  const pid1 = readState(s.dataDir).instances[0]!.pid!;
  t.same(await a.terminate(CL, [i1]), [i1]);
  t.equal(readState(s.dataDir).instances[0]!.state, 'shutting-down');
  await waitFor('i1 to exit', async () => (await a.list(CL)).instances.find((i) => i.instanceId === i1)?.state === 'terminated');
  t.notOk(alive(pid1));
  t.equal(readState(s.dataDir).instances[0]!.exit, 'exit 0', 'drained and exited by itself (no SIGKILL)');
  t.match(fs.readFileSync(a.logFile(i1), 'utf8'), /"signal":"SIGTERM".*draining/s, 'the runner logged its drain to its own log file');
  t.same(await a.terminate(CL, [i1]), [i1], 'terminating a terminated instance is idempotent');

  // Only one provider per dataDir in a process.
  t.throws(() => s.make(), ProviderError);

  // The control plane "restarts": a new provider on the same dataDir adopts the survivor.
  await a.close();
  const pid2 = readState(s.dataDir).instances[1]!.pid!;
  t.ok(isRunnerProcess(pid2, i2), 'close() leaves runners running');
  // A forged record naming the survivor's pid under another instance id, shutting down since
  // long ago: adopting it would SIGKILL the survivor at once. It must not be adopted.
  const forged = 'local-cccccccccccc';
  writeState(s.dataDir, [
    ...readState(s.dataDir).instances,
    { instanceId: forged, clusterId: CL, intentId: 'intent-x', pid: pid2, launchedAt: new Date(0).toISOString(), state: 'shutting-down', stopRequestedAt: new Date(0).toISOString() },
  ]);
  const b = s.make();
  const l2 = await b.list(CL);
  t.same(l2.instances.map((i) => [i.instanceId, i.state]), [[i1, 'terminated'], [i2, 'running'], [forged, 'terminated']]);
  const resumed = await b.launch({ clusterId: CL, intentId: 'intent-1', count: 2, userData: '', resumed: true });
  t.same(resumed.instances.map((i) => [i.instanceId, i.state]), [[i1, 'terminated'], [i2, 'running']], 'the intent is still settled after a restart');
  t.same(s.tokenAsks, [CL]);
  t.same(await b.terminate(CL, [forged]), [forged], 'the forged one is already terminated');
  t.ok(isRunnerProcess(pid2, i2), 'the survivor was not signalled through the forged record');

  t.same(await b.terminate(CL, [i2]), [i2]);
  await waitFor('i2 to exit', () => !alive(pid2));
  t.equal((await b.list(CL)).instances.find((i) => i.instanceId === i2)?.state, 'terminated');
  t.match(fs.readFileSync(b.logFile(i2), 'utf8'), /"signal":"SIGTERM"/, 'drained through SIGTERM');
  await b.close();
});

t.test('maxInstances caps the host: shortfall with a QuotaError; a crashed runner is not restarted', async (t) => {
  const s = await setup(t);
  const p = s.make({ maxInstances: 1 });
  t.equal(p.health().instanceQuota, 1);
  t.same(p.health().breakers, []);

  const out = await p.launch({ clusterId: CL, intentId: 'i-a', count: 2, userData: '' });
  t.equal(out.instances.length, 1);
  t.equal(out.shortfall?.count, 1);
  t.equal(out.shortfall?.reason, 'quota');
  t.type(out.shortfall?.error, QuotaError);
  t.equal((out.shortfall?.error as QuotaError).cap, 1);
  await t.rejects(p.launch({ clusterId: CL, intentId: 'i-b', count: 1, userData: '' }), QuotaError, 'nothing fits: launch throws');

  // kill -9: the instance shows as terminated and nothing is launched in its place.
  const id = out.instances[0]!.instanceId;
  const pid = Number(out.instances[0]!.tags['gantry:pid']);
  await s.started(p, id);
  process.kill(pid, 'SIGKILL');
  await waitFor('the crashed instance to list as terminated', async () => (await p.list(CL)).instances[0]?.state === 'terminated');
  t.equal(readState(s.dataDir).instances[0]!.exit, 'signal SIGKILL');
  t.equal((await p.list(CL)).instances.length, 1, 'not restarted');

  // The cap counts live instances only: a new intent fits again.
  const next = await p.launch({ clusterId: CL, intentId: 'i-c', count: 1, userData: '' });
  t.equal(next.instances.length, 1);
  t.notOk(next.shortfall);
  t.same(await p.stopAll({ graceMs: 20_000 }), [next.instances[0]!.instanceId]);
  t.equal((await p.list(CL)).instances.filter((i) => i.state !== 'terminated').length, 0);
});

t.test('a reused pid is never adopted or signalled', async (t) => {
  const s = await setup(t);
  const sleeper = spawn('sleep', ['300'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => sleeper.on('exit', resolve));
  t.teardown(async () => {
    sleeper.kill('SIGKILL');
    await exited;
  });
  const pid = sleeper.pid!;
  const old = new Date(0).toISOString();
  writeState(s.dataDir, [
    { instanceId: 'local-aaaaaaaaaaaa', clusterId: CL, intentId: 'i-1', pid, launchedAt: old, state: 'running' },
    { instanceId: 'local-bbbbbbbbbbbb', clusterId: CL, intentId: 'i-1', pid, launchedAt: old, state: 'shutting-down', stopRequestedAt: old },
    // Written before a spawn that never happened: no process carries this id.
    { instanceId: 'local-dddddddddddd', clusterId: CL, intentId: 'i-2', pid: null, launchedAt: old, state: 'pending' },
  ]);
  const p = s.make({ graceMs: 0 });
  t.same(
    (await p.list(CL)).instances.map((i) => [i.instanceId, i.state]),
    [['local-aaaaaaaaaaaa', 'terminated'], ['local-bbbbbbbbbbbb', 'terminated'], ['local-dddddddddddd', 'terminated']],
  );
  t.same(await p.terminate(CL, ['local-aaaaaaaaaaaa']), ['local-aaaaaaaaaaaa']);
  t.same(await p.stopAll(), []);
  // A negative: give a wrongly armed SIGKILL timer (graceMs 0) time to fire before looking.
  await new Promise((r) => setTimeout(r, 200));
  t.ok(alive(pid), 'the unrelated process was not signalled');
  t.equal(sleeper.exitCode, null);
  t.equal(sleeper.signalCode, null);
  await p.close({ stopInstances: true });
  t.ok(alive(pid));
});

t.test('state file and options are checked', async (t) => {
  const s = await setup(t);
  t.throws(() => s.make({ controlPlane: 'http://127.0.0.1:1' }), ConfigError);
  t.throws(() => s.make({ slotsPerInstance: -1 }), ConfigError);
  t.throws(() => s.make({ maxInstances: 1.5 }), ConfigError);
  fs.mkdirSync(path.join(s.dataDir, 'instances'), { recursive: true });
  fs.writeFileSync(path.join(s.dataDir, 'instances', 'state.json'), '{"version": 1, "insta');
  t.throws(() => s.make(), { code: 'provider_error', cloudCode: 'StateUnreadable' });
  fs.rmSync(path.join(s.dataDir, 'instances', 'state.json'));
  const p = s.make();
  await t.rejects(p.launch({ clusterId: CL, intentId: 'i', count: 0, userData: '' }), { code: 'provider_error', cloudCode: 'InvalidParameterValue' });
  await p.close();
  await t.rejects(p.list(CL), { code: 'provider_error', cloudCode: 'ProviderClosed' });
});

t.test('a runner that does not drain is SIGKILLed after the grace', async (t) => {
  const s = await setup(t);
  const p = s.make({ graceMs: 300 });
  const out = await p.launch({ clusterId: CL, intentId: 'i-stuck', count: 1, userData: '' });
  const id = out.instances[0]!.instanceId;
  const pid = Number(out.instances[0]!.tags['gantry:pid']);
  await s.started(p, id);
  // A stopped process cannot act on SIGTERM: it stands for a runner whose drain never ends.
  process.kill(pid, 'SIGSTOP');
  t.same(await p.terminate(CL, [id]), [id]);
  t.equal((await p.list(CL)).instances[0]!.state, 'shutting-down');
  await waitFor('the stuck runner to be killed', async () => (await p.list(CL)).instances[0]?.state === 'terminated', 10_000);
  t.equal(readState(s.dataDir).instances[0]!.exit, 'signal SIGKILL');
  t.notOk(alive(pid));
});

t.test('a record written before its spawn recorded a pid is resolved by the instance id', async (t) => {
  const s = await setup(t);
  const a = s.make();
  const out = await a.launch({ clusterId: CL, intentId: 'i-crash', count: 1, userData: '' });
  const id = out.instances[0]!.instanceId;
  const pid = Number(out.instances[0]!.tags['gantry:pid']);
  await s.started(a, id);
  await a.close();
  // As if the control plane died between the spawn and the second write of the state file.
  writeState(s.dataDir, readState(s.dataDir).instances.map((r) => ({ ...r, pid: null, state: 'pending' })));
  const b = s.make();
  const l = await b.list(CL);
  // Said when it fails: what the process looked like and what the runner last logged.
  const proc = () => {
    try {
      return `cmdline ${JSON.stringify(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean))}, state ${/^State:\s*(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]}`;
    } catch (err) {
      return (err as Error).message;
    }
  };
  t.same(l.instances.map((i) => [i.instanceId, i.state, i.tags['gantry:pid']]), [[id, 'running', String(pid)]],
    `adopted by its instance id (pid ${pid}: ${proc()}; its log ends ${JSON.stringify(fs.readFileSync(a.logFile(id), 'utf8').slice(-600))})`);
  t.same(await b.stopAll(), [id]);
  // Adopted, not our child: it may stay a zombie a moment until its parent (this test
  // process, through the first provider's handle) reaps it.
  await until('the adopted runner is gone', async () => !alive(pid), 5000, 20);
  t.equal((await b.list(CL)).instances[0]!.state, 'terminated');
});
