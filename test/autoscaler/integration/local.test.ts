/**
 * Issue 5's end-to-end proof with the `local` provider: the embedded start (a real `gantry
 * start` process, PGlite) whose default cluster scales runner processes on this host.
 */
import { execFileSync } from 'node:child_process';
import t from 'tap';
import { tempDir } from '../../helpers/db.ts';
import { startGantryProcess } from '../../helpers/process.ts';
import { until } from '../../helpers/runner.ts';

const TUNING = {
  tauUpMs: 1000,
  tauDownMs: 2000,
  idleBeforeKillMs: 2000,
  stabilizationMs: 2000,
  scaleInAfterScaleOutMs: 1000,
  minInstanceAgeMs: 1000,
  bootDeadlineMs: 60_000,
  staleAfterMs: 5000,
};

interface Instance {
  instance_id: string;
  type: 'ADD' | 'LIVE' | 'KILL' | 'TERMINATE';
  runners_total?: number;
  runners_available?: number;
  kill_at?: string;
  terminated_at?: string;
}

/** Runner processes alive for these instance ids (by their GANTRY_INSTANCE_ID). */
function aliveRunners(ids: string[]): string[] {
  let out = '';
  try {
    out = execFileSync('pgrep', ['-af', 'runner/main.ts'], { encoding: 'utf8' });
  } catch {
    return [];
  }
  const alive: string[] = [];
  for (const line of out.split('\n').filter(Boolean)) {
    const pid = line.split(' ')[0]!;
    try {
      const env = execFileSync('cat', [`/proc/${pid}/environ`], { encoding: 'utf8' });
      for (const id of ids) if (env.includes(`GANTRY_INSTANCE_ID=${id}\0`)) alive.push(id);
    } catch {
      // gone meanwhile
    }
  }
  return alive;
}

