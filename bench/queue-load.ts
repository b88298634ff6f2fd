/**
 * What recording the queue load costs, and how fast GET .../load answers over 31 days
 * (README.md, "Queue services"): prints one JSON line.
 *
 * On a fresh database (PostgreSQL, or PGlite with --engine pglite):
 *   - recording: `--queued` queued tasks (a tenth of them delayed) and `--finished` finished
 *     ones spread over `--projects` × `--codes` code packages × `--priorities` priorities;
 *     `--passes` recording passes as the leader runs them (store.queueLoad.record), timed;
 *   - storage: 31 days of per-minute rows for every series written directly, then the
 *     tables' size on disk (heap and indexes) per day, and the rows per day;
 *   - load: GET /2/projects/{id}/load?started=P31D through a real control plane, first page
 *     (1000 points), last page, and with a job_type_name filter, `--requests` times each.
 *
 * Usage: npm run bench:queue-load [-- --projects 10 --codes 10 --priorities 3 --queued 100000]
 *   (GANTRY_BENCH_PG_URL)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ManualClock } from '../lib/clock.ts';
import { newId } from '../lib/ids.ts';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { openStore } from '../control-plane/store/index.ts';
import { freshDatabase } from './database.ts';
import { pct, progress, round } from './stats.ts';

const { values: args } = parseArgs({
  options: {
    engine: { type: 'string', default: 'postgres' },
    projects: { type: 'string', default: '10' },
    codes: { type: 'string', default: '10' },
    priorities: { type: 'string', default: '3' },
    queued: { type: 'string', default: '100000' },
    finished: { type: 'string', default: '200000' },
    passes: { type: 'string', default: '20' },
    requests: { type: 'string', default: '20' },
  },
});
const P = Number(args.projects);
const C = Number(args.codes);
const PR = Number(args.priorities);
const QUEUED = Number(args.queued);
const FINISHED = Number(args.finished);
const PASSES = Number(args.passes);
const REQUESTS = Number(args.requests);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const MIN = 60_000;
const DAY = 86_400_000;
const T_END = Date.UTC(2026, 11, 1);

async function main() {
  const db = args.engine === 'postgres' ? await freshDatabase(ADMIN, 'gantry_bench_qload') : undefined;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-bench-qload-'));
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const clock = new ManualClock(T_END - 31 * DAY);
  const store = await openStore({ databaseUrl: db?.url, dataDir: dir, pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 600_000 }, log, clock, newId);
  try {
    progress(`${P} projects × ${C} code packages × ${PR} priorities; ${QUEUED} queued and ${FINISHED} finished tasks`);
    const user = await store.accounts.createUser('bench@example.com');
    const { token } = await store.accounts.createToken(user.id, 'bench');
    const codes: { project: string; id: string; name: string; rev: string }[] = [];
    for (let p = 0; p < P; p++) {
      const project = await store.accounts.createProject(user.id, `p${p}`);
      for (let c = 0; c < C; c++) {
        const code = await store.codes.upload(project.id, `code-${c}`, { image: 'busybox' });
        codes.push({ project: project.id, id: code.id, name: code.name, rev: code.latestRevisionId });
      }
    }
    const insertTasks = async (n: number, status: string, offset: number) =>
      store.db.query(
        `INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout, payload,
           created_at, updated_at, eligible_at, end_time)
         SELECT lpad(to_hex(g + $9), 24, '0'), ($1::text[])[1 + g % $5], ($2::text[])[1 + g % $5], ($3::text[])[1 + g % $5],
           ($4::text[])[1 + g % $5], 1, $6, (g / $5) % $7, 'default', 60, '', $8, $8,
           CASE WHEN $6 = 'queued' AND g % 10 = 0 THEN $8::timestamptz + interval '1 day' ELSE $8 END,
           CASE WHEN $6 = 'queued' THEN NULL ELSE $8 END
         FROM generate_series(0, $10 - 1) g`,
        [codes.map((c) => c.project), codes.map((c) => c.id), codes.map((c) => c.name), codes.map((c) => c.rev), codes.length, status, PR, clock.now(), offset, n],
      );
    await insertTasks(FINISHED, 'complete', 0);
    await insertTasks(QUEUED, 'queued', FINISHED);
    await store.db.query('ANALYZE tasks');

    // Recording passes, as the leader runs them (fenced), one instant a minute apart.
    const fence = { term: 1, holder: 'bench' };
    const passMs: number[] = [];
    let series = 0;
    for (let i = 0; i < PASSES; i++) {
      clock.advance(MIN);
      const t0 = performance.now();
      const r = await store.queueLoad.record(clock.now(), 15_000, fence);
      passMs.push(performance.now() - t0);
      series = r.series;
    }
    progress(`recording: ${series} series a pass, p50 ${round(pct(passMs, 50))} ms`);

    // 31 days of per-minute rows for every series, written directly.
    await store.db.query('TRUNCATE queue_load, queue_load_ticks, cluster_load');
    const instants = 31 * 1440;
    const start = T_END - 31 * DAY;
    progress(`writing 31 days: ${instants} instants × ${codes.length * PR} series`);
    const t1 = performance.now();
    await store.db.query(`INSERT INTO queue_load_ticks (at, recorded_at) SELECT $1::timestamptz + g * interval '1 minute', $1::timestamptz + g * interval '1 minute' FROM generate_series(0, $2 - 1) g`, [new Date(start), instants]);
    for (const c of codes) {
      await store.db.query(
        `INSERT INTO queue_load (project_id, at, code_id, priority, pending, queued, running)
         SELECT $1, $3::timestamptz + g * interval '1 minute', $2, pr, (g % 7), (g % 113), (g % 5)
         FROM generate_series(0, $4 - 1) g, generate_series(0, $5 - 1) pr ORDER BY 2`,
        [c.project, c.id, new Date(start), instants, PR],
      );
    }
    await store.db.query(
      `INSERT INTO cluster_load (cluster, at, busy, queued, runners, slots, instances_add, instances_live, instances_kill)
       SELECT 'default', $1::timestamptz + g * interval '1 minute', 10, 100, 5, 10, 0, 5, 0 FROM generate_series(0, $2 - 1) g`,
      [new Date(start), instants],
    );
    await store.db.query('ANALYZE queue_load');
    progress(`written in ${round((performance.now() - t1) / 1000)} s`);
    const size = async (table: string) => Number((await store.db.query<{ n: string }>(`SELECT pg_total_relation_size('${table}') AS n`)).rows[0]!.n);
    const bytes = { queue_load: await size('queue_load'), queue_load_ticks: await size('queue_load_ticks'), cluster_load: await size('cluster_load') };
    const total = bytes.queue_load + bytes.queue_load_ticks + bytes.cluster_load;

    // GET .../load over 31 days through a real control plane.
    clock.set(T_END);
    const config = loadConfig({ GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'warn', GANTRY_DATA_DIR: dir });
    const cp = await startControlPlane(config, log, { store, clock, scheduler: false });
    const project = codes[0]!.project;
    const time = async (query: string) => {
      const ms: number[] = [];
      let count = 0;
      for (let i = 0; i < REQUESTS; i++) {
        const t0 = performance.now();
        const res = await fetch(`${cp.url}/2/projects/${project}/load?${query}`, { headers: { Authorization: `OAuth ${token}` } });
        const body = (await res.json()) as { count: number };
        ms.push(performance.now() - t0);
        if (res.status !== 200) throw new Error(`load answered ${res.status}: ${JSON.stringify(body)}`);
        count = body.count;
      }
      return { points: count, p50_ms: round(pct(ms, 50)), p99_ms: round(pct(ms, 99)) };
    };
    const load = {
      first_page_1000: await time('started=P31D&resolution=minute&per_page=1000'),
      last_page_1000: await time(`started=P31D&resolution=minute&per_page=1000&page=${Math.floor(instants / 1000)}`),
      by_name_first_page: await time('started=P31D&resolution=minute&per_page=1000&job_type_name=code-1'),
    };
    await cp.stop();

    const seriesTotal = codes.length * PR;
    console.log(
      JSON.stringify({
        date: new Date().toISOString(),
        engine: args.engine,
        machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB`,
        projects: P,
        codes_per_project: C,
        priorities: PR,
        series: seriesTotal,
        queued_tasks: QUEUED,
        finished_tasks: FINISHED,
        recording_pass_ms: { p50: round(pct(passMs, 50)), max: round(Math.max(...passMs)), passes: PASSES, series_written: series },
        per_day: {
          rows_queue_load: seriesTotal * 1440,
          rows_ticks: 1440,
          rows_cluster_load: 1440,
          bytes_queue_load: Math.round(bytes.queue_load / 31),
          bytes_all: Math.round(total / 31),
          rows_hourly_rollup: seriesTotal * 24,
        },
        bytes_per_row_queue_load: round(bytes.queue_load / (seriesTotal * instants)),
        load_31_days: load,
      }),
    );
  } finally {
    await store.close();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
