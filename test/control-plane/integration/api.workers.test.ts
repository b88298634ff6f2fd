// The workers API (/2/workers.*) and the recorded machine stats behind it, on both engines:
// real runner processes beat into the recorder; samples (at most one per runner per window),
// the 1-minute and 1-hour roll-ups and their retention are checked in virtual time (the
// control plane's clock is a ManualClock; the runners beat in real time). Then every
// endpoint's fields, limits and errors, with a third-party worker that registers with its
// cluster's runner token, reports, times out and unregisters. Last, two replicas on one
// PostgreSQL (with etcd), each recording its own runner, each reading both.
import t from 'tap';
import { ManualClock, systemClock } from '../../../lib/clock.ts';
import { newId } from '../../../lib/ids.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane, type ControlPlane } from '../../../control-plane/start.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { loadRunnerConfig } from '../../../runner/config.ts';
import { startRunner } from '../../../runner/start.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { ControlPlaneMetrics } from '../../../control-plane/metrics.ts';
import { retentionJob } from '../../../control-plane/scheduler/retention.ts';
import { rollupJob } from '../../../control-plane/series/rollup.ts';
import { planRanges } from '../../../control-plane/series/read-plan.ts';
import type { Fence } from '../../../control-plane/store/fence.ts';
import { startTestApi, type TestApi } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { ENGINES, freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { etcdPrefix } from '../../helpers/etcd.ts';
import { etcdEndpoint } from '../../helpers/services.ts';
import { spawnRunnerProcess } from '../../helpers/faults.ts';
import { until } from '../../helpers/runner.ts';

const FENCE: Fence = { term: 1, holder: 'test' };
const SIGNAL = new AbortController().signal;
const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
/** A whole hour, so windows, minutes and hours line up. */
const T0 = Date.UTC(2026, 11, 1, 10, 0, 0);

const count = async (api: TestApi, table: string) => Number((await api.store.db.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)).rows[0]!.n);

