import t from 'tap';
import { NoopExecutor } from '../../../runner/executor/noop.ts';
import type { ExecHooks, TaskSpec } from '../../../runner/executor/types.ts';

function spec(over: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: 't1',
    leaseId: 'l1',
    attempt: 1,
    projectId: 'p1',
    codeId: 'c1',
    codeName: 'hello',
    image: 'unused',
    command: '',
    env: {},
    payload: '{"x":1}',
    config: '',
    timeoutS: 60,
    memoryMb: 64,
    ...over,
  };
}

function recorder() {
  const events: string[] = [];
  const out: Buffer[] = [];
  const hooks: ExecHooks = {
    onStarted: (i) => events.push(`started ${i.containerId}`),
    onOutput: (s, d) => {
      events.push(`output ${s}`);
      out.push(d);
    },
  };
  return { events, out, hooks };
}

t.test('succeeds at once, after onStarted and the payload on stdout', async (t) => {
  const ex = new NoopExecutor();
  await ex.ping();
  const r = recorder();
  const before = Date.now();
  const e = ex.start(spec(), r.hooks);
  t.same(r.events, [], 'no hook runs inside start()');
  const res = await e.result;
  t.equal(res.outcome, 'succeeded');
  t.equal(res.exitCode, 0);
  t.equal(res.oomKilled, false);
  t.ok(res.startedAt >= before && res.finishedAt >= res.startedAt, 'ms epoch times');
  t.same(r.events, ['started noop-l1', 'output stdout']);
  t.equal(Buffer.concat(r.out).toString(), '{"x":1}');
});

t.test('an empty payload writes no output', async (t) => {
  const r = recorder();
  const res = await new NoopExecutor().start(spec({ payload: '' }), r.hooks).result;
  t.equal(res.outcome, 'succeeded');
  t.same(r.events, ['started noop-l1']);
});

t.test('cancel before it resolves: cancelled, no hooks', async (t) => {
  const r = recorder();
  const e = new NoopExecutor().start(spec(), r.hooks);
  e.cancel(1000);
  const res = await e.result;
  t.equal(res.outcome, 'cancelled');
  t.same(r.events, []);
});

t.test('cancel after it resolved changes nothing; kill resolves', async (t) => {
  const r = recorder();
  const e = new NoopExecutor().start(spec(), r.hooks);
  const res = await e.result;
  e.cancel(0);
  await e.kill();
  t.equal(res.outcome, 'succeeded');
  t.equal((await e.result).outcome, 'succeeded');
});

t.test('kill before it resolves: cancelled, and kill() waits for the result', async (t) => {
  const e = new NoopExecutor().start(spec(), recorder().hooks);
  await e.kill();
  t.equal((await e.result).outcome, 'cancelled');
});

t.test('a throwing hook does not fail the task', async (t) => {
  const res = await new NoopExecutor().start(spec(), {
    onStarted: () => {
      throw new Error('boom');
    },
    onOutput: () => {},
  }).result;
  t.equal(res.outcome, 'succeeded');
});

t.test('no leftovers; remove and close are harmless', async (t) => {
  const ex = new NoopExecutor();
  t.equal(ex.kind, 'noop');
  t.same(await ex.leftovers(), []);
  await ex.remove('anything');
  await ex.close();
});

t.test('cheap: 20000 tasks complete on microtasks alone, with no timer or I/O of their own', async (t) => {
  const ex = new NoopExecutor();
  const hooks: ExecHooks = { onStarted: () => {}, onOutput: () => {} };
  // Counted in microtask turns, not milliseconds: while microtasks keep coming the event loop
  // runs no timer and no I/O, so a task settled within a few turns used neither, and costs a
  // few promise reactions however busy the machine is.
  const TURNS = 20;
  const settledWithin = async (payload: string, n: number) => {
    let settled = 0;
    const results = Array.from({ length: n }, (_, i) =>
      ex.start(spec({ leaseId: `l${i}`, payload }), hooks).result.then((r) => {
        settled++;
        return r;
      }),
    );
    for (let i = 0; i < TURNS; i++) await Promise.resolve();
    const early = settled;
    return { early, results: await Promise.all(results) };
  };
  const fast = await settledWithin('{"x":1}', 20000);
  t.ok(fast.results.every((r) => r.outcome === 'succeeded'), 'all succeeded');
  t.equal(fast.early, 20000, `all 20000 settled within ${TURNS} microtask turns`);
  // The check can fail: a task that sleeps, however briefly, waits for a timer.
  const slow = await settledWithin('{"noop_sleep_ms": 1}', 3);
  t.equal(slow.early, 0, `a sleeping task is not settled within ${TURNS} microtask turns`);
  t.ok(slow.results.every((r) => r.outcome === 'succeeded'), 'and succeeds after its sleep');
});
