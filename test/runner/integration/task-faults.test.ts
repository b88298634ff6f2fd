// Whose fault is it: a task that cannot run through its own fault (an image that cannot be
// pulled, a zip package that is a bomb or climbs out of its directory) ends `error` with a
// message saying what to fix, spends its own retries, and never penalises the runner; a
// runner that fails through its own fault is penalised, and the penalty survives a
// reconnect, to the same replica or another. Rejects: one for the image is the task's
// fault, one while draining is no fault, any other is the runner's. Real control planes,
// real runner processes (and a hand-driven protocol client for rejects), the real Docker
// engine (which has no registry here: pulling any image but the local test image fails).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { newId } from '../../../lib/ids.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { systemClock } from '../../../lib/clock.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { DrainMode, RejectReason } from '../../../proto/gen/gantry/runner/v1/runner.ts';
import { startTestApi, uploadCode, type ApiUser, type TestApi } from '../../helpers/api.ts';
import { ENGINES } from '../../helpers/db.ts';
import { FAST_TIMERS, finalOf, leasesOf, metric, metricAt, queueTasks, spawnRunnerProcess, taskRow } from '../../helpers/faults.ts';
import { freePort } from '../../helpers/pg-instance.ts';
import { connectProtocolClient, type ProtocolClient } from '../../helpers/protocol.ts';
import { runnerEnv, spawnRunner, startTestRunner, testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';
import { pgAdminUrl, RUN_ID } from '../../helpers/services.ts';
import { makeZip, treeOf } from '../../helpers/zip.ts';

/**
 * A penalty long enough that a penalised runner would take nothing more in any of these
 * tests: a task that needs it completing proves it was not penalised (no timing involved).
 */
const LONG_PENALTY = { GANTRY_RUNNER_PENALTY_BASE_MS: '600000', GANTRY_RUNNER_PENALTY_MAX_MS: '600000' };
const MiB = 1024 * 1024;
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

interface PenaltyRow {
  penalty_ms: number;
  penalty_until: Date | null;
  penalty_reason: string | null;
  connected_at: Date;
  last_beat_at: Date;
}

async function penaltyOf(api: TestApi, runnerId: string): Promise<PenaltyRow> {
  return (
    await api.store.db.query<PenaltyRow>('SELECT penalty_ms, penalty_until, penalty_reason, connected_at, last_beat_at FROM runners WHERE id = $1', [runnerId])
  ).rows[0]!;
}

async function queueAs(u: ApiUser, code: string, n = 1): Promise<string[]> {
  const r = await u.project('POST', '/tasks', { json: { tasks: Array.from({ length: n }, () => ({ code_name: code })) } });
  if (r.status !== 200) throw new Error(`queue failed: ${r.status} ${r.text}`);
  return (r.body.tasks as { id: string }[]).map((x) => x.id);
}

async function links(api: TestApi, id: string) {
  return (
    await api.store.db.query<{ retry_task_id: string | null; original_task_id: string | null; retry_count: number }>(
      'SELECT retry_task_id, original_task_id, retry_count FROM tasks WHERE id = $1',
      [id],
    )
  ).rows[0]!;
}

for (const engine of ENGINES) {
  t.test(`an image that cannot be pulled: the task's fault, one pull for all, the runner not penalised (${engine})`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: { ...FAST_TIMERS, ...LONG_PENALTY } });
    const cluster = await testCluster(api);
    // The only runner of the cluster: had it been penalised, nothing else could run.
    const runner = await spawnRunnerProcess(t, api, cluster, { GANTRY_RUNNER_SLOTS: '2', GANTRY_RUNNER_PULL_FAILURE_TTL_S: '3600' });
    const other = await api.newUser();
    let up = await uploadCode(api.user, { name: 'typo', image: 'busybox:nope', command: 'echo never', retries: 1, retries_delay: 0 });
    t.equal(up.status, 200, up.text);
    up = await uploadCode(other, { name: 'hello', image: TEST_IMAGE, command: 'echo hello-from-b' });
    t.equal(up.status, 200, up.text);

    const bad = await queueTasks(api, 'typo', 10);
    const [good] = await queueAs(other, 'hello');

    const goodRow = await finalOf(api, good!, 60000, { log: true });
    t.match(goodRow, { status: 'complete', runner_id: runner.runnerId, runner_losses: 0 }, "another user's task runs on the same runner");
    t.equal((await other.project('GET', `/tasks/${good}/log`)).text, 'hello-from-b\n');

    const msg = /^image "busybox:nope" could not be pulled: .+; check the code package's image$/;
    for (const id of bad) {
      const row = await finalOf(api, id);
      t.match(row, { status: 'error', msg, run_times: 0, runner_losses: 0 }, `task ${id}: error, saying what to fix, no internal retry`);
      const leases = await leasesOf(api, id);
      t.same(leases.map((l) => [l.runner_id, l.outcome]), [[runner.runnerId, 'error']], 'one lease, ended error');
      // Its own retries: one new linked task, which fails the same way and has none left.
      const l = await links(api, id);
      t.ok(l.retry_task_id, 'a retry was queued');
      const retry = await finalOf(api, l.retry_task_id!);
      t.match(retry, { status: 'error', msg, runner_losses: 0 }, 'the retry ends error too');
      t.match(await links(api, retry.id), { original_task_id: id, retry_task_id: null, retry_count: 1 }, 'linked to the original, no retry left');
    }
    const all = await api.store.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE code_name = 'typo'`);
    t.equal(all.rows[0]!.n, 20, 'ten tasks and one retry each, nothing more');

    const p = await penaltyOf(api, runner.runnerId);
    t.match(p, { penalty_ms: 0, penalty_until: null }, 'no penalty in the store');
    t.equal(api.cp.dispatcher.session(runner.runnerId)?.penalty.until, 0, 'nor in the session');

    const pulls = (result: string) => metricAt(`http://127.0.0.1:${runner.healthPort}/metrics`, 'gantry_runner_image_pulls_total', { result });
    t.equal(await pulls('failed'), 1, 'twenty tasks of the bad image: one pull');
    t.equal((await pulls('remembered')) + (await pulls('shared')), 19, 'the others failed from that one');
    t.equal(await pulls('pulled'), 0);
  });
}