for (const engine of ENGINES) {
  t.test(`workers on ${engine}`, async (t) => {
    const clock = new ManualClock(T0);
    const api = await startTestApi(t, engine, { clock, env: { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_STATS_INTERVAL_S: '10' } });
    const { cluster, token } = await api.store.clusters.create(`fleet-${engine}`, { userId: api.user.userId });
    const creds = { id: cluster.id, token };
    const runners = await Promise.all([0, 1].map(() => spawnRunnerProcess(t, api, creds, { GANTRY_RUNNER_EXECUTOR: 'noop', LOG_LEVEL: 'silent' })));
    const ids = runners.map((r) => r.runnerId).sort();
    const other = await api.newUser();
    const post = (path: string, json: unknown, token: string | null = api.user.token) => api.request('POST', `/2/workers.${path}`, { json, token });
    const worker = (o: Record<string, string> = {}) => ({ Authorization: `Bearer ${token}`, 'X-Gantry-Cluster-Id': cluster.id, ...o });
    const daemon = (path: string, json: unknown, headers: Record<string, string> = worker()) => api.request('POST', `/2/workers.${path}`, { json, token: null, headers });

    /** Advances the clock one window and waits until both runners' samples of it are written. */
    const window = async () => {
      clock.advance(10_000);
      const ts = new Date(clock.now().getTime() - (clock.now().getTime() % 10_000));
      await until(`samples of ${ts.toISOString()}`, async () => {
        await api.cp.stats.flush();
        const r = await api.store.db.query<{ n: string }>('SELECT count(*) AS n FROM runner_stats_raw WHERE ts = $1', [ts]);
        return Number(r.rows[0]!.n) === 2;
      });
    };

    t.test('beats become samples: at most one per runner per window, every metric of the layout', async (t) => {
      // Runners send stats once their first sample is taken; that first beat primes the byte counters.
      await until('both runners beat with stats', async () => (await api.store.db.query('SELECT 1 FROM runners WHERE stats IS NOT NULL')).rows.length === 2);
      // 13 windows: 10:00:10 to 10:02:10 (the first beats only prime the byte counters).
      for (let i = 0; i < 13; i++) await window();
      // More beats within the last window add nothing.
      await new Promise<void>((resolve) => setTimeout(resolve, 600)); // three beats at 200 ms, in real time
      await api.cp.stats.flush();
      const per = await api.store.db.query<{ runner_id: string; n: string; windows: string }>(
        `SELECT s.runner_id, count(*) AS n, count(DISTINCT r.ts) AS windows FROM runner_stats_raw r JOIN runner_stat_series s ON s.id = r.series_id
         GROUP BY s.runner_id ORDER BY s.runner_id`,
      );
      t.same(per.rows.map((r) => [r.runner_id, Number(r.n), Number(r.windows)]), ids.map((id) => [id, 13, 13]), 'one sample per runner per window');
      const series = (await api.store.db.query<{ metrics: string[]; variants: string[]; cluster_id: string }>('SELECT metrics, variants, cluster_id FROM runner_stat_series')).rows;
      t.equal(series.length, 2, 'one series per runner (its layout did not change)');
      const layout = series[0]!;
      t.equal(layout.cluster_id, cluster.id);
      for (const m of ['cpu_total', 'cpu_usage', 'load_1m', 'load_5m', 'load_15m', 'memory_used', 'memory_cached', 'memory_free', 'memory_total', 'memory_swap_used', 'memory_swap_total', 'disk_used', 'disk_total', 'disk_read', 'disk_write', 'network_rx', 'network_tx', 'containers_running', 'slots_busy', 'slots_total']) {
        t.ok(layout.metrics.includes(m), `the layout has ${m}`);
      }
      t.ok(layout.variants.includes('/'), 'a disk variant is its mount point');
      t.equal(layout.metrics.filter((m) => m === 'cpu_usage').length, (await import('node:os')).cpus().length, 'one cpu_usage variant per core');
      const total = await api.store.db.query<{ v: number }>(
        `SELECT r.vals[array_position(s.metrics, 'slots_total')] AS v FROM runner_stats_raw r JOIN runner_stat_series s ON s.id = r.series_id LIMIT 1`,
      );
      t.equal(Number(total.rows[0]!.v), 1, 'slots_total as the runner says');
    });

    t.test('roll-ups: minutes from raw samples, hours from minutes, once their time has passed', async (t) => {
      // The runners leave (so no more samples come), and the clock moves to 10:02:40: a minute
      // is rolled up once 30 s have passed since its end, so 10:00 and 10:01 are, 10:02 is not.
      await Promise.all(runners.map(async (r) => { r.proc.kill('SIGKILL'); await r.exited; }));
      clock.set(T0 + 2 * MIN + 40_000);
      const job = rollupJob({ store: api.store, clock, statsIntervalS: 10, log: silentLogger() });
      await job.tick(FENCE, SIGNAL);
      const mins = await api.store.db.query<{ runner_id: string; ts: Date; n: number; busy: number }>(
        'SELECT s.runner_id, m.ts, m.n, m.busy FROM runner_stats_1m m JOIN runner_stat_series s ON s.id = m.series_id ORDER BY 1, 2',
      );
      t.same(
        mins.rows.map((r) => [r.runner_id, r.ts.getTime() - T0, r.n]),
        ids.flatMap((id) => [[id, 0, 5], [id, MIN, 6]]),
        'two minutes per runner: 10:00 has 5 samples (10:00:10 to :50), 10:01 has 6',
      );
      const check = await api.store.db.query<{ ok: boolean }>(
        `SELECT bool_and(abs(m.avg[i] - x.a) < 1e-3 AND m.min[i] = x.mn AND m.max[i] = x.mx) AS ok
         FROM runner_stats_1m m, generate_subscripts(m.avg, 1) AS i,
           LATERAL (SELECT avg(r.vals[i]) AS a, min(r.vals[i]) AS mn, max(r.vals[i]) AS mx FROM runner_stats_raw r
                    WHERE r.series_id = m.series_id AND r.ts >= m.ts AND r.ts < m.ts + interval '1 minute') x`,
      );
      t.equal(check.rows[0]!.ok, true, "each minute's avg, min and max are its samples'");
      t.equal(await count(api, 'runner_stats_1h'), 0, 'no hour is whole yet');
      await job.tick(FENCE, SIGNAL);
      t.equal(await count(api, 'runner_stats_1m'), 4, 'a second tick rolls nothing twice');

      // An hour later the last minute and the hour roll up.
      clock.set(T0 + HOUR + 5 * MIN);
      await job.tick(FENCE, SIGNAL);
      t.equal(await count(api, 'runner_stats_1m'), 6, 'the third minute too');
      const hours = await api.store.db.query<{ n: number; avg: number[] }>('SELECT n, avg FROM runner_stats_1h ORDER BY series_id');
      t.same(hours.rows.map((r) => r.n), [13, 13], "one hour per runner, counting all of its samples");
      const rollup = (await api.store.db.query<{ level: string; done_through: Date }>('SELECT level, done_through FROM runner_stats_rollup ORDER BY level')).rows;
      t.same(rollup.map((r) => [r.level, r.done_through.getTime() - T0]), [['1h', HOUR], ['1m', HOUR + 4 * MIN]], 'watermarks');
    });

    t.test('get_stats: per worker and interval, the requested statistics, from the right table', async (t) => {
      const from = T0 / 1000;
      const items = [{ key: 'slots_total', category: 'avg' }, { key: 'slots_total', category: 'count' }, { key: 'cpu_usage', category: 'max' }, { key: 'memory_total', category: 'last' }];
      const r = await post('get_stats', { from_date: from, to_date: from + 300, interval: 60, items });
      t.equal(r.status, 200);
      t.same(r.body.workers.map((w: { worker: string }) => w.worker).sort(), ids);
      const w0 = r.body.workers[0];
      const slots = w0.metrics.find((m: { metric: string }) => m.metric === 'slots_total');
      t.same(slots.dates, [from, from + 60, from + 120], 'three minutes with samples');
      t.same(slots.stats, [{ aggregation: 'avg', values: [1, 1, 1] }, { aggregation: 'count', values: [5, 6, 2] }], 'avg and count');
      t.notOk('variant' in slots, 'no variant unless split');
      const cpu = w0.metrics.find((m: { metric: string }) => m.metric === 'cpu_usage');
      t.same(cpu.stats.map((s: { aggregation: string }) => s.aggregation), ['max']);
      t.ok(w0.metrics.find((m: { metric: string }) => m.metric === 'memory_total').stats[0].values[0] > 0, 'last memory_total');

      const split = await post('get_stats', { worker_ids: [ids[0]], from_date: from, to_date: from + 300, interval: 300, items: [{ key: 'cpu_usage' }], split_by_variant: true });
      t.equal(split.body.workers.length, 1);
      const variants = split.body.workers[0].metrics.map((m: { variant: string }) => m.variant);
      t.same(variants, [...variants].sort(), 'variants in order');
      t.equal(variants.length, (await import('node:os')).cpus().length, 'one series per core');
      t.same(split.body.workers[0].metrics[0].stats[0].aggregation, 'avg', 'avg is the default statistic');

      // By the hour: read from the hours table (one bucket holding all 13 samples).
      const hourly = await post('get_stats', { from_date: from, to_date: from + 7200, interval: 3600, items: [{ key: 'slots_busy', category: 'count' }] });
      t.same(hourly.body.workers[0].metrics[0], { metric: 'slots_busy', dates: [from], stats: [{ aggregation: 'count', values: [13] }] });
      t.same(await post('get_stats', { from_date: from + 7200, to_date: from + 9000, interval: 60, items: [{ key: 'slots_busy' }] }).then((x) => x.body), { workers: [] }, 'nothing recorded then');
      // A question no roll-up answers reads raw samples: one too costly is refused before it runs.
      const month = { from_date: from + 86400, to_date: from + 32 * 86400, interval: 3600 };
      isError(t, await post('get_stats', { ...month, items: [{ key: 'cpu_usage' }, { key: 'slots_busy' }] }), 400,
        /^this get_stats would read about 1071360 samples \(2 workers × 2 keys × 267840 stored instants each\), at most 1000000: ask for fewer worker_ids or items/);
      t.equal((await post('get_stats', { ...month, worker_ids: [ids[0]], items: [{ key: 'cpu_usage' }] })).status, 200, 'within the bound');
    });

    t.test('get_metric_keys and get_activity_report', async (t) => {
      const keys = await post('get_metric_keys', {});
      t.equal(keys.status, 200);
      const cats = Object.fromEntries(keys.body.categories.map((c: { name: string; metric_keys: string[] }) => [c.name, c.metric_keys]));
      t.same(Object.keys(cats), ['cpu', 'load', 'memory', 'disk', 'network', 'containers', 'slots'], 'categories in order');
      t.same(cats.slots, ['slots_busy', 'slots_total']);
      t.same(cats.cpu, ['cpu_total', 'cpu_usage']);
      t.same((await post('get_metric_keys', { worker_ids: [ids[1]] })).body, keys.body, 'one worker has the same keys');

      const from = T0 / 1000;
      const act = await post('get_activity_report', { from_date: from, to_date: from + 180, interval: 60 });
      t.same(act.body, { total: { dates: [from, from + 60, from + 120], counts: [2, 2, 2] }, active: { dates: [from, from + 60, from + 120], counts: [0, 0, 0] } });
      const empty = await post('get_activity_report', { from_date: 1, to_date: 100, interval: 1 });
      t.same(empty.body, { total: { dates: [], counts: [] }, active: { dates: [], counts: [] } });
    });

    t.test('another user sees none of these workers; their ids answer 404', async (t) => {
      const as = (path: string, json: unknown) => post(path, json, other.token);
      t.same((await as('get_all', { last_seen: 0 })).body, { workers: [] });
      t.same((await as('get_metric_keys', {})).body, { categories: [] });
      t.same((await as('get_stats', { from_date: T0 / 1000, to_date: T0 / 1000 + 600, interval: 60, items: [{ key: 'cpu_total' }] })).body, { workers: [] });
      t.same((await as('get_activity_report', { from_date: T0 / 1000, to_date: T0 / 1000 + 600, interval: 60 })).body.total, { dates: [], counts: [] });
      isError(t, await as('get_stats', { worker_ids: [ids[0]], from_date: T0 / 1000, to_date: T0 / 1000 + 600, interval: 60, items: [{ key: 'cpu_total' }] }), 404, /worker_ids: no worker/);
      isError(t, await as('get_metric_keys', { worker_ids: [ids[0]] }), 404, /worker_ids/);
      isError(t, await post('get_metric_keys', { worker_ids: ['nobody'] }), 404, /"nobody"/);
    });

    t.test('get_all: every field of a runner', async (t) => {
      const all = await post('get_all', { last_seen: 'none' });
      t.equal(all.status, 200);
      t.same(all.body.workers.map((w: { id: string }) => w.id), ids);
      const w = all.body.workers[0];
      t.match(w, {
        id: ids[0],
        key: ids[0],
        cluster: { id: cluster.id, name: cluster.name },
        external: false,
        state: 'disconnected',
        ip: '127.0.0.1',
        queues: [{ id: cluster.id, name: cluster.name }],
        slots: { busy: 0, total: 1 },
        tasks: [],
        task: null,
        replica: null,
        register_time: new Date(T0).toISOString(),
        draining: false,
        penalised: false,
        timeout: null,
      });
      t.ok(w.hostname && w.version, 'host name and agent version');
      t.ok(w.tags.some((x: string) => x.startsWith('gantry.test-run=')), 'labels are tags');
      // Seen at 10:02:10 at the latest; now 11:05: the default last_seen (an hour) leaves them out.
      t.same((await post('get_all', {})).body, { workers: [] }, 'not seen within the hour');
      t.equal((await post('get_all', { last_seen: 4 * 3600 })).body.workers.length, 2);
    });

    t.test('a third-party worker: register, status_report with machine stats, timeout, unregister', async (t) => {
      clock.set(T0 + 2 * HOUR);
      isError(t, await daemon('register', { worker: 'gpu-box:0' }, {}), 401, /runner token/);
      isError(t, await daemon('register', { worker: 'gpu-box:0' }, worker({ Authorization: `Bearer ${'x'.repeat(48)}` })), 401, /Invalid cluster id or runner token/);
      isError(t, await daemon('register', { worker: 'gpu-box:0' }, { Authorization: `OAuth ${api.user.token}` }), 401);
      isError(t, await post('register', { worker: 'gpu-box:0' }), 401, undefined, 'a user token is not a runner token');
      isError(t, await daemon('status_report', { worker: 'gpu-box:0', timestamp: 1 }), 404, /not registered/);
      isError(t, await daemon('register', { worker: ids[0] }), 409, /taken/);

      const reg = await daemon('register', { worker: 'gpu-box:0', timeout: 60, queues: ['q1', 'q1', 'q2'], tags: ['gpu'] });
      t.equal(reg.status, 200);
      t.same(reg.body, {});
      const listed = (await post('get_all', {})).body.workers;
      t.match(listed, [{ id: 'gpu-box:0', external: true, state: 'registered', tags: ['gpu'], queues: [{ id: 'q1', name: 'q1' }, { id: 'q2', name: 'q2' }], timeout: 60, ip: '127.0.0.1', slots: { busy: 0, total: 1 } }]);
      t.notOk(JSON.stringify(listed).includes(token), 'the runner token is never shown');

      const stats = { cpu_usage: [10, 30], memory_used: 1000, memory_free: 3000, network_rx: 2, gpu_usage: [50], disk_free_home: 40 };
      t.equal((await daemon('status_report', { worker: 'gpu-box:0', timestamp: Math.floor(clock.now().getTime() / 1000), task: 'task-1', queue: 'gpu', machine_stats: stats })).status, 200);
      const reporting = (await post('get_all', {})).body.workers[0];
      t.match(reporting, { slots: { busy: 1 }, tasks: [{ id: 'task-1' }], task: { id: 'task-1' }, queue: { id: 'gpu', name: 'gpu' } });
      // A report without a queue clears it, as without a task.
      t.equal((await daemon('status_report', { worker: 'gpu-box:0', timestamp: 1, task: 'task-1' })).status, 200);
      t.equal((await post('get_all', {})).body.workers[0].queue, null, 'queue cleared');
      t.equal((await daemon('status_report', { worker: 'gpu-box:0', timestamp: Math.floor(clock.now().getTime() / 1000), task: 'task-1', queue: 'gpu', machine_stats: stats })).status, 200);
      await api.cp.stats.flush();
      const from = Math.floor(clock.now().getTime() / 1000) - 60;
      const got = await post('get_stats', { worker_ids: ['gpu-box:0'], from_date: from, to_date: from + 120, interval: 10, items: [{ key: 'cpu_total' }, { key: 'network_rx' }, { key: 'memory_total' }, { key: 'gpu_usage' }] });
      const value = (m: string) => got.body.workers[0].metrics.find((x: { metric: string }) => x.metric === m)?.stats[0].values[0];
      t.same([value('cpu_total'), value('network_rx'), value('memory_total'), value('gpu_usage')], [20, 2 * 1048576, 4000, 50], 'recorded in the runners\' units');
      const act = await post('get_activity_report', { from_date: from, to_date: from + 120, interval: 120 });
      t.same(act.body.active.counts, [1], 'a worker running a task is active');
      const keys = (await post('get_metric_keys', { worker_ids: ['gpu-box:0'] })).body.categories.map((c: { name: string }) => c.name);
      t.ok(keys.includes('gpu'), 'gpu metrics of a third-party worker');

      // Timeout: 60 s without a report and it is gone from the list, and reports answer 404.
      clock.advance(61_000);
      t.same((await post('get_all', {})).body, { workers: [] }, 'timed out');
      isError(t, await daemon('status_report', { worker: 'gpu-box:0', timestamp: 1 }), 404, /timed out/);
      const job = rollupJob({ store: api.store, clock, statsIntervalS: 10, log: silentLogger() });
      await job.tick(FENCE, SIGNAL);
      t.equal((await api.store.db.query("SELECT 1 FROM runners WHERE id = 'gpu-box:0'")).rows.length, 0, 'the leader removes the timed-out registration');
      t.equal((await daemon('register', { worker: 'gpu-box:0' })).status, 200, 'it may register again');
      t.match((await post('get_all', {})).body.workers, [{ id: 'gpu-box:0', timeout: 600, tags: [] }], 'default timeout 600 s');
      t.same((await post('get_metric_keys', { worker_ids: ['gpu-box:0'] })).body.categories.length > 0, true, 'its history stays');

      t.equal((await daemon('unregister', { worker: 'gpu-box:0' })).status, 200);
      t.same((await post('get_all', {})).body, { workers: [] }, 'unregistered');
      isError(t, await daemon('unregister', { worker: 'gpu-box:0' }), 404, /not registered/);
      isError(t, await daemon('unregister', { worker: ids[0] }), 409, /taken/);
    });

    t.test('bad input: 400 naming the field and the limit, changing nothing', async (t) => {
      const base = { from_date: T0 / 1000, to_date: T0 / 1000 + 600, interval: 60, items: [{ key: 'cpu_total' }] };
      const rows = await count(api, 'runners');
      const cases: [string, unknown, RegExp][] = [
        ['get_stats', { ...base, interval: 0 }, /interval must be an integer from 1 to 31536000, got 0/],
        ['get_stats', { ...base, from_date: undefined }, /from_date is required/],
        ['get_stats', { ...base, to_date: base.from_date }, /to_date must be after from_date/],
        ['get_stats', { ...base, to_date: base.from_date + 86400 * 30, interval: 60 }, /interval must be at least 260 seconds for a range of 2592000 seconds \(at most 10000 points\), got 60/],
        ['get_stats', { ...base, items: [] }, /items must hold 1 to 50/],
        ['get_stats', { ...base, items: Array(51).fill({ key: 'cpu_total' }) }, /items must hold at most 50/],
        ['get_stats', { ...base, items: [{ key: 'Bad Key' }] }, /items\[0\]\.key must be a metric key/],
        ['get_stats', { ...base, items: [{ key: 'cpu_total', category: 'p99' }] }, /items\[0\]\.category must be one of avg, min, max, last, count/],
        ['get_stats', { ...base, worker_ids: Array(1001).fill('a') }, /worker_ids must hold at most 1000/],
        ['get_stats', { ...base, split_by_variant: 'yes' }, /split_by_variant must be true or false/],
        ['get_activity_report', { from_date: -1, to_date: 10, interval: 1 }, /from_date must be a number from 0 to 253402300799, got -1/],
        ['get_all', { last_seen: 'never' }, /last_seen must be an integer from 0 to 315360000 \(seconds\), or 'none'/],
        ['get_all', { last_seen: -5 }, /last_seen/],
      ];
      for (const [path, body, msg] of cases) isError(t, await post(path, body), 400, msg, `${path} ${JSON.stringify(body).slice(0, 60)}`);
      const writes: [string, unknown, RegExp][] = [
        ['register', {}, /worker is required/],
        ['register', { worker: 'x'.repeat(129) }, /worker must be (at most 128 bytes|a worker id of 1 to 128 characters)/],
        ['register', { worker: 'a', timeout: 0 }, /timeout must be an integer from 1 to 604800, got 0/],
        ['register', { worker: 'a', tags: Array(65).fill('t') }, /tags must hold at most 64/],
        ['status_report', { worker: 'a' }, /timestamp is required/],
        ['status_report', { worker: 'a', timestamp: 1, machine_stats: { cpu_usage: [101] } }, /machine_stats\.cpu_usage\[0\] must be a number from 0 to 100, got 101/],
        ['status_report', { worker: 'a', timestamp: 1, machine_stats: { memory_used: 'lots' } }, /machine_stats\.memory_used must be a number from 0/],
        ['unregister', { worker: 'a\u0001' }, /worker must be a worker id/],
      ];
      for (const [path, body, msg] of writes) isError(t, await daemon(path, body), 400, msg, `${path} ${JSON.stringify(body).slice(0, 60)}`);
      t.equal(await count(api, 'runners'), rows, 'nothing registered');
      isError(t, await api.request('POST', '/2/workers.get_all', { json: {}, token: null }), 401);
    });

    t.test('retention: raw samples after 2 days, minutes after 30, hours after a year', async (t) => {
      const settings = { tasksDays: 30, schedulesDays: 30, batch: 5, pauseMs: 0, intervalS: 3600, queueLoadDays: 0, queueLoadHourlyDays: 0, statsRawDays: 2, statsMinuteDays: 30, statsHourDays: 365 };
      const job = retentionJob({ store: api.store, clock, settings, metrics: new ControlPlaneMetrics(), log: silentLogger() });
      const before = { raw: await count(api, 'runner_stats_raw'), m: await count(api, 'runner_stats_1m'), h: await count(api, 'runner_stats_1h') };
      t.ok(before.raw >= 26 && before.m >= 6 && before.h >= 2);
      clock.set(T0 + 2 * DAY - MIN);
      await job.tick(FENCE, SIGNAL);
      t.equal(await count(api, 'runner_stats_raw'), before.raw, 'raw samples kept within 2 days');
      clock.set(T0 + 2 * DAY + 3 * HOUR);
      await job.tick(FENCE, SIGNAL);
      t.equal(await count(api, 'runner_stats_raw'), 0, 'raw samples gone after 2 days (in batches of 5)');
      t.same([await count(api, 'runner_stats_1m'), await count(api, 'runner_stats_1h')], [before.m, before.h], 'roll-ups kept');
      // get_stats by the minute still answers from the minutes.
      const r = await post('get_stats', { from_date: T0 / 1000, to_date: T0 / 1000 + 180, interval: 60, items: [{ key: 'slots_total', category: 'count' }] });
      t.same(r.body.workers[0].metrics[0].stats[0].values, [5, 6, 2], 'minutes answer once the raw samples are gone');
      clock.set(T0 + 31 * DAY);
      await job.tick(FENCE, SIGNAL);
      t.same([await count(api, 'runner_stats_1m'), await count(api, 'runner_stats_1h')], [0, before.h], 'minutes gone after 30 days, hours kept');
      const h = await post('get_stats', { from_date: T0 / 1000, to_date: T0 / 1000 + 180, interval: 60, items: [{ key: 'slots_total', category: 'count' }] });
      t.same(h.body.workers[0].metrics[0].stats[0].values, [13], 'then the hours answer, even by the minute');
      clock.set(T0 + 366 * DAY);
      await job.tick(FENCE, SIGNAL);
      t.equal(await count(api, 'runner_stats_1h'), 0, 'hours gone after a year');
      const stale = job.tick({ term: 0, holder: 'stale' }, SIGNAL);
      await t.rejects(stale, { code: 'fenced' }, "a stale leader's pass is refused");
    });
  });
}