t.test('a burst scales the default cluster out and back in; terminate drains a busy instance', async (t) => {
  const dataDir = tempDir(t, 'gantry-autoscale-');
  const g = await startGantryProcess(t, {
    GANTRY_DATA_DIR: dataDir,
    GANTRY_LOCAL_RUNNERS: '1',
    GANTRY_LOCAL_RUNNER_SLOTS: '2',
    GANTRY_LOCAL_EXECUTOR: 'noop',
    GANTRY_AUTOSCALE_TICK_MS: '250',
    GANTRY_AUTOSCALE_TUNING: JSON.stringify(TUNING),
    GANTRY_BEAT_INTERVAL_MS: '250',
  });
  t.teardown(async () => {
    // The runners are detached (they outlive a crash of the control plane): stop them here.
    g.proc.kill('SIGTERM');
    await g.exited;
  });
  const call = async (method: string, path: string, json?: unknown, form?: FormData) => {
    const res = await fetch(`${g.url}/2${path}`, {
      method,
      headers: { Authorization: `OAuth ${g.token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
      body: json ? JSON.stringify(json) : form,
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as any) : undefined };
  };
  const project = (path: string) => `/projects/${g.projectId}${path}`;

  const clusters = await call('GET', '/clusters');
  const cluster = (clusters.body.clusters as { id: string; name: string }[]).find((c) => c.name === 'default');
  t.ok(cluster, 'the embedded user sees the default cluster');
  const stats = async () => (await call('GET', `/clusters/${cluster!.id}/stats`)).body.cluster as { instances: Instance[]; queued: number; runners_total: number };
  const active = async () => (await stats()).instances.filter((i) => i.type !== 'TERMINATE');

  // From idle: runners_min keeps one instance (a runner process) up.
  await until('one live instance', async () => (await active()).filter((i) => i.type === 'LIVE').length === 1, 30_000, 100);
  const first = (await active())[0]!.instance_id;
  t.same(aliveRunners([first]), [first], 'its runner process runs');

  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'burst', image: 'gantry-test/busybox:latest' }));
  t.equal((await call('POST', project('/codes'), undefined, form)).status, 200);
  const queued = await call('POST', project('/tasks'), {
    tasks: Array.from({ length: 50 }, () => ({ code_name: 'burst', payload: JSON.stringify({ noop_sleep_ms: 1500 }) })),
  });
  t.equal(queued.status, 200, '50 tasks queued');
  const ids = (queued.body.tasks as { id: string }[]).map((x) => x.id);

  let peak = 1;
  const seen = new Set<string>();
  await until('the cluster scales out', async () => {
    const a = await active();
    for (const i of a) seen.add(i.instance_id);
    peak = Math.max(peak, a.length);
    return peak > 1;
  }, 30_000, 100);
  const task = async (id: string) => (await call('GET', project(`/tasks/${id}`))).body as { status: string; run_times: number; retry_count: number };
  await until('every task completes', async () => {
    const a = await active();
    for (const i of a) seen.add(i.instance_id);
    peak = Math.max(peak, a.length);
    const all = await Promise.all(ids.map(task));
    return all.every((x) => ['complete', 'error', 'killed', 'cancelled', 'timeout'].includes(x.status));
  }, 90_000, 250);
  const all = await Promise.all(ids.map(task));
  t.same(all.filter((x) => x.status !== 'complete' || x.run_times !== 1 || x.retry_count !== 0), [], 'all 50 completed, each run once: none interrupted');
  t.ok(peak >= 3, `scaled out to ${peak} instances`);

  // After the idle window the extra instances go KILL, then TERMINATE; runners_min keeps one.
  await until('scaled back in to one instance', async () => (await active()).length === 1, 120_000, 200).catch((err: unknown) => {
    // Say whether the control plane is still there, and what it last said.
    t.comment(`gantry ${g.proc.exitCode === null && g.proc.signalCode === null ? 'still running' : `exited (${g.proc.exitCode ?? g.proc.signalCode})`}; its last output:\n${g.output().slice(-4000)}`);
    throw err;
  });
  const s = await stats();
  const extra = s.instances.filter((i) => i.type === 'TERMINATE');
  t.ok(extra.length >= peak - 1, `${extra.length} instances terminated`);
  for (const i of extra) {
    t.ok(i.kill_at && i.terminated_at && Date.parse(i.terminated_at) >= Date.parse(i.kill_at), `${i.instance_id}: KILL, then TERMINATE`);
  }
  await until('their runner processes exited', async () => aliveRunners(extra.map((i) => i.instance_id)).length === 0, 30_000, 200);

  // Terminate a busy instance: its task finishes; then it goes, and runners_min brings another.
  const survivor = (await active())[0]!.instance_id;
  const long = await call('POST', project('/tasks'), { tasks: [{ code_name: 'burst', payload: JSON.stringify({ noop_sleep_ms: 3000 }) }] });
  const longId = (long.body.tasks as { id: string }[])[0]!.id;
  await until('the long task runs', async () => (await task(longId)).status === 'running', 20_000, 100);
  const term = await call('POST', `/clusters/${cluster!.id}/terminate`, { instance_ids: [survivor] });
  t.equal(term.status, 200, 'terminate accepted');
  t.same(term.body.marked, [survivor]);
  t.equal((await active()).find((i) => i.instance_id === survivor)?.type, 'KILL', 'the busy instance is KILL, not gone');
  t.same(aliveRunners([survivor]), [survivor], 'its runner still runs the task');
  await until('the long task completes', async () => (await task(longId)).status === 'complete', 20_000, 100);
  t.equal((await task(longId)).run_times, 1, 'it ran once, uninterrupted');
  await until('the drained instance is terminated', async () => (await stats()).instances.find((i) => i.instance_id === survivor)?.type === 'TERMINATE', 20_000, 100);
  await until('its runner process exited', async () => aliveRunners([survivor]).length === 0, 30_000, 200);
  await until('a replacement keeps runners_min', async () => (await active()).some((i) => i.type === 'LIVE' && i.instance_id !== survivor), 30_000, 100);
});