t.test('zip packages that are bombs, liars or climb out: the task\'s fault, nothing left on the runner (pglite)', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: { ...FAST_TIMERS, ...LONG_PENALTY } });
  const cluster = await testCluster(api);
  const runner = await spawnRunnerProcess(t, api, cluster, {
    GANTRY_RUNNER_SLOTS: '2',
    GANTRY_RUNNER_ZIP_MAX_UNPACKED_MB: '1',
    GANTRY_RUNNER_ZIP_MAX_ENTRIES: '50',
  });
  const upload = async (name: string, zip: Buffer, command = 'ls') => {
    const r = await uploadCode(api.user, { name, image: TEST_IMAGE, command }, { data: zip, name: `${name}.zip` });
    t.equal(r.status, 200, r.text);
  };
  const good = makeZip([{ name: 'run.sh', data: Buffer.from('#!/bin/sh\necho from-zip\n'), mode: 0o755 }]);
  // 8 MiB of zeros in a few KiB; within the control plane's limits, beyond this runner's.
  await upload('bomb', makeZip([{ name: 'bomb.bin', data: Buffer.alloc(8 * MiB) }]));
  // Declares 10 bytes, holds 4 MiB: only counting while unpacking finds it out.
  await upload('liar', makeZip([{ name: 'ok.txt', data: Buffer.from('ok') }, { name: 'liar.bin', data: Buffer.alloc(4 * MiB), declaredSize: 10 }]));
  await upload('many', makeZip(Array.from({ length: 60 }, (_, i) => ({ name: `f${i}.txt`, data: Buffer.from(String(i)) }))));
  await upload('good', good, './run.sh');
  // A package stored before uploads were checked (straight into the store: the API refuses it).
  const escape = makeZip([{ name: 'fine.txt', data: Buffer.from('fine') }, { name: '../escaped.txt', data: Buffer.from('pwned') }]);
  await api.store.codes.upload(api.user.projectId, 'escape', { image: TEST_IMAGE, command: 'ls' }, { data: escape, fileName: 'escape.zip', checksum: md5(escape) });

  const ids = Object.fromEntries(await Promise.all(['bomb', 'liar', 'many', 'escape', 'good'].map(async (c) => [c, (await queueTasks(api, c))[0]!] as const)));
  const fix = '; fix the zip and upload the code package again';
  const expect: Record<string, RegExp> = {
    bomb: new RegExp(`^the code package cannot be used: the zip unpacks to ${8 * MiB} bytes; at most ${MiB} are allowed${fix}$`),
    liar: new RegExp(`^the code package cannot be used: entry "liar\\.bin" cannot be unpacked: too many bytes in the stream\\. expected 10\\..*${fix}$`),
    many: new RegExp(`^the code package cannot be used: the zip holds 60 entries; at most 50 are allowed${fix}$`),
    escape: new RegExp(`^the code package cannot be used: entry "\\.\\./escaped\\.txt" is not a relative path inside the package${fix}$`),
  };
  for (const [code, msg] of Object.entries(expect)) {
    const row = await finalOf(api, ids[code]!);
    t.match(row, { status: 'error', msg, run_times: 0, runner_losses: 0 }, `${code}: error, naming the limit or the entry`);
    t.same((await leasesOf(api, ids[code]!)).map((l) => l.outcome), ['error'], `${code}: one lease, no internal retry`);
  }
  const ok = await finalOf(api, ids.good!, 60000, { log: true });
  t.match(ok, { status: 'complete', runner_id: runner.runnerId }, 'a good package still runs on the same runner');
  t.equal((await api.user.project('GET', `/tasks/${ids.good}/log`)).text, 'from-zip\n');

  t.same(await treeOf(path.join(runner.workDir, 'code')), [md5(good), `${md5(good)}/.complete`, `${md5(good)}/run.sh`], 'only the good package is on disk: no partial unpack, no tmp directory');
  t.same((await treeOf(runner.workDir)).filter((f) => f.endsWith('escaped.txt')), [], 'nothing escaped into the work directory');
  t.match(await penaltyOf(api, runner.runnerId), { penalty_ms: 0, penalty_until: null }, 'the runner is not penalised');
  t.equal(runner.proc.exitCode, null, 'the runner process is still running');
});

