// /metrics as a Prometheus user reads it: promtool accepts the page and the alerting rules,
// the values are the control plane's real state (queue, tasks, histograms, HTTP routes,
// fleet, credits), and the endpoint can be guarded by a token or moved to its own port.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { metricIn } from '../../helpers/faults.ts';
import { startTestRunner, until } from '../../helpers/runner.ts';
import { ControlPlaneMetrics } from '../../../control-plane/metrics.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { freshStoreOptions } from '../../helpers/db.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const RULES_DIR = path.join(ROOT, 'deploy/prometheus');
const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100' };
const TOKEN = 'metrics-token-0123456789';

/** Runs promtool (from Debian's prometheus package: scripts/services.sh promtool) with `input` on stdin. */
function promtool(args: string[], o: { input?: string; cwd?: string } = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('promtool', args, { cwd: o.cwd ?? ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', (err) => reject(new Error(`promtool cannot run (install it: bash scripts/services.sh promtool): ${err.message}`)));
    p.on('close', (code) => resolve({ code: code ?? -1, out }));
    p.stdin.end(o.input ?? '');
  });
}

async function scrape(url: string, headers: Record<string, string> = {}) {
  const r = await fetch(`${url}/metrics`, { headers });
  return { status: r.status, type: r.headers.get('content-type') ?? '', text: await r.text() };
}

async function pausedCode(t: Test, api: TestApi, name: string): Promise<void> {
  t.equal((await uploadCode(api.user, { name })).status, 200);
  const id = (await api.user.project('GET', '/codes')).body.codes.find((c: { name: string }) => c.name === name).id;
  t.equal((await api.user.project('POST', `/codes/${id}/pause_task_queue`)).status, 200);
}

t.test('the alerting rules: promtool checks them and their unit tests pass', async (t) => {
  const check = await promtool(['check', 'rules', 'gantry-alerts.yml'], { cwd: RULES_DIR });
  t.equal(check.code, 0, `promtool check rules: ${check.out}`);
  t.match(check.out, /SUCCESS: \d+ rules found/);
  const unit = await promtool(['test', 'rules', 'gantry-alerts.test.yml'], { cwd: RULES_DIR });
  t.equal(unit.code, 0, `promtool test rules: ${unit.out}`);
});

