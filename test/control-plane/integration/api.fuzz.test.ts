import t from 'tap';
import fc from 'fast-check';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi } from '../../helpers/api.ts';
import { FUZZ_ENV, FingerprintOracle, Fuzzer, HttpTransport, MAX_REPLY_MS, RowFingerprints, UNROUTED, World, type Operation, type WireRequest } from '../../helpers/fuzz.ts';

/**
 * Every operation of the OpenAPI document, fuzzed on both engines (test/helpers/fuzz.ts):
 * valid requests and requests with one thing wrong — wrong types, missing and extra fields,
 * boundary values, NUL, unpaired surrogates, raw invalid UTF-8, deep nesting, oversized
 * bodies, wrong content types, broken multipart bodies and zips, odd query encodings, odd
 * headers, methods and paths. For every request: no 5xx, a reply within 5 s, errors exactly
 * `{"msg"}`, the reply as the document says, and no stored row changed by a rejected request
 * (or a GET) — every table of the store fingerprinted around every request.
 *
 * Fixed seed; a failure prints fast-check's seed and path. Replay one request with
 * GANTRY_FUZZ_REPLAY=<engine>:<operationId>:<seed>:<path> (the setup runs first, then only it);
 * GANTRY_FUZZ_SEED, GANTRY_FUZZ_RUNS and GANTRY_FUZZ_ROUNDS change the run (with another seed,
 * raise GANTRY_FUZZ_RUNS if a required kind of input was not drawn).
 */

const SEED = Number(process.env.GANTRY_FUZZ_SEED ?? 20261201);
/** Requests per operation per round (more for operations with bodies: see runsOf). */
const RUNS = Number(process.env.GANTRY_FUZZ_RUNS ?? 15);
/** Rounds over all operations, so that what one operation does (a delete) meets the others. */
const ROUNDS = Number(process.env.GANTRY_FUZZ_ROUNDS ?? 4);
const REPLAY = process.env.GANTRY_FUZZ_REPLAY?.split(':');
/** Extra rounds, at most, until every required kind of input was sent. */
const TOP_UP_ROUNDS = 5;

/**
 * Operations no request can get accepted: tokens are never shown again; no cluster here has
 * instances to terminate; a third-party worker's writes take a cluster's runner token, which
 * the fuzzer's users never hold (api.workers.test.ts sends them with one); the log
 * WebSockets accept only a whole handshake, which the fuzzer sends only by chance (its
 * upgrade kind; api.live-logs.test.ts connects to them); a redelivery names a delivery, which
 * exists only once a task with webhooks has ended and whose id the fuzzer never learns
 * (outbox.webhooks.test.ts redelivers).
 */
const NEVER_ACCEPTED = new Set([
  'getClusterToken', 'terminateClusterInstances', 'unrouted', 'registerWorker', 'reportWorkerStatus', 'unregisterWorker',
  'followTaskLogSocket', 'followExecutionLogSocket', 'redeliver',
]);

/** Inputs the run must have sent (by kind), so a change to the generators cannot quietly drop one. */
const REQUIRED_KINDS = [
  'valid',
  'body:wrong-type', 'body:boundary', 'body:bad-text', 'body:deep-nesting', 'body:missing-required', 'body:extra-field', 'body:null', 'body:huge-number',
  'body:not-object', 'body:syntax', 'body:empty', 'body:bom', 'body:oversized', 'body:at-limit', 'body:content-type', 'body:duplicate-keys', 'body:invalid-utf8', 'body:chunked', 'body:cut-short',
  'body:nul', 'body:utf8-surrogate',
  'body:data-as-file', 'body:missing-data', 'body:truncated', 'body:no-closing-boundary', 'body:missing-boundary', 'body:wrong-boundary', 'body:garbage', 'body:data-not-json', 'body:part-headers',
  'body:zip-random-after-magic', 'body:zip-truncated-cd', 'body:zip-abs-name', 'body:zip-dotdot', 'body:zip-nul-name', 'body:zip-many-entries-over',
  'query:wrong-type', 'query:boundary', 'query:odd-encoding', 'query:repeated', 'query:long-value', 'query:bad-text', 'query:extra',
  'path:stale', 'path:foreign', 'path:random-id', 'path:odd-encoding',
  'auth:none', 'auth:garbage', 'auth:foreign-token', 'auth:revoked-token', 'auth:query-token', 'auth:latin1-bytes', 'auth:control-chars', 'auth:huge', 'auth:duplicate',
  'method:wrong-verb', 'method:head', 'method:options', 'method:unknown', 'method:connect',
  'headers:huge-header', 'headers:bad-content-length', 'headers:te-and-cl', 'headers:no-host', 'headers:expect-continue',
  'unrouted:case', 'unrouted:trailing-slash', 'unrouted:traversal', 'unrouted:bytes', 'unrouted:long-path', 'unrouted:double-slash',
];