t.test("a runner's own fault penalises it, and the penalty holds after it reconnects to another replica (postgres)", async (t) => {
  const a = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST_TIMERS, ...LONG_PENALTY, GANTRY_SERVER_ID: `cp-a-${RUN_ID}` } });
  // Replica B on the same database.
  const { db } = (await a.store.db.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!;
  const url = new URL(pgAdminUrl());
  url.pathname = `/${db}`;
  const storeB = await openStore(
    { databaseUrl: url.toString(), dataDir: path.join(os.tmpdir(), 'unused'), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 },
    silentLogger(),
    systemClock,
    newId,
  );
  t.teardown(() => storeB.close());
  const cpB = await startControlPlane(
    loadConfig({ GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent', GANTRY_SERVER_ID: `cp-b-${RUN_ID}`, ...FAST_TIMERS, ...LONG_PENALTY }),
    silentLogger(),
    { store: storeB, scheduler: false },
  );
  t.teardown(() => cpB.stop());
  const b = { ...a, cp: cpB, store: storeB } as TestApi;

  const cluster = await testCluster(a);
  t.equal((await uploadCode(a.user, { name: 'hello', image: TEST_IMAGE, command: 'echo hello' })).status, 200);
  const r1 = await spawnRunnerProcess(t, a, cluster);
  // Its disk breaks: a file where its task directories go (as a full or broken disk would).
  fs.writeFileSync(path.join(r1.workDir, 'tasks'), 'not a directory');
  const [id] = await queueTasks(a, 'hello');

  const p = await until('the runner to be penalised in the store', async () => {
    const row = await penaltyOf(a, r1.runnerId);
    return row.penalty_until ? row : undefined;
  });
  t.equal(p.penalty_ms, 600000, 'penalised for the base penalty');
  t.equal(await metric(a, 'gantry_runner_penalties_total', { reason: 'runner_error' }), 1, 'counted as a runner_error penalty');
  t.match(p.penalty_reason, /^could not run a task: could not write task files in .*ENOTDIR/, 'for its own fault');
  t.ok(p.penalty_until!.getTime() > Date.now() + 500_000, 'for ten minutes');
  const queued = await until('the task to be back in the queue', async () => {
    const row = await taskRow(a, id!);
    return row.status === 'queued' && row.runner_losses === 1 ? row : undefined;
  });
  t.match(queued.msg, /Runner could not run the task .*; retrying on another runner/, 'an internal retry, not an error');

  // The runner restarts, its disk fixed, and dials replica B.
  r1.proc.kill('SIGKILL');
  await r1.exited;
  fs.rmSync(path.join(r1.workDir, 'tasks'), { force: true });
  const healthPort = await freePort();
  const r2 = spawnRunner(
    t,
    runnerEnv(b, cluster, r1.workDir, {
      GANTRY_RUNNER_SLOTS: '1',
      GANTRY_RUNNER_HEALTH_PORT: String(healthPort),
      LOG_LEVEL: 'info',
    }),
  );
  const session = await until('the runner on replica B', async () => {
    if (r2.proc.exitCode !== null) throw new Error(`runner exited early:\n${r2.output()}`);
    const s = cpB.dispatcher.session(r1.runnerId);
    return s?.state === 'open' ? s : undefined;
  });
  t.equal(session.penalty.until, p.penalty_until!.getTime(), "replica B's session holds the penalty from the store");
  t.equal(session.penalty.ms, 600000, 'and its length, for the next doubling');
  // It has told B it is free (credits) and beaten since connecting; the task stays queued.
  await until('the runner to credit and beat on its new session', async () => {
    const credits = await metricAt(`http://127.0.0.1:${healthPort}/metrics`, 'gantry_runner_frames_total', { type: 'credit', dir: 'out' });
    const row = await penaltyOf(b, r1.runnerId);
    return credits >= 3 && row.last_beat_at.getTime() > row.connected_at.getTime();
  });
  t.equal(session.freeSlots(), 0, 'no free slots for the dispatcher despite its credit');
  t.match(await taskRow(b, id!), { status: 'queued', runner_losses: 1 }, 'the task waits');

  // A good runner on replica B takes it; the penalised one was offered nothing.
  const good = await spawnRunnerProcess(t, b, cluster);
  t.match(await finalOf(b, id!), { status: 'complete', runner_id: good.runnerId, runner_losses: 1 });
  t.equal(await metricAt(`http://127.0.0.1:${healthPort}/metrics`, 'gantry_runner_frames_total', { type: 'offer', dir: 'in' }), 0, 'the penalised runner got no offer');
  t.same(
    (await leasesOf(b, id!)).map((l) => [l.runner_id, l.outcome]),
    [
      [r1.runnerId, 'handed_back'],
      [good.runnerId, 'complete'],
    ],
    'lease history: the runner fault, then the run elsewhere',
  );
});

for (const engine of ENGINES) {
  t.test(`rejects: a task's fault is recorded as one, a draining runner's cost nothing, a runner's penalise it across a reconnect (${engine})`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: { ...FAST_TIMERS, ...LONG_PENALTY } });
    const cluster = await testCluster(api);
    t.equal((await uploadCode(api.user, { name: 'hello', image: TEST_IMAGE, command: 'echo hello', retries: 0 })).status, 200);
    /** Beats keep a hand-driven session alive (the lease TTL is short here). */
    const keepAlive = (pc: ProtocolClient) => {
      let seq = 0;
      const timer = setInterval(() => pc.send({ $case: 'beat', value: { seq: ++seq, sentAt: Date.now(), leases: [] } }), 200);
      t.teardown(() => clearInterval(timer));
      return () => clearInterval(timer);
    };

    // (1) A runner that rejects for the image: the task ends error with what it said, and the
    // runner is offered the next task at once.
    const pc = await connectProtocolClient(t, api, cluster, { slots: 1 });
    keepAlive(pc);
    pc.credit(1);
    const [t1] = await queueTasks(api, 'hello');
    const o1 = await pc.next('offer');
    t.equal(o1.taskId, t1);
    const detail = 'image "busybox:nope" could not be pulled: not found; check the code package\'s image';
    pc.send({ $case: 'reject', value: { leaseId: o1.leaseId, attempt: o1.attempt, reason: RejectReason.REJECT_REASON_IMAGE_PULL_FAILED, detail } });
    t.match(await finalOf(api, t1!), { status: 'error', msg: detail, runner_losses: 0 }, 'the task ends error, with the reason');
    t.same((await leasesOf(api, t1!)).map((l) => l.outcome), ['error'], 'one lease, no internal retry');
    t.match(await penaltyOf(api, pc.runnerId), { penalty_ms: 0, penalty_until: null }, 'the runner is not penalised');
    pc.credit(1);
    const [t2] = await queueTasks(api, 'hello');
    const o2 = await pc.next('offer');
    t.equal(o2.taskId, t2, 'and is offered the next task');

    // (2) A draining runner refuses what crossed its DrainNotice: no fault.
    pc.send({ $case: 'drainNotice', value: { deadline: Date.now() + 60_000, mode: DrainMode.DRAIN_MODE_FINISH_RUNNING } });
    pc.send({ $case: 'reject', value: { leaseId: o2.leaseId, attempt: o2.attempt, reason: RejectReason.REJECT_REASON_DRAINING } });
    await until('the drain-time reject to be handled', async () => (await leasesOf(api, t2!))[0]?.outcome === 'rejected');
    t.match(await penaltyOf(api, pc.runnerId), { penalty_ms: 0, penalty_until: null }, 'a draining runner is not penalised');
    t.equal(await metric(api, 'gantry_runner_penalties_total'), 0, 'no penalty counted for the image or the drain');
    t.match(await taskRow(api, t2!), { status: 'queued', runner_losses: 0 }, 'the task is back in the queue');

    // (3) A runner that rejects for itself is penalised, in the store.
    const pc2 = await connectProtocolClient(t, api, cluster, { slots: 1 });
    const stop2 = keepAlive(pc2);
    pc2.credit(1);
    const o3 = await pc2.next('offer');
    t.equal(o3.taskId, t2);
    pc2.send({ $case: 'reject', value: { leaseId: o3.leaseId, attempt: o3.attempt, reason: RejectReason.REJECT_REASON_INTERNAL, detail: 'docker is broken' } });
    const p = await until('the penalty in the store', async () => {
      const row = await penaltyOf(api, pc2.runnerId);
      return row.penalty_until ? row : undefined;
    });
    t.match(p, { penalty_ms: 600000, penalty_reason: 'offer rejected (docker is broken)' });
    t.equal(await metric(api, 'gantry_runner_penalties_total', { reason: 'offer_rejected' }), 1, 'the penalty is counted by its reason');

    // It reconnects (same runner id, a new stream): still penalised, though it says it is free.
    stop2();
    pc2.cancel();
    const pc3 = await connectProtocolClient(t, api, cluster, { slots: 1, runnerId: pc2.runnerId });
    keepAlive(pc3);
    pc3.credit(1);
    const s = api.cp.dispatcher.session(pc2.runnerId)!;
    t.equal(s.penalty.until, p.penalty_until!.getTime(), 'the new session holds the stored penalty');
    await until('a beat after the credit to be handled', async () => {
      const row = await penaltyOf(api, pc2.runnerId);
      return row.last_beat_at.getTime() > row.connected_at.getTime();
    });
    t.equal(s.freeSlots(), 0, 'no free slots despite its credit');
    const good = await startTestRunner(t, api, { cluster, env: { GANTRY_RUNNER_EXECUTOR: 'noop', GANTRY_RUNNER_SLOTS: '1' } });
    t.match(await finalOf(api, t2!), { status: 'complete', runner_id: good.agent.runnerId }, 'the task runs on a good runner');
    t.same(pc3.offers(), [], 'the penalised runner was offered nothing');
  });
}