t.test('the read plan: the coarsest table no coarser than the interval that holds the data', async (t) => {
  const now = new Date(T0);
  const retention = { statsRawDays: 2, statsMinuteDays: 30, statsHourDays: 365 };
  const watermarks = { m: new Date(T0 - 2 * MIN), h: new Date(T0 - HOUR) };
  const ms = (r: readonly [Date, Date]) => [r[0].getTime() - T0, r[1].getTime() - T0];
  const plan = (fromAgo: number, intervalS: number) => planRanges({ from: new Date(T0 - fromAgo), to: now, intervalS, watermarks, now, retention });
  const byMinute = plan(DAY, 60);
  t.same([ms(byMinute.m), ms(byMinute.raw), ms(byMinute.h)], [[-DAY, -2 * MIN], [-2 * MIN, 0], [0, 0]], 'minutes, then raw samples for what is not rolled up');
  const byHour = plan(7 * DAY, 3600);
  t.same([ms(byHour.h), ms(byHour.m), ms(byHour.raw)], [[-7 * DAY, -HOUR], [-HOUR, -2 * MIN], [-2 * MIN, 0]], 'hours, then minutes, then raw');
  const fine = plan(3 * DAY, 10);
  t.same([ms(fine.m), ms(fine.raw), ms(fine.h)], [[-3 * DAY, -2 * DAY], [-2 * DAY, 0], [0, 0]], 'raw samples where kept, minutes before');
});