/** More requests where there is more to vary: the upload's form and zip, JSON bodies, odd paths. */
function runsOf(op: Operation): number {
  if (op.body?.kind === 'multipart') return RUNS * 6;
  if (op.body || op === UNROUTED) return RUNS * 2;
  return RUNS;
}

const seedOf = (round: number, index: number) => (SEED + round * 1_000_003 + index * 7919) | 0;

for (const engine of ENGINES) {
  if (REPLAY && REPLAY[0] !== engine) continue;
  t.test(`${engine}: every operation of the API document, fuzzed`, async (t) => {
    const started = performance.now();
    const api = await startTestApi(t, engine, { env: { ...FUZZ_ENV } });
    const other = await api.newUser();
    const revoked = await api.store.accounts.createToken(api.user.userId, 'revoked');
    await api.store.accounts.revokeToken(revoked.id);
    const transport = new HttpTransport(api.url);
    t.teardown(() => transport.close());
    const rows = new FingerprintOracle(await RowFingerprints.open((sql, params) => api.store.db.query(sql, params)));
    const fuzzer = new Fuzzer({ send: (r) => transport.send(r), rows }, new World(api.user, other, revoked.token));
    await fuzzer.setup();
    // Executions as runners leave them (no runner takes part here): each of the world's tasks
    // ran once, lost its runner, and runs a second time, so the executions' reads and their
    // stop have real rows to answer from.
    for (const [i, task] of fuzzer.world.tasks.entries()) {
      const row = (await api.store.db.query<{ code_id: string }>('SELECT code_id FROM tasks WHERE id = $1', [task.id])).rows[0];
      if (!row) continue;
      const now = new Date();
      const lease = (a: number, state: string, outcome: string | null) =>
        api.store.db.query(
          `INSERT INTO task_leases (id, task_id, attempt, runner_id, code_id, granted_at, expires_at, accepted_at, started_at, ended_at, state, outcome, container_id)
           VALUES ($1, $2, $3, 'fuzz-runner', $4, $5, $5, $5, $5, $6, $7, $8, $9)`,
          [`fuzz-lease-${i}-${a}`, task.id, a, row.code_id, now, outcome ? now : null, state, outcome, 'c'.repeat(64)],
        );
      await lease(1, 'done', 'reclaimed');
      await lease(2, 'running', null);
      await api.store.db.query(`UPDATE tasks SET attempt = 2, lease_id = $2, runner_id = 'fuzz-runner', status = 'running', cancel_requested_at = NULL WHERE id = $1`, [
        task.id,
        `fuzz-lease-${i}-2`,
      ]);
      await api.store.db.query('INSERT INTO task_log_chunks (task_id, attempt, byte_offset, stream, data) VALUES ($1, 1, 0, 1, $2)', [task.id, Buffer.from('fuzz\n')]);
      fuzzer.world.executed.push(task.id);
    }
    const ops = [...fuzzer.operations, UNROUTED];

    // Every request runs, failing or not (a fault on one kind of input must not hide the
    // others); each failure keeps fast-check's seed and path, reported below.
    const run = async (op: Operation, seed: number, numRuns: number, path?: string) => {
      let n = 0;
      await fc.assert(
        fc.asyncProperty(fc.gen(), async (g) => {
          await fuzzer.step(op, g, { seed, path: path ?? String(n++) });
        }),
        { seed, numRuns, ...(path ? { path } : {}) },
      );
    };

    if (REPLAY) {
      const [, opId, seed, path] = REPLAY;
      await run(ops.find((o) => o.id === opId) ?? fuzzer.op(opId!), Number(seed), 1, path);
      t.same(fuzzer.stats.failures, [], 'the replayed request passes the oracle');
      return;
    }

    // The row oracle is not vacuous: a write it was not told of, between a rejected
    // request's two fingerprints, is seen.
    const probe = fuzzer.world.codes[0]!;
    const fake: WireRequest = { op: 'probe', kind: 'probe', actor: 'me', params: {}, method: 'POST', target: '/2/probe', headers: [], body: Buffer.alloc(0) };
    await rows.before(fake);
    await api.store.db.query('UPDATE codes SET paused = NOT paused WHERE id = $1', [probe.id]);
    t.match(await rows.after(fake, { status: 400, headers: {}, body: Buffer.alloc(0), ms: 0 }), [/changed stored rows: codes/], 'the row oracle sees a change of one column of one row');
    await api.store.db.query('UPDATE codes SET paused = NOT paused WHERE id = $1', [probe.id]);
    rows.invalidate();

    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, op] of ops.entries()) await run(op, seedOf(round, i), runsOf(op));
      // The process still serves after everything this round sent.
      await fuzzer.liveness();
    }
    // A kind drawn rarely (one branch of one operation's form) may not come up in a run of
    // this size for a given seed and document: more requests on fresh seeds, on the
    // operations that can send it, until every required kind has been sent (bounded).
    for (let extra = 0; extra < TOP_UP_ROUNDS; extra++) {
      const missing = REQUIRED_KINDS.filter((k) => !Object.hasOwn(fuzzer.stats.byKind, k));
      if (missing.length === 0) break;
      const bodiesOnly = missing.every((k) => k.startsWith('body:'));
      for (const [i, op] of ops.entries()) if (!bodiesOnly || op.body) await run(op, seedOf(ROUNDS + extra, i), runsOf(op));
      await fuzzer.liveness();
    }

    // One line per kind of fault (the same fault tends to show on every operation), with
    // the first request that showed it and how to replay that request alone.
    for (const [key, { count, first: f }] of fuzzer.stats.faults) {
      t.fail(
        `${engine}: ${count}× ${key}\n  first: ${f.op}, replay: GANTRY_FUZZ_REPLAY=${engine}:${f.op}:${f.seed}:${f.path}\n  problems: ${f.problems.join('; ')}\n  request: ${JSON.stringify(f.request)}\n  reply: ${f.status} ${f.reply}`,
      );
    }

    const s = fuzzer.stats;
    t.equal(s.failureCount, 0, 'no request failed the oracle');
    t.equal(s.byClass['5xx'] ?? 0, 0, 'no 5xx');
    t.equal(s.byClass.none ?? 0, 0, 'every request was answered');
    t.ok(s.maxMs < MAX_REPLY_MS, `slowest reply ${Math.round(s.maxMs)} ms (${s.slowest}), under ${MAX_REPLY_MS} ms`);
    const total = ops.reduce((n, op) => n + runsOf(op) * ROUNDS, 0);
    t.ok(s.requests >= total, `${s.requests} requests sent (${total} generated)`);
    for (const op of ops) {
      const got = s.byOp[op.id]?.n ?? 0;
      t.ok(got >= runsOf(op) * ROUNDS, `${op.id}: ${got} requests`);
      t.ok(s.rejected(op.id) > 0, `${op.id}: some requests rejected (${s.rejected(op.id)})`);
      if (!NEVER_ACCEPTED.has(op.id)) t.ok(s.accepted(op.id) > 0, `${op.id}: some requests accepted (${s.accepted(op.id)})`);
    }
    t.ok(rows.checked > s.requests / 2, `rows compared around ${rows.checked} rejected requests and GETs`);
    const missing = REQUIRED_KINDS.filter((k) => !Object.hasOwn(s.byKind, k));
    t.same(missing, [], 'every required kind of input was sent');
    t.comment(
      `${engine}: ${s.requests} requests in ${Math.round((performance.now() - started) / 1000)} s; ${JSON.stringify(s.byClass)}; ` +
        `p99 ${Math.round(s.percentile(99))} ms, max ${Math.round(s.maxMs)} ms; ${Object.keys(s.byKind).length} kinds of input; seed ${SEED}`,
    );
  });
}