t.test('a control plane with a runner: promtool accepts /metrics, and its values are the real state', async (t) => {
  const api = await startTestApi(t, 'postgres', { env: FAST });
  const runner = await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
  await pausedCode(t, api, 'held');
  t.equal((await uploadCode(api.user, { name: 'work' })).status, 200);
  const held = await api.user.project('POST', '/tasks', { json: { tasks: [1, 2, 3].map((i) => ({ code_name: 'held', payload: `h${i}` })) } });
  t.equal(held.status, 200);
  const work = await api.user.project('POST', '/tasks', { json: { tasks: [1, 2, 3, 4].map((i) => ({ code_name: 'work', payload: `w${i}` })) } });
  t.equal(work.status, 200);
  for (const task of work.body.tasks as { id: string }[]) {
    await until(`task ${task.id} complete`, async () => (await api.user.project('GET', `/tasks/${task.id}`)).body.status === 'complete');
  }
  t.equal((await api.request('GET', '/2/no-such-thing')).status, 404);
  // Credits are absolute and arrive after each result: wait until the runner says it idles.
  await until('the idle runner reports its free slots', async () => api.cp.dispatcher.creditSlots() === 2);

  const page = await scrape(api.url);
  t.equal(page.status, 200);
  t.match(page.type, /^text\/plain; version=0\.0\.4/);
  const lint = await promtool(['check', 'metrics'], { input: page.text });
  t.equal(lint.code, 0, `promtool check metrics on the control plane's page: ${lint.out}`);
  const m = (name: string, labels: Record<string, string> = {}) => metricIn(page.text, name, labels);

  t.ok(m('process_cpu_user_seconds_total') > 0, 'process metrics without a prefix');
  t.ok(m('nodejs_heap_size_used_bytes') > 0, 'Node.js metrics without a prefix');
  t.notMatch(page.text, /gantry_cp_/, 'no prefixed process metrics');
  t.equal(m('gantry_tasks_queued', { cluster: 'default', code: 'held' }), 3, 'queue depth of the paused package');
  t.equal(m('gantry_tasks_queued', { cluster: 'default', code: 'work' }), 0, 'the package that ran has no queue');
  t.equal(m('gantry_tasks', { status: 'queued' }), 3);
  t.equal(m('gantry_tasks', { status: 'running' }), 0);
  t.equal(m('gantry_tasks_recent', { status: 'complete' }), 4, 'tasks by status after the completions');
  t.equal(m('gantry_tasks_recent', { status: 'queued' }), 3);
  t.equal(m('gantry_task_run_seconds_count', { cluster: 'default', code: 'work' }), 4, 'a run time per result');
  t.equal(m('gantry_task_queue_wait_seconds_count', { cluster: 'default', code: 'work' }), 4, 'a queue wait per start');
  t.equal(m('gantry_task_queue_wait_seconds_count', { cluster: 'default', code: 'held' }), 0);
  t.equal(m('gantry_http_requests_total', { route: '/2/projects/:projectId/tasks', method: 'POST', status: '200' }), 2, 'requests by route pattern');
  t.ok(m('gantry_http_requests_total', { route: '/2/projects/:projectId/tasks/:taskId', method: 'GET', status: '200' }) >= 4);
  t.equal(m('gantry_http_requests_total', { route: 'unmatched', method: 'GET', status: '404' }), 1, 'a path no route has is one label value');
  t.ok(m('gantry_http_request_duration_seconds_count', { route: '/2/projects/:projectId/tasks', method: 'POST' }) === 2);
  t.notMatch(page.text, new RegExp(api.user.projectId), 'no raw path (with its ids) as a label');
  for (const id of work.body.tasks as { id: string }[]) t.notMatch(page.text, new RegExp(id.id), 'no task id as a label');
  t.equal(m('gantry_fleet_runners', { cluster: 'default' }), 1, 'one runner connected');
  t.equal(m('gantry_fleet_slots', { cluster: 'default', state: 'free' }), 2);
  t.equal(m('gantry_fleet_slots', { cluster: 'default', state: 'busy' }), 0);
  t.equal(m('gantry_fleet_runners_penalised', { cluster: 'default' }), 0);
  t.equal(m('gantry_runner_credit_slots'), 2, "the idle runner's free slots, as its credit says");
  t.equal(m('gantry_runner_sessions'), 1);
  t.equal(m('gantry_database_up'), 1);
  t.equal(m('gantry_completions_total', { outcome: 'succeeded', disposition: 'recorded' }), 4);

  const rPage = await scrape(`http://127.0.0.1:${runner.healthPort}`);
  const rLint = await promtool(['check', 'metrics'], { input: rPage.text });
  t.equal(rLint.code, 0, `promtool check metrics on the runner's page: ${rLint.out}`);
  t.ok(metricIn(rPage.text, 'process_resident_memory_bytes') > 0, 'the runner: process metrics without a prefix');
  t.notMatch(rPage.text, /gantry_runner_process_|gantry_runner_nodejs_/);
  t.equal(metricIn(rPage.text, 'gantry_runner_tasks_total', { outcome: 'succeeded' }), 4, "the runner's own metrics stay");

  // Instances and a penalty, written as the autoscaler and a session write them: the next reading shows them.
  const cluster = (await api.store.clusters.byName('default'))!;
  const now = new Date();
  await api.store.db.query(
    `INSERT INTO cluster_instances (id, cluster_id, instance_id, provider, type, created_at, updated_at)
     VALUES ('i-row-1', $1, 'i-1', 'local', 'LIVE', $2, $2), ('i-row-2', $1, 'i-2', 'local', 'KILL', $2, $2)`,
    [cluster.id, now],
  );
  const runnerId = (await api.store.db.query<{ id: string }>('SELECT id FROM runners WHERE connected')).rows[0]!.id;
  await api.store.runners.setPenalty(runnerId, 60_000, new Date(now.getTime() + 600_000), 'test');
  const later = await until('a reading that shows the instances', async () => {
    const p = (await scrape(api.url)).text;
    return metricIn(p, 'gantry_fleet_instances', { cluster: 'default', state: 'live' }) === 1 ? p : undefined;
  });
  t.equal(metricIn(later, 'gantry_fleet_instances', { cluster: 'default', state: 'kill' }), 1);
  t.equal(metricIn(later, 'gantry_fleet_runners_penalised', { cluster: 'default' }), 1, 'the penalised runner counts');
});