t.test('several replicas on one PostgreSQL: each records its own runners; every replica reads them all', async (t) => {
  const dbUrl = await freshPgDatabase(t);
  const prefix = etcdPrefix(t);
  const open = () =>
    openStore({ databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 }, silentLogger(), systemClock, newId);
  const setup = await open();
  t.teardown(() => setup.close());
  const user = await setup.accounts.createUser(`ha-workers-${Date.now()}@example.com`);
  const { token } = await setup.accounts.createToken(user.id, 'ha');
  const { cluster, token: ctoken } = await setup.clusters.create('ha-fleet', { userId: user.id });
  const replica = async (name: string): Promise<ControlPlane> => {
    const store = await open();
    const config = loadConfig({
      GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', DATABASE_URL: dbUrl, ETCD_ENDPOINTS: etcdEndpoint(), GANTRY_ETCD_PREFIX: prefix,
      GANTRY_SERVER_ID: name, GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_STATS_INTERVAL_S: '1', LOG_LEVEL: 'silent',
    });
    const cp = await startControlPlane(config, silentLogger(), { store, scheduler: false });
    t.teardown(async () => {
      await cp.stop();
      await store.close();
    });
    return cp;
  };
  const [a, b] = [await replica('cp-a'), await replica('cp-b')];
  const runnerOn = async (cp: ControlPlane) => {
    const r = await startRunner(
      loadRunnerConfig({
        GANTRY_CONTROL_PLANE: `127.0.0.1:${cp.grpcPort}`, GANTRY_CLUSTER_ID: cluster.id, GANTRY_CLUSTER_TOKEN: ctoken, GANTRY_RUNNER_WORK_DIR: tempDir(t, 'gantry-runner-'),
        GANTRY_RUNNER_SLOTS: '2', GANTRY_RUNNER_EXECUTOR: 'noop', GANTRY_RUNNER_HEALTH_PORT: '-1', LOG_LEVEL: 'silent',
      }),
      silentLogger(),
    );
    t.teardown(() => r.stop());
    return r;
  };
  const [ra, rb] = [await runnerOn(a), await runnerOn(b)];
  const post = async (cp: ControlPlane, path: string, json: unknown) => {
    const res = await fetch(`${cp.url}/2/workers.${path}`, { method: 'POST', headers: { Authorization: `OAuth ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify(json) });
    return (await res.json()) as any;
  };
  // Real time here: 1 s windows; each replica writes its own runner's samples.
  await until('samples of both runners, written by their replicas', async () => {
    await Promise.all([a.stats.flush(), b.stats.flush()]);
    const r = await setup.db.query<{ runner_id: string }>('SELECT DISTINCT s.runner_id FROM runner_stats_raw r JOIN runner_stat_series s ON s.id = r.series_id');
    return r.rows.length === 2;
  }, 20000);
  const all = await post(b, 'get_all', {});
  t.same(
    all.workers.map((w: { id: string; replica: string }) => [w.id, w.replica]).sort(),
    [[ra.agent.runnerId, 'cp-a'], [rb.agent.runnerId, 'cp-b']].sort(),
    'each runner with the replica holding its session, read from either',
  );
  const now = Math.floor(Date.now() / 1000);
  const stats = await post(a, 'get_stats', { from_date: now - 60, to_date: now + 60, interval: 120, items: [{ key: 'slots_total', category: 'max' }] });
  t.same(stats.workers.map((w: { worker: string }) => w.worker).sort(), [ra.agent.runnerId, rb.agent.runnerId].sort(), "replica A reads B's runner's samples too");
  t.ok(stats.workers.every((w: { metrics: { stats: { values: number[] }[] }[] }) => w.metrics[0]!.stats[0]!.values[0] === 2), 'slots_total as each runner says');
});
