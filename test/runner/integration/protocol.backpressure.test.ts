// Failure injection: a runner that stops reading its control stream (grpc-node#1332).
// It announces thousands of free slots with thousands of tasks queued, then never reads again: the control plane must stop writing to it once its
// unflushed frames pass half the bound, drop it when it has read nothing for
// session_dead_after, hold no more than the bound in memory (no claim loads the whole
// queue), and give the offered tasks back at their accept deadline, for a real runner.
import v8 from 'node:v8';
import vm from 'node:vm';
import t from 'tap';
import { MAX_CLAIM } from '../../../control-plane/dispatch/dispatcher.ts';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { FAST_TIMERS, metric, spawnRunnerProcess } from '../../helpers/faults.ts';
import { connectProtocolClient } from '../../helpers/protocol.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

const TASKS = 3000;
const PAYLOAD_BYTES = 32 * 1024;
/** Above one claim batch (a burst any runner gets), far below TASKS. */
const MAX_UNFLUSHED = 300;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Heap and Buffers (write queues hold Buffers outside the JS heap), after a full GC. */
function settledMemory(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

t.test('a runner that stops reading is dropped, memory stays bounded, its offers return to the queue', async (t) => {
  const api = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: {
      ...FAST_TIMERS,
      GANTRY_ACCEPT_DEADLINE_MS: '2000',
      GANTRY_SESSION_DEAD_AFTER_MS: '1500',
      GANTRY_MAX_UNFLUSHED_FRAMES: String(MAX_UNFLUSHED),
      GANTRY_MAX_JSON_BODY: String(64 * 1024 * 1024),
    },
  });
  const cluster = await testCluster(api);
  t.equal((await uploadCode(api.user, { name: 'bulk', image: TEST_IMAGE, command: 'true' })).status, 200);
  const payload = 'p'.repeat(PAYLOAD_BYTES);
  for (let i = 0; i < TASKS; i += 500) {
    const r = await api.user.project('POST', '/tasks', { json: { tasks: Array.from({ length: 500 }, () => ({ code_name: 'bulk', payload })) } });
    t.equal(r.status, 200, `queued tasks ${i}..${i + 499}`);
  }

  const before = settledMemory();
  let peak = 0;
  const sampler = setInterval(() => {
    const m = process.memoryUsage();
    peak = Math.max(peak, m.heapUsed + m.external);
  }, 5);
  t.teardown(() => clearInterval(sampler));

  const pc = await connectProtocolClient(t, api, cluster, { slots: TASKS, read: false });
  pc.credit(TASKS);
  await until('the control plane to drop the runner', async () => api.cp.dispatcher.session(pc.runnerId) === undefined, 30000);
  // The session is gone from the dispatcher first; its row is written as it closes.
  await until('the runner is recorded as disconnected', async () => {
    const row = (await api.store.db.query<{ connected: boolean }>('SELECT connected FROM runners WHERE id = $1', [pc.runnerId])).rows[0]!;
    return !row.connected;
  }, 5000);
  t.pass('the runner is recorded as disconnected');
  const offered = Number(
    (await api.store.db.query<{ n: string }>('SELECT count(*) AS n FROM task_leases WHERE runner_id = $1', [pc.runnerId])).rows[0]!.n,
  );
  t.ok(offered > 0 && offered <= MAX_CLAIM, `it was offered at most one claim batch (${offered} leases)`);
  const sent = await metric(api, 'gantry_stream_frames_total', { type: 'offer', dir: 'out' });
  t.equal(sent, offered, 'every offer claimed for it was written: none claimed past the gate and held back');
  // Every frame of any kind written to it stayed below the bound, so the write path never
  // dropped it ("not reading"): it was the read watchdog (session_dead_after) that did.
  const written = await metric(api, 'gantry_stream_frames_total', { dir: 'out' });
  t.ok(written < MAX_UNFLUSHED, `no more frames written once it fell behind (${written} written, ${sent} of them offers)`);
  t.equal(await metric(api, 'gantry_runner_sessions'), 0, 'no session left');
  clearInterval(sampler);
  const after = settledMemory();
  const mb = (n: number) => Math.round(n / 1024 / 1024);
  t.comment(`memory before ${mb(before)} MB, peak ${mb(peak)} MB, after ${mb(after)} MB; ${offered} offers`);
  // All of it buffered would be TASKS × PAYLOAD_BYTES (~94 MB) held after the drop; one claim
  // of the whole credit would load as much while offering. (The baseline is the lower of the
  // two settled readings: what queueing left behind is not the dispatcher's.)
  const base = Math.min(before, after);
  t.ok(after - base < 32 * 1024 * 1024, `memory after the drop stays bounded (+${mb(after - base)} MB)`);
  t.ok(peak - base < 75 * 1024 * 1024, `memory while offering stays bounded (peak +${mb(peak - base)} MB)`);

  // Its offers expire and go back to the queue.
  await until(
    'its offers to expire',
    async () =>
      Number(
        (await api.store.db.query<{ n: string }>('SELECT count(*) AS n FROM task_leases WHERE runner_id = $1 AND ended_at IS NULL', [pc.runnerId]))
          .rows[0]!.n,
      ) === 0,
    20000,
  );
  const outcomes = (
    await api.store.db.query<{ outcome: string; n: string }>('SELECT outcome, count(*) AS n FROM task_leases WHERE runner_id = $1 GROUP BY outcome', [pc.runnerId])
  ).rows;
  t.same(outcomes.map((o) => [o.outcome, Number(o.n)]), [['offer_expired', offered]], 'every offer to it expired');
  const queued = Number(
    (await api.store.db.query<{ n: string }>(`SELECT count(*) AS n FROM tasks WHERE status = 'queued' AND lease_id IS NULL AND run_times = 0`)).rows[0]!.n,
  );
  t.equal(queued, TASKS, 'every task is back in the queue, nothing spent');
  t.equal(await metric(api, 'gantry_offer_results_total', { result: 'expired' }), offered);

  // A real runner process then runs them all, each once.
  const r = await spawnRunnerProcess(t, api, cluster, { GANTRY_RUNNER_EXECUTOR: 'noop', GANTRY_RUNNER_SLOTS: '64' });
  await until(
    'every task to complete',
    async () =>
      Number((await api.store.db.query<{ n: string }>(`SELECT count(*) AS n FROM tasks WHERE status = 'complete'`)).rows[0]!.n) === TASKS,
    60000,
    250,
  ).catch(async (err) => {
    const q = await api.store.db.query('SELECT status, count(*) AS n FROM tasks GROUP BY status');
    t.comment(JSON.stringify(q.rows), r.output().split('\n').filter((l) => /"level":(40|50)/.test(l)).slice(-10).join('\n'));
    throw err;
  });
  const stats = (
    await api.store.db.query<{ run_times: number; runner_id: string; n: string }>('SELECT run_times, runner_id, count(*) AS n FROM tasks GROUP BY run_times, runner_id')
  ).rows;
  t.same(stats.map((s) => [s.run_times, s.runner_id, Number(s.n)]), [[1, r.runnerId, TASKS]], 'each ran once, on the real runner');
  const history = (
    await api.store.db.query<{ outcome: string; n: string }>('SELECT outcome, count(*) AS n FROM task_leases WHERE runner_id = $1 GROUP BY outcome', [r.runnerId])
  ).rows;
  t.equal(Number(history.find((h) => h.outcome === 'complete')?.n), TASKS, 'one completed lease per task');
});