t.test('the database gauges are read once per interval however often /metrics is scraped', async (t) => {
  // Closed by the test itself (it checks what a closed store reports).
  const store = await openStore(await freshStoreOptions(t, 'pglite'), silentLogger(), systemClock, newId);
  const metrics = new ControlPlaneMetrics();
  let reads = 0;
  metrics.readFrom({
    readGauges: () => {
      reads++;
      return store.gauges.read(15_000);
    },
    databaseUp: () => store.db.ping(),
    freeSlots: () => 0,
  });
  await Promise.all(Array.from({ length: 5 }, () => metrics.registry.metrics()));
  for (let i = 0; i < 5; i++) await metrics.registry.metrics();
  t.equal(reads, 1, 'ten scrapes, one reading');
  t.equal(metricIn(await metrics.registry.metrics(), 'gantry_database_up'), 1);
  await store.close();
  // A closed store: the gauges of the cached reading stand until it expires; up says 0 now.
  t.equal(metricIn(await metrics.registry.metrics(), 'gantry_database_up'), 0, 'the database is reported down, and the scrape still answers');
});

t.test('GANTRY_METRICS_TOKEN: /metrics needs the bearer token', async (t) => {
  const api = await startTestApi(t, 'pglite', { env: { GANTRY_METRICS_TOKEN: TOKEN } });
  const none = await scrape(api.url);
  t.equal(none.status, 401, 'no token: 401');
  t.same(Object.keys(JSON.parse(none.text)), ['msg'], 'the API error body');
  t.notMatch(none.text, new RegExp(TOKEN), 'the reply does not tell the token');
  t.equal((await scrape(api.url, { Authorization: `Bearer ${TOKEN}x` })).status, 401, 'a wrong token: 401');
  t.equal((await scrape(api.url, { Authorization: `OAuth ${TOKEN}` })).status, 401, 'another scheme: 401');
  const ok = await scrape(api.url, { Authorization: `Bearer ${TOKEN}` });
  t.equal(ok.status, 200, 'the token: 200');
  t.match(ok.text, /gantry_http_requests_total\{route="\/metrics",method="GET",status="401"\} 3/, 'the refusals are counted');
});

t.test('GANTRY_METRICS_PORT: /metrics on its own listener, not on the API port', async (t) => {
  const api = await startTestApi(t, 'pglite', { env: { GANTRY_METRICS_PORT: '0', GANTRY_METRICS_TOKEN: TOKEN } });
  const url = api.cp.metricsUrl;
  t.ok(url && url !== api.url, `a listener of its own (${url})`);
  const onApi = await scrape(api.url, { Authorization: `Bearer ${TOKEN}` });
  t.equal(onApi.status, 404, 'the API port has no /metrics');
  t.same(Object.keys(JSON.parse(onApi.text)), ['msg']);
  t.equal((await scrape(url!)).status, 401, 'the token guards the separate listener too');
  const page = await scrape(url!, { Authorization: `Bearer ${TOKEN}` });
  t.equal(page.status, 200);
  t.match(page.text, /gantry_http_requests_total\{route="\/metrics",method="GET",status="404"\} 1/, 'the API counted its 404');
  const lint = await promtool(['check', 'metrics'], { input: page.text });
  t.equal(lint.code, 0, `promtool check metrics: ${lint.out}`);
  const other = await fetch(`${url}/`);
  t.equal(other.status, 404, 'any other path there is 404');
  t.same(Object.keys(await other.json()), ['msg']);
  t.equal((await fetch(`${url}/metrics`, { method: 'POST' })).status, 405);
});
