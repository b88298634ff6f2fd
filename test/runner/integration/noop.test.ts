// End to end through the real gRPC gateway with the no-op executor: dispatch, logs and
// results, without Docker.
import t from 'tap';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { startTestRunner, until } from '../../helpers/runner.ts';

const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100' };

t.test('a queued task runs on a runner and completes with its log (noop executor, PGlite)', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
  t.equal((await uploadCode(api.user, { name: 'hello' })).status, 200);
  const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'hello', payload: 'payload-123' }] } });
  const id = q.body.tasks[0].id;
  const done = await until('task complete', async () => {
    const r = await api.user.project('GET', `/tasks/${id}`);
    return r.body.status === 'complete' ? r.body : undefined;
  });
  t.equal(done.status, 'complete');
  t.ok(done.start_time && done.end_time, 'start and end times');
  const log = await until('log', async () => {
    const r = await api.user.project('GET', `/tasks/${id}/log`);
    return r.text.includes('payload-123') ? r.text : undefined;
  });
  t.match(log, /payload-123/);
});

t.test('one task queued while a runner idles is granted to it by the insert itself (hand-off)', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
  t.equal((await uploadCode(api.user, { name: 'handed' })).status, 200);
  await until('the runner has free credit', async () => api.cp.dispatcher.all().some((s) => s.freeSlots() > 0));
  const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'handed', payload: 'hand-off' }] } });
  const id = q.body.tasks[0].id;
  const lease = (
    await api.cp.store.db.query<{ same: boolean; attempt: number }>(
      'SELECT l.granted_at = t.created_at AS same, l.attempt FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE t.id = $1',
      [id],
    )
  ).rows;
  t.same(lease, [{ same: true, attempt: 1 }], 'the lease exists when the reply does, granted at the instant the task was queued');
  t.match(await (await fetch(`${api.url}/metrics`)).text(), /gantry_task_handoffs_total 1\b/, 'and it is counted as a hand-off');
  await until('task complete', async () => (await api.user.project('GET', `/tasks/${id}`)).body.status === 'complete');

  // A second task while the first package is paused and has a task waiting: no hand-off.
  t.equal((await uploadCode(api.user, { name: 'held' })).status, 200);
  const held = await api.user.project('GET', '/codes');
  const heldId = held.body.codes.find((c: { name: string }) => c.name === 'held').id;
  t.equal((await api.user.project('POST', `/codes/${heldId}/pause_task_queue`)).status, 200);
  await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'held', payload: 'waits' }] } });
  const q2 = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'handed', payload: 'after' }] } });
  await until('second task complete', async () => (await api.user.project('GET', `/tasks/${q2.body.tasks[0].id}`)).body.status === 'complete');
  t.match(await (await fetch(`${api.url}/metrics`)).text(), /gantry_task_handoffs_total 1\b/, 'a task waiting in the cluster sends the new one through the claim');
});

t.test('probes: grpc.health.v1, /metrics on both processes, the runner /healthz; bad credentials refused', async (t) => {
  const grpc = await import('@grpc/grpc-js');
  const { service: HealthService } = await import('grpc-health-check');
  const { RunnerGatewayClient } = await import('../../../proto/gen/gantry/runner/v1/runner.ts');
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  const runner = await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });

  const Health = grpc.makeGenericClientConstructor(HealthService, 'Health');
  const health = new Health(`127.0.0.1:${api.cp.grpcPort}`, grpc.credentials.createInsecure());
  t.teardown(() => health.close());
  for (const service of ['', 'gantry.runner.v1.RunnerGateway']) {
    const res = await new Promise<{ status: string | number }>((resolve, reject) =>
      (health as unknown as { check: (r: unknown, cb: (e: Error | null, r: { status: string | number }) => void) => void }).check(
        { service },
        (e, r) => (e ? reject(e) : resolve(r)),
      ),
    );
    t.ok(res.status === 'SERVING' || res.status === 1, `grpc.health.v1 says SERVING for "${service}"`);
  }

  const h = await until('runner healthy', async () => {
    const r = await fetch(`http://127.0.0.1:${runner.healthPort}/healthz`);
    return r.status === 200 ? r.json() : undefined;
  });
  t.match(h, { ok: true, state: 'running' }, 'the runner reports healthy once connected');

  t.equal((await uploadCode(api.user, { name: 'm' })).status, 200);
  const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'm', payload: 'x' }] } });
  await until('complete', async () => (await api.user.project('GET', `/tasks/${q.body.tasks[0].id}`)).body.status === 'complete');
  const cpMetrics = await (await fetch(`${api.url}/metrics`)).text();
  t.match(cpMetrics, /gantry_offers_total [1-9]/, 'the control plane counts offers');
  t.match(cpMetrics, /gantry_completions_total\{outcome="succeeded",disposition="recorded"\} [1-9]/);
  t.match(cpMetrics, /gantry_runner_sessions 1/);
  const rMetrics = await (await fetch(`http://127.0.0.1:${runner.healthPort}/metrics`)).text();
  t.match(rMetrics, /gantry_runner_tasks_total\{outcome="succeeded"\} [1-9]/, 'the runner counts tasks');

  // A wrong cluster token is refused before anything else happens.
  const cluster = (await api.store.clusters.byName('default'))!;
  const bad = new RunnerGatewayClient(`127.0.0.1:${api.cp.grpcPort}`, grpc.credentials.createInsecure());
  t.teardown(() => bad.close());
  const md = new grpc.Metadata();
  md.set('x-gantry-cluster-id', cluster.id);
  md.set('authorization', 'Bearer not-the-token');
  const err = await new Promise<{ code: number }>((resolve) => {
    const call = bad.connect(md);
    call.on('error', resolve);
    call.on('data', () => undefined);
  });
  t.equal(err.code, grpc.status.UNAUTHENTICATED, 'a wrong cluster token is UNAUTHENTICATED');
});
