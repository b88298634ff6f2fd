/**
 * The API fuzzer (test/helpers/fuzz.ts) against a real `gantry start` child process on a
 * fresh database, for as many requests as asked: the same generators and the same oracle as
 * test/control-plane/integration/api.fuzz.test.ts — no 5xx, a reply within 5 s, errors exactly `{"msg"}`,
 * replies as the OpenAPI document says, the process up (a liveness check after every turn),
 * and no rejected request (nor any GET) changing a stored row.
 *
 * Rows: the child owns the store (PGlite allows one process at a time), so before it starts
 * every table gets a trigger that logs each row change with its time; each request's window
 * on the wire is recorded, and after the child stops every logged change is matched to the
 * request it happened during (or to none: nothing else writes the store). The child runs as
 * a follower: a standby key in etcd holds the leadership, so no leader loop (schedules,
 * promotion, sweeper, autoscaler) writes behind the requests' backs.
 *
 *   npm run bench:fuzz -- --seed N --requests 100000 [--engine pglite|postgres] [--batch 25]
 *
 * Needs etcd (GANTRY_BENCH_ETCD, default http://127.0.0.1:2379) and, for postgres, an admin
 * URL (GANTRY_BENCH_PG_URL or GANTRY_TEST_PG_URL; a database is made and dropped). Progress
 * goes to stderr; one JSON line of results to stdout; exit 1 on any oracle failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import fc from 'fast-check';
import { systemClock } from '../lib/clock.ts';
import { newId } from '../lib/ids.ts';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { openStore, type Store } from '../control-plane/store/index.ts';
import {
  FUZZ_ENV,
  Fuzzer,
  HttpTransport,
  UNROUTED,
  WindowOracle,
  World,
  installChangeLog,
  readChangeLog,
  type Identity,
  type Operation,
} from '../test/helpers/fuzz.ts';
import { freshDatabase } from './database.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const { values: args } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    requests: { type: 'string', default: '100000' },
    engine: { type: 'string', default: 'pglite' },
    batch: { type: 'string', default: '25' },
  },
});
const SEED = Number(args.seed);
const REQUESTS = Number(args.requests);
const ENGINE = args.engine;
const BATCH = Number(args.batch);
if (ENGINE !== 'pglite' && ENGINE !== 'postgres') throw new Error(`--engine must be pglite or postgres, got ${ENGINE}`);
if (!Number.isInteger(SEED) || !Number.isInteger(REQUESTS) || REQUESTS < 1 || !Number.isInteger(BATCH) || BATCH < 1) {
  throw new Error('--seed, --requests and --batch must be integers (requests and batch at least 1)');
}

const progress = (msg: string) => process.stderr.write(`[fuzz] ${msg}\n`);
const round = (x: number) => Math.round(x * 10) / 10;

/** `gantry start` as its own process; resolves with its API URL once it says it is up. */
function startControlPlane(env: Record<string, string>): Promise<{ proc: ChildProcess; url: string; exited: Promise<number | null> }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), 'start'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  let out = '';
  let ready = false;
  return new Promise((resolve, reject) => {
    // The banner is on stderr (its logs, warnings and worse, go to this process's stdout).
    proc.stderr!.on('data', (d: Buffer) => {
      // Once it is up, whatever else it says on stderr goes to this process's stderr.
      if (ready) return void process.stderr.write(d);
      out += d.toString();
      if (out.includes('Press Ctrl-C to stop')) {
        ready = true;
        resolve({ proc, url: /API base URL: (\S+)\/2\//.exec(out)![1]!, exited });
      }
    });
    void exited.then((code) => {
      if (!ready) reject(new Error(`the control plane exited (${code}) before it was ready:\n${out}`));
    });
  });
}

async function identity(store: Store, email: string): Promise<Identity> {
  const u = await store.accounts.createUser(email);
  const p = await store.accounts.createProject(u.id, 'fuzz');
  const { token } = await store.accounts.createToken(u.id, 'fuzz');
  return { userId: u.id, projectId: p.id, token };
}

async function main(): Promise<number> {
  const started = Date.now();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-fuzz-'));
  const admin = process.env.GANTRY_BENCH_PG_URL ?? process.env.GANTRY_TEST_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
  const db = ENGINE === 'postgres' ? await freshDatabase(admin, 'gantry_fuzz') : undefined;
  const etcd = new Etcd3({ hosts: process.env.GANTRY_BENCH_ETCD ?? 'http://127.0.0.1:2379' });
  const prefix = `/gantry-fuzz-${process.pid}/`;
  const env: Record<string, string> = {
    ...FUZZ_ENV,
    GANTRY_DATA_DIR: path.join(work, 'data'),
    ETCD_ENDPOINTS: process.env.GANTRY_BENCH_ETCD ?? 'http://127.0.0.1:2379',
    GANTRY_ETCD_PREFIX: prefix,
    GANTRY_SERVER_ID: 'fuzz-control-plane',
    ...(db ? { DATABASE_URL: db.url } : {}),
  };
  const config = loadConfig(env);
  const log = createLogger({ name: 'fuzz', level: 'warn', destination: process.stderr });
  let child: Awaited<ReturnType<typeof startControlPlane>> | undefined;
  let lease: ReturnType<Etcd3['lease']> | undefined;
  try {
    // The store first, as the child will find it: migrated, two users, a revoked token, and
    // the change log's triggers.
    progress(`preparing a fresh ${ENGINE} store`);
    let store = await openStore(config, log, systemClock, newId);
    const me = await identity(store, 'fuzz@example.com');
    const other = await identity(store, 'fuzz-other@example.com');
    const revoked = await store.accounts.createToken(me.userId, 'revoked');
    await store.accounts.revokeToken(revoked.id);
    const watched = await installChangeLog(
      (sql, params) => store.db.query(sql, params),
      (sql) => store.db.exec(sql),
    );
    await store.close();

    // A standby that leads: the child is a follower, so no leader loop writes the store.
    // A long TTL: this process's event loop may stall while it builds a large input.
    lease = etcd.lease(60);
    await lease.put(`${prefix}election/0-fuzz-standby`).value('fuzz-standby');

    progress(`starting gantry start (${ENGINE}, ${watched.length} tables watched)`);
    child = await startControlPlane(env);
    let exitedWith: number | null | undefined;
    void child.exited.then((code) => {
      exitedWith = code;
    });

    const transport = new HttpTransport(child.url);
    const rows = new WindowOracle();
    const fuzzer = new Fuzzer({ send: (r) => transport.send(r), rows }, new World(me, other, revoked.token));
    const s = fuzzer.stats;
    const crash = () => {
      if (exitedWith === undefined) return false;
      s.fail({ op: '-', kind: 'process', problems: [`the control plane exited (${exitedWith}) while being fuzzed`], status: 0, reply: '', request: {} });
      return true;
    };
    await fuzzer.setup();
    const ops: Operation[] = [...fuzzer.operations, UNROUTED];
    // As in the test: more requests where there is more to vary.
    const batchOf = (op: Operation) => (op.body?.kind === 'multipart' ? BATCH * 6 : op.body || op === UNROUTED ? BATCH * 2 : BATCH);
    const t0 = performance.now();
    let nextReport = 5000;
    let turn = 0;
    outer: while (s.requests < REQUESTS) {
      for (const [i, op] of ops.entries()) {
        const seed = (SEED * 1_000_003 + turn * 7919 + i) | 0;
        let n = 0;
        try {
          await fc.assert(
            fc.asyncProperty(fc.gen(), async (g) => {
              await fuzzer.step(op, g, { seed, path: String(n++) });
            }),
            { seed, numRuns: batchOf(op) },
          );
        } catch (err) {
          // step() itself fails only when a request the fuzzer needs (putting back a code
          // package or a cluster) fails: the server is not serving.
          s.fail({ op: op.id, kind: 'fuzzer', problems: [(err as Error).message.slice(0, 500)], status: 0, reply: '', request: {}, seed, path: String(n - 1) });
          if (crash()) break outer;
        }
        if (crash()) break outer;
        if (s.requests >= nextReport) {
          nextReport += 5000;
          const secs = (performance.now() - t0) / 1000;
          progress(
            `${s.requests}/${REQUESTS} requests, ${Math.round(s.requests / secs)}/s; ${JSON.stringify(s.byClass)}; ` +
              `max ${Math.round(s.maxMs)} ms; ${s.failureCount} failures in ${s.faults.size} kinds`,
          );
        }
      }
      turn++;
      try {
        await fuzzer.liveness();
      } catch (err) {
        s.fail({ op: 'liveness', kind: 'liveness', problems: [(err as Error).message.slice(0, 500)], status: 0, reply: '', request: {} });
        if (crash()) break;
      }
    }
    const secs = (performance.now() - t0) / 1000;
    transport.close();

    progress('stopping the control plane');
    child.proc.kill('SIGTERM');
    const killer = setTimeout(() => child?.proc.kill('SIGKILL'), 30_000);
    await child.exited;
    clearTimeout(killer);

    progress('matching the change log to the requests');
    store = await openStore(config, log, systemClock, newId);
    const changes = await readChangeLog((sql, params) => store.db.query(sql, params));
    await store.close();
    const verdicts = rows.attribute(changes);
    let duringAccepted = 0;
    for (const v of verdicts) {
      if (v.duringAccepted) {
        duringAccepted++;
        continue;
      }
      s.fail({
        op: String(v.repro?.op ?? '-'),
        kind: String(v.repro?.kind ?? 'rows'),
        problems: [v.problem],
        status: v.status ?? 0,
        reply: '',
        request: v.repro ?? {},
        ...(v.repro?.seed !== undefined ? { seed: Number(v.repro.seed), path: String(v.repro.path) } : {}),
      });
    }
    // Not vacuous: accepted requests did write, and the log saw them in their windows.
    if (duringAccepted === 0) s.fail({ op: '-', kind: 'rows', problems: ['the change log recorded no change during any accepted request'], status: 0, reply: '', request: {} });

    const byOp: Record<string, Record<string, number>> = {};
    for (const [op, c] of Object.entries(s.byOp).sort()) byOp[op] = c;
    const summary = {
      bench: 'fuzz',
      date: new Date(started).toISOString(),
      engine: ENGINE,
      seed: SEED,
      machine: { cpus: os.cpus().length, memory_gib: Math.round(os.totalmem() / 2 ** 30), node: process.version, platform: `${os.type()} ${os.release()}` },
      requests: s.requests,
      seconds: round(secs),
      per_second: Math.round(s.requests / secs),
      by_status_class: s.byClass,
      by_operation: byOp,
      kinds_of_input: Object.keys(s.byKind).length,
      latency_ms: { p50: round(s.percentile(50)), p99: round(s.percentile(99)), max: round(s.maxMs), slowest: s.slowest },
      rows: { changes_logged: changes.length, during_accepted_requests: duringAccepted, windows: rows.windows.length, windows_that_may_not_change: rows.windows.filter((w) => !w.mayChange).length },
      failures: s.failureCount,
      faults: [...s.faults.entries()].map(([key, g]) => ({ count: g.count, fault: key, first: { op: g.first.op, problems: g.first.problems, status: g.first.status, reply: g.first.reply, seed: g.first.seed, path: g.first.path, request: g.first.request } })),
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return s.failureCount > 0 ? 1 : 0;
  } finally {
    if (child && child.proc.exitCode === null) child.proc.kill('SIGKILL');
    await lease?.revoke().catch(() => undefined);
    await etcd.delete().prefix(prefix).exec().catch(() => undefined);
    etcd.close();
    await db?.drop().catch((err: Error) => progress(`could not drop the database: ${err.message}`));
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench:fuzz: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(2);
  },
);
