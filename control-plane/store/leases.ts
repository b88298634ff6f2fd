import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';
import type { TaskStatus } from './codes.ts';
import { INSERT_COLUMNS, insertValues, type NewTask, type TasksStore } from './tasks.ts';
import { checkFence, type Fence } from './fence.ts';
import { reserveQueuedSql } from './quotas.ts';

/**
 * Leases: the runner protocol's state in the store (research/dispatch.md 4.4, 4.5). Every
 * transition is one UPDATE guarded by lease id, attempt, runner and state; zero rows means
 * the caller is stale and is told so. PostgreSQL (or PGlite) is the only source of truth:
 * concurrency limits count live lease rows, so a crashed holder cannot leak a slot.
 */

export type LeaseState = 'offered' | 'accepted' | 'running' | 'done';

export interface Lease {
  id: string;
  task_id: string;
  attempt: number;
  runner_id: string;
  session_epoch: number;
  code_id: string;
  cluster: string;
  state: LeaseState;
  granted_at: Date;
  expires_at: Date;
  started_at: Date | null;
  ended_at: Date | null;
  outcome: string | null;
  container_id: string | null;
  cancel_sent_at: Date | null;
}

/** A claimed task with everything an Offer carries. */
export interface OfferRow {
  lease_id: string;
  attempt: number;
  task_id: string;
  project_id: string;
  code_id: string;
  code_name: string;
  code_rev: number;
  code_revision_id: string;
  image: string;
  command: string | null;
  env_vars: Record<string, string>;
  config: string | null;
  checksum: string | null;
  payload: string;
  timeout: number;
  priority: number;
  cluster: string;
  schedule_id: string | null;
  expires_at: Date;
  /** The package's concurrency limit when it has one (a slot must be taken before the offer). */
  max_concurrency: number | null;
  /** The project's limit on running tasks when it has one (a slot of its own too). */
  project_max_running: number | null;
}

export interface RunnerRef {
  id: string;
  epoch: number;
  cluster: string;
}

export interface ClaimOptions {
  /** How long the runner has to Accept (research/dispatch.md 4.6: 10 s). */
  acceptDeadlineMs: number;
  /** A queued task gains one priority level per this many seconds waited (no starvation). */
  ageingS: number;
  /** Code packages to leave out (their concurrency slots cannot be taken right now). */
  exclude?: readonly string[];
  /** Projects to leave out, likewise. */
  excludeProjects?: readonly string[];
}

/** What a runner reports at the end of a lease. */
export interface Completion {
  leaseId: string;
  attempt: number;
  /**
   * `task_fault`: the task could not run through its own fault (its image, command or zip
   * package): it ends `error` and spends its own retries, as `failed` does. `runner_error`:
   * the runner could not run it; it is requeued within the internal budget.
   */
  outcome: 'succeeded' | 'failed' | 'timed_out' | 'cancelled' | 'task_fault' | 'runner_error';
  exitCode: number;
  oomKilled: boolean;
  msg: string;
  startedAt: number;
  finishedAt: number;
}

export type Disposition = 'recorded' | 'duplicate' | 'stale';

/** Outcomes a lease ends with when it was taken away rather than completed. */
const RECLAIMED = new Set(['offer_expired', 'rejected', 'reclaimed', 'revoked', 'handed_back', 'no_slot']);

const OUTCOME_STATUS: Record<Completion['outcome'], TaskStatus | 'retry'> = {
  succeeded: 'complete',
  failed: 'error',
  timed_out: 'timeout',
  cancelled: 'cancelled',
  task_fault: 'error',
  runner_error: 'retry',
};

export interface LeaseConfig {
  leaseTtlMs: number;
  /** Internal retries after runner loss or runner errors before the task ends. */
  runnerLossBudget: number;
}

/**
 * The claim's candidates (SQL: a WITH list ending in `ordered`). Short slices of a
 * cluster's queue, each read in the order of the one queue index (tasks_ready) — the head by
 * priority, and at each lower level the oldest tasks, which ageing may have lifted — never
 * the whole queue; then ageing, round-robin across packages within a level, and `ord`, the
 * order of offers. Parameters: $1 cluster, $2 now, $3 rows per slice,
 * $4 ageing seconds, $5 packages and $6 projects to leave out.
 */
const slice = (where: string, order: string) => `
    (SELECT t.id, t.code_id, t.project_id, t.priority, t.eligible_at FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused
     WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.cluster = $1 AND ${where}
       AND NOT (t.code_id = ANY($5::text[])) AND NOT (t.project_id = ANY($6::text[]))
     ORDER BY ${order} LIMIT $3)`;
const aged = (priority: number) =>
  slice(`t.priority = ${priority} AND t.eligible_at <= $2::timestamptz - make_interval(secs => $4)`, 't.eligible_at, t.id');
const CANDIDATES = `
  head AS (${slice('t.eligible_at <= $2', 't.priority DESC, t.eligible_at, t.id')}
    UNION ${aged(1)}
    UNION ${aged(0)}
  ),
  -- The slices carry what the ordering needs: joining them back to tasks by id would let a
  -- planner pick a hash join over a sequential scan of the table for a few hundred rows.
  c AS (
    SELECT h.id, h.code_id, h.eligible_at, r.max_concurrency, h.project_id, p.max_running AS project_max,
      LEAST(2, h.priority + floor(extract(epoch FROM ($2::timestamptz - h.eligible_at)) / $4)::int) AS eff
    FROM head h JOIN codes c ON c.id = h.code_id
    JOIN code_revisions r ON r.id = c.latest_revision_id JOIN projects p ON p.id = h.project_id
  ),
  ordered AS (
    SELECT x.*, row_number() OVER (ORDER BY eff DESC, rr, eligible_at, id) AS ord FROM (
      SELECT c.*, row_number() OVER (PARTITION BY code_id, eff ORDER BY eligible_at, id) AS rr FROM c
    ) x
  )`;

/** An `offered` lease for each row of `upd` (placeholders $R runner, $E epoch, $N now, $X expiry). */
const LEASES_FROM_UPD = `INSERT INTO task_leases (id, task_id, attempt, runner_id, session_epoch, code_id, cluster, granted_at, expires_at, state)
    SELECT lease_id, id, attempt, $R, $E, code_id, cluster, $N, $X, 'offered' FROM upd`;

/**
 * Leases for claimed tasks (SQL: a WITH list after one named \`v\`(task_id, lease_id, ord)
 * of locked, claimable tasks). The task keeps its status and updated_at (it is still queued
 * to its user), so the update touches no indexed column and can stay on its heap page (a
 * HOT update, when the page has room).
 * Each attempt has its own log: a task offered again starts from an empty one, so this
 * attempt's output may be stored as soon as it arrives, even before the Accept.
 * Parameters: $R runner, $N now, $E epoch, $X expiry (given as placeholders to fill).
 */
const GRANT = `
  upd AS (
    UPDATE tasks t SET lease_id = v.lease_id, runner_id = $R, attempt = t.attempt + 1,
      log_size = 0, log_crc = 0, log_complete = false
    FROM v WHERE t.id = v.task_id
    RETURNING t.id, t.project_id, t.code_id, t.code_name, t.code_rev, t.code_revision_id, t.payload, t.timeout,
      t.priority, t.cluster, t.schedule_id, t.attempt, v.lease_id, v.ord
  ),
  ins AS (  -- executed although not referenced: data-modifying CTEs always run
    ${LEASES_FROM_UPD}
    RETURNING id
  ),
  cleared AS (
    DELETE FROM task_log_chunks d USING upd WHERE d.task_id = upd.id AND upd.attempt > 1
    RETURNING 1
  )`;

/** The columns of an OfferRow, from `upd` joined to the revision `r` (expiry: placeholder $X). */
const OFFER_COLUMNS = `upd.lease_id, upd.attempt, upd.id AS task_id, upd.project_id, upd.code_id, upd.code_name, upd.code_rev,
  upd.code_revision_id, r.image, r.command, r.env_vars, r.config, r.checksum, upd.payload, upd.timeout,
  upd.priority, upd.cluster, upd.schedule_id, $X::timestamptz AS expires_at`;

const fill = (sql: string, p: Record<string, number>) => sql.replace(/\$([A-Z])\b/g, (_, k: string) => `$${p[k]}`);

export class LeasesStore {
  private readonly endedCbs: ((leaseIds: string[]) => void)[] = [];

  constructor(
    private readonly c: StoreCtx,
    private readonly tasks: TasksStore,
  ) {}

  /** Called after a transaction that may have ended these leases commits (frees their concurrency slots). */
  onEnded(cb: (leaseIds: string[]) => void): () => void {
    this.endedCbs.push(cb);
    return () => {
      const i = this.endedCbs.indexOf(cb);
      if (i >= 0) this.endedCbs.splice(i, 1);
    };
  }

  private ended<T>(leaseIds: string[], result: T): T {
    if (leaseIds.length > 0) for (const cb of this.endedCbs) cb(leaseIds);
    return result;
  }

  /**
   * Claims up to `n` eligible tasks of the runner's cluster for it, in one transaction:
   * strict priority with ageing, round-robin across code packages within a level, paused
   * packages skipped, `max_concurrency` counted from live leases under a per-package
   * advisory lock (two dispatchers can never both admit the last slot). Each claimed task
   * gets a lease in state `offered` that expires at the accept deadline. The task's status
   * stays `queued` until the runner reports Started.
   */
  async claim(runner: RunnerRef, n: number, o: ClaimOptions): Promise<OfferRow[]> {
    if (n <= 0) return [];
    const fast = await this.claimUnlimited(runner, n, o);
    return fast ?? this.claimLimited(runner, n, o);
  }

  /**
   * The claim as one statement, for a queue head without concurrency limits (the common
   * case, and the one latency depends on): candidates, row locks on the first `n` of them
   * in offer order, leases, offers — one round trip, committed on its own. Undefined when a
   * candidate's package or project has a limit: those need the advisory locks and counts of
   * claimLimited, so the whole claim goes there (strict priority is never bent).
   */
  private async claimUnlimited(runner: RunnerRef, n: number, o: ClaimOptions): Promise<OfferRow[] | undefined> {
    const now = this.c.clock.now();
    const leaseIds = Array.from({ length: n }, () => this.c.ids());
    // Locked by primary key, the state checked on the locked (newest) row: with the state in
    // the WHERE of `tasks t`, a planner whose statistics predate a burst of queued tasks
    // could read the whole queue through its partial index to find a few rows.
    const ph = { R: 9, N: 2, E: 10, X: 11 };
    const r = await this.c.db.query<OfferRow & { limited: boolean; ord: number }>(
      fill(
        `WITH ${CANDIDATES},
         limited AS (SELECT EXISTS (SELECT 1 FROM c WHERE max_concurrency IS NOT NULL OR project_max IS NOT NULL) AS yes),
         -- Candidates in offer order, each locked by primary key as it comes (a lateral
         -- lookup: never a join over the table), until $7 are held.
         pick AS (
           SELECT o.id, o.ord, t.status, t.lease_id
           FROM (SELECT id, ord FROM ordered WHERE NOT (SELECT yes FROM limited) ORDER BY ord) o
           CROSS JOIN LATERAL (SELECT t.status, t.lease_id FROM tasks t WHERE t.id = o.id FOR UPDATE SKIP LOCKED) t
           LIMIT $7
         ),
         v AS (
           SELECT p.id AS task_id, ($8::text[])[row_number() OVER (ORDER BY p.ord)] AS lease_id, p.ord
           FROM pick p WHERE p.status = 'queued' AND p.lease_id IS NULL
         ),
         ${GRANT}
         SELECT (SELECT yes FROM limited) AS limited, g.* FROM (SELECT 1) one LEFT JOIN (
           SELECT ${OFFER_COLUMNS}, upd.ord FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id
         ) g ON true ORDER BY g.ord`,
        ph,
      ),
      [runner.cluster, now, Math.max(n * 4, 64), o.ageingS, o.exclude ?? [], o.excludeProjects ?? [], n, leaseIds, runner.id, runner.epoch,
        new Date(now.getTime() + o.acceptDeadlineMs)],
      { prepare: true },
    );
    if (r.rows[0]?.limited) return undefined;
    return r.rows
      .filter((x) => x.lease_id !== null)
      .map(({ limited: _, ord: __, ...x }) => ({ ...x, max_concurrency: null, project_max_running: null }) as OfferRow);
  }

  /**
   * Queues one task and, in the same statement, grants it to `runner` when nothing stands
   * before it: it is eligible now, its package is not paused, neither its package nor its
   * project has a concurrency limit, and no eligible task of its cluster is waiting. Then a
   * new task reaches an idle runner with one commit instead of two (its insert, then a
   * claim). Otherwise the task is queued as by TasksStore.queue and `offer` is undefined.
   * The same statement counts it in one of its owner's queued-tasks counters (QuotasStore);
   * when that counter's share of the limit is full, nothing is inserted and it goes the way
   * of TasksStore.queue's slow path (QuotaExceededError when the user is at the limit).
   */
  async queueAndGrant(t: NewTask, runner: RunnerRef, acceptDeadlineMs: number): Promise<{ taskId: string; offer: OfferRow | undefined }> {
    const now = this.c.clock.now();
    const taskId = this.c.ids();
    const values = insertValues(t, taskId, now);
    const n = values.length;
    const cols = INSERT_COLUMNS.join(', ');
    const ph = { R: n + 2, N: n + 5, E: n + 3, X: n + 4 };
    const r = await this.c.db.query<OfferRow>(
      fill(
        `WITH ${reserveQueuedSql('$2', '1', `$${n + 7}`)},
         g AS (
           SELECT (NOT c.paused AND r.max_concurrency IS NULL AND p.max_running IS NULL AND $${n + 6}::boolean
             AND NOT EXISTS (SELECT 1 FROM tasks q WHERE q.status = 'queued' AND q.lease_id IS NULL AND q.cluster = $9
                               AND q.eligible_at <= $N)) AS ok
           FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id JOIN projects p ON p.id = $2
           WHERE c.id = $3
         ),
         upd AS (
           INSERT INTO tasks (${cols}, lease_id, runner_id, attempt)
           SELECT ${values.map((_, i) => `$${i + 1}`).join(', ')},
             CASE WHEN g.ok THEN $${n + 1} END, CASE WHEN g.ok THEN $R END, CASE WHEN g.ok THEN 1 ELSE 0 END
           FROM (SELECT coalesce((SELECT ok FROM g), false) AS ok) g
           WHERE EXISTS (SELECT 1 FROM reserved)
           RETURNING id, project_id, code_id, code_name, code_rev, code_revision_id, payload, timeout, priority, cluster,
             schedule_id, attempt, lease_id
         ),
         ins AS (
           ${LEASES_FROM_UPD} WHERE lease_id IS NOT NULL
           RETURNING id
         )
         SELECT ${OFFER_COLUMNS} FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id`,
        ph,
      ),
      [...values, this.c.ids(), runner.id, runner.epoch, new Date(now.getTime() + acceptDeadlineMs), now, t.delay === 0,
        this.tasks.quotas.defaults.queuedTasks],
      { prepare: true },
    );
    const row = r.rows[0];
    if (!row) return { taskId: (await this.tasks.queueCounted([t]))[0]!, offer: undefined };
    if (row.lease_id === null) return { taskId, offer: undefined };
    return { taskId, offer: { ...row, max_concurrency: null, project_max_running: null } };
  }

  /** The claim where limits apply, in one transaction (see claim). */
  private async claimLimited(runner: RunnerRef, n: number, o: ClaimOptions): Promise<OfferRow[]> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      // Packages already at max_concurrency are left out of the scan, so their backlog cannot
      // block the head of the queue; the locked count below stays the authority.
      const full = (
        await q.query<{ code_id: string }>(
          `SELECT l.code_id FROM task_leases l JOIN codes c ON c.id = l.code_id
             JOIN code_revisions r ON r.id = c.latest_revision_id
           WHERE l.ended_at IS NULL AND r.max_concurrency IS NOT NULL
           GROUP BY l.code_id, r.max_concurrency HAVING count(*) >= r.max_concurrency`,
        )
      ).rows.map((r) => r.code_id);
      if (o.exclude) full.push(...o.exclude);
      // Projects at their limit of running tasks are left out the same way.
      const fullProjects = (
        await q.query<{ id: string }>(
          `SELECT p.id FROM projects p WHERE p.max_running IS NOT NULL AND p.max_running <= (
             SELECT count(*) FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.ended_at IS NULL AND t.project_id = p.id)`,
        )
      ).rows.map((r) => r.id);
      if (o.excludeProjects) fullProjects.push(...o.excludeProjects);
      const cand = await q.query<{ id: string; code_id: string; max_concurrency: number | null; project_id: string; project_max: number | null }>(
        `WITH ${CANDIDATES}
         SELECT id, code_id, max_concurrency, project_id, project_max FROM ordered ORDER BY ord`,
        [runner.cluster, now, Math.max(n * 4, 64), o.ageingS, full, fullProjects],
      );
      if (cand.rows.length === 0) return [];
      // Concurrency: free slots per limited package, from live lease rows.
      const limited = [...new Set(cand.rows.filter((r) => r.max_concurrency !== null).map((r) => r.code_id))].sort();
      const free = new Map<string, number>();
      if (limited.length > 0) {
        for (const codeId of limited) {
          await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [codeId]);
        }
        const live = await q.query<{ code_id: string; n: number }>(
          `SELECT code_id, count(*)::int AS n FROM task_leases WHERE ended_at IS NULL AND code_id = ANY($1::text[])
           GROUP BY code_id`,
          [limited],
        );
        const liveBy = new Map(live.rows.map((r) => [r.code_id, r.n]));
        for (const r of cand.rows) {
          if (r.max_concurrency !== null && !free.has(r.code_id)) free.set(r.code_id, r.max_concurrency - (liveBy.get(r.code_id) ?? 0));
        }
      }
      // The same for projects with a limit on running tasks (locks after the packages', in id order).
      const limitedProjects = [...new Set(cand.rows.filter((r) => r.project_max !== null).map((r) => r.project_id))].sort();
      const freeProject = new Map<string, number>();
      if (limitedProjects.length > 0) {
        for (const projectId of limitedProjects) {
          await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`project:${projectId}`]);
        }
        const live = await q.query<{ project_id: string; n: number }>(
          `SELECT t.project_id, count(*)::int AS n FROM task_leases l JOIN tasks t ON t.id = l.task_id
           WHERE l.ended_at IS NULL AND t.project_id = ANY($1::text[]) GROUP BY t.project_id`,
          [limitedProjects],
        );
        const liveBy = new Map(live.rows.map((r) => [r.project_id, r.n]));
        for (const r of cand.rows) {
          if (r.project_max !== null && !freeProject.has(r.project_id)) {
            freeProject.set(r.project_id, r.project_max - (liveBy.get(r.project_id) ?? 0));
          }
        }
      }
      // Row locks only on the tasks about to be claimed, in claim order: the next admissible
      // candidates, as many as are still wanted; a candidate another claim holds (or took
      // since the scan) is skipped and the next ones are tried. The candidate list is several
      // times `n` long (for round-robin), and locking all of it would write to every row.
      const chosen: string[] = [];
      const take = (m: Map<string, number>, k: string, d: number) => {
        const v = m.get(k);
        if (v !== undefined) m.set(k, v + d);
      };
      let next = 0;
      while (chosen.length < n && next < cand.rows.length) {
        const batch: (typeof cand.rows)[number][] = [];
        while (batch.length < n - chosen.length && next < cand.rows.length) {
          const r = cand.rows[next++]!;
          if ((free.get(r.code_id) ?? 1) <= 0 || (freeProject.get(r.project_id) ?? 1) <= 0) continue;
          take(free, r.code_id, -1);
          take(freeProject, r.project_id, -1);
          batch.push(r);
        }
        if (batch.length === 0) break;
        // By primary key only, the state checked on the locked (newest) row here: with the
        // state in the WHERE, a planner whose statistics predate a burst of queued tasks
        // would read the whole queue through its partial index to find a few rows.
        const locked = new Set(
          (
            await q.query<{ id: string; status: string; lease_id: string | null }>(
              'SELECT id, status, lease_id FROM tasks WHERE id = ANY($1::text[]) FOR UPDATE SKIP LOCKED',
              [batch.map((r) => r.id)],
            )
          ).rows
            .filter((r) => r.status === 'queued' && r.lease_id === null)
            .map((r) => r.id),
        );
        for (const r of batch) {
          if (locked.has(r.id)) {
            chosen.push(r.id);
          } else {
            take(free, r.code_id, 1);
            take(freeProject, r.project_id, 1);
          }
        }
      }
      if (chosen.length === 0) return [];
      const leaseIds = chosen.map(() => this.c.ids());
      const expires = new Date(now.getTime() + o.acceptDeadlineMs);
      const ph = { R: 3, N: 4, E: 5, X: 6 };
      const rows = await q.query<OfferRow>(
        fill(
          `WITH v AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(task_id, lease_id, ord)),
           ${GRANT}
           SELECT ${OFFER_COLUMNS} FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id ORDER BY upd.ord`,
          ph,
        ),
        [chosen, leaseIds, runner.id, now, runner.epoch, expires],
      );
      const limit = new Map(cand.rows.map((r) => [r.id, r]));
      for (const r of rows.rows) {
        r.max_concurrency = limit.get(r.task_id)?.max_concurrency ?? null;
        r.project_max_running = limit.get(r.task_id)?.project_max ?? null;
      }
      return rows.rows;
    });
  }

  /** Offered → accepted: the runner reserved a slot. False if the lease is no longer offered to it. */
  async accept(leaseId: string, attempt: number, runnerId: string, ttlMs: number): Promise<boolean> {
    return (await this.acceptMany(runnerId, [{ leaseId, attempt }], ttlMs)).has(leaseId);
  }

  /**
   * Ends an offered or accepted lease without a run (Reject, an accept deadline passed, a
   * hand-back before start): the task goes back to the queue, no retry is spent.
   */
  async release(leaseId: string, attempt: number, runnerId: string | null, outcome: string, fence?: Fence): Promise<boolean> {
    const now = this.c.clock.now();
    const ok = await this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await q.query<{ task_id: string }>(
        `UPDATE task_leases SET state = 'done', ended_at = $4, outcome = $5
         WHERE id = $1 AND attempt = $2 AND ($3::text IS NULL OR runner_id = $3) AND state IN ('offered', 'accepted')
         RETURNING task_id`,
        [leaseId, attempt, runnerId, now, outcome],
      );
      const taskId = r.rows[0]?.task_id;
      if (!taskId) return false;
      await q.query(
        `UPDATE tasks SET lease_id = NULL, runner_id = NULL, updated_at = $3 WHERE id = $1 AND lease_id = $2 AND status = 'queued'`,
        [taskId, leaseId, now],
      );
      return true;
    });
    return this.ended(ok ? [leaseId] : [], ok);
  }

  /** Accepted → running: the container started and the task becomes `running`. */
  async started(leaseId: string, attempt: number, runnerId: string, containerId: string, startedAt: Date, ttlMs: number) {
    return (await this.startedMany(runnerId, [{ leaseId, attempt, containerId, startedAt }], ttlMs)).has(leaseId);
  }

  /**
   * A Beat: renews the runner's session and every live lease it listed. Returns the listed
   * leases the store does not hold as live for this runner (to be revoked).
   */
  async renew(runnerId: string, leases: { leaseId: string; attempt: number }[], ttlMs: number, stats?: unknown): Promise<string[]> {
    const now = this.c.clock.now();
    await this.c.db.query('UPDATE runners SET last_beat_at = $2, stats = coalesce($3::jsonb, stats) WHERE id = $1', [
      runnerId,
      now,
      stats === undefined ? null : JSON.stringify(stats),
    ]);
    if (leases.length === 0) return [];
    const ids = leases.map((l) => l.leaseId);
    const r = await this.c.db.query<{ id: string }>(
      `UPDATE task_leases SET expires_at = $3
       WHERE id = ANY($1::text[]) AND runner_id = $2 AND ended_at IS NULL AND state IN ('accepted', 'running')
       RETURNING id`,
      [ids, runnerId, new Date(now.getTime() + ttlMs)],
    );
    const live = new Set(r.rows.map((x) => x.id));
    // Offered leases are live too (the runner may list one it accepted before the Accept
    // landed), and so are leases this runner just completed (its Completed overtook the
    // Beat): revoking those would make the runner drop a log it may still be shipping.
    const offered = await this.c.db.query<{ id: string }>(
      `SELECT id FROM task_leases WHERE id = ANY($1::text[]) AND runner_id = $2
         AND ((state = 'offered' AND ended_at IS NULL) OR (state = 'done' AND NOT (outcome = ANY($3::text[]))))`,
      [ids, runnerId, [...RECLAIMED]],
    );
    for (const o of offered.rows) live.add(o.id);
    return ids.filter((id) => !live.has(id));
  }

  /** Progress from inside the task, relayed by its runner; false when the lease is not live. */
  async progress(leaseId: string, attempt: number, runnerId: string, percent: number | undefined, msg: string | undefined) {
    const r = await this.c.db.query(
      `UPDATE tasks t SET percent = coalesce($4, t.percent), msg = coalesce($5, t.msg), updated_at = $6
       FROM task_leases l
       WHERE l.id = $1 AND l.attempt = $2 AND l.runner_id = $3 AND l.ended_at IS NULL AND t.id = l.task_id
         AND t.lease_id = l.id`,
      [leaseId, attempt, runnerId, percent ?? null, msg ?? null, this.c.clock.now()],
    );
    return r.rowCount > 0;
  }

  /**
   * Records a runner's result, fenced by lease id, attempt and runner. Idempotent: the same
   * result again is `duplicate`; a result for a lease that was reclaimed is `stale`.
   * Errors and timeouts spend the task's user-visible retries as new linked tasks; a runner
   * error spends the internal budget and requeues the same task.
   */
  async complete(c: Completion, runnerId: string, cfg: LeaseConfig): Promise<Disposition> {
    return this.ended([c.leaseId], await this.c.db.tx((q) => this.completeOne(q, c, runnerId, cfg)));
  }

  private async completeOne(q: Queryable, c: Completion, runnerId: string, cfg: LeaseConfig): Promise<Disposition> {
    const now = this.c.clock.now();
    {
      const lease = (
        await q.query<Lease>('SELECT * FROM task_leases WHERE id = $1 FOR UPDATE', [c.leaseId])
      ).rows[0];
      if (!lease || lease.attempt !== c.attempt || lease.runner_id !== runnerId) return 'stale';
      if (lease.state === 'done') return lease.outcome && RECLAIMED.has(lease.outcome) ? 'stale' : 'duplicate';
      const task = (
        await q.query<{ id: string; lease_id: string | null; runner_losses: number; retries_left: number; cancel_requested_at: Date | null }>(
          'SELECT id, lease_id, runner_losses, retries_left, cancel_requested_at FROM tasks WHERE id = $1 FOR UPDATE',
          [lease.task_id],
        )
      ).rows[0];
      if (!task || task.lease_id !== lease.id) return 'stale';
      let status = OUTCOME_STATUS[c.outcome];
      let msg = c.msg;
      if (status === 'retry') {
        if (task.cancel_requested_at) {
          status = 'cancelled';
          msg = 'Cancelled by user';
        } else if (task.runner_losses + 1 <= cfg.runnerLossBudget) {
          await this.endLease(q, lease.id, now, 'handed_back');
          await q.query(
            `UPDATE tasks SET status = 'queued', lease_id = NULL, runner_id = NULL, runner_losses = runner_losses + 1,
               start_time = NULL, msg = $2, updated_at = $3 WHERE id = $1`,
            [task.id, `Runner could not run the task (${c.msg}); retrying on another runner`, now],
          );
          return 'recorded';
        } else {
          status = 'error';
          msg = `Runner could not run the task: ${c.msg}`;
        }
      }
      if (status === 'cancelled' && !msg) msg = 'Cancelled by user';
      await this.endLease(q, lease.id, now, status);
      await this.finish(q, task.id, lease.id, status, msg || null, {
        exitCode: c.exitCode,
        startedAt: c.startedAt ? new Date(c.startedAt) : null,
        endedAt: c.finishedAt ? new Date(c.finishedAt) : now,
      });
      if ((status === 'error' || status === 'timeout') && task.retries_left > 0) await this.retryFailed(q, task.id);
      return 'recorded';
    }
  }

  private async endLease(q: Queryable, leaseId: string, now: Date, outcome: string) {
    await q.query(`UPDATE task_leases SET state = 'done', ended_at = $2, outcome = $3 WHERE id = $1`, [leaseId, now, outcome]);
  }

  /** Sets a task's final state; a final state is never overwritten (guarded by lease). */
  private async finish(
    q: Queryable,
    taskId: string,
    leaseId: string,
    status: TaskStatus,
    msg: string | null,
    o: { exitCode?: number; startedAt?: Date | null; endedAt: Date },
  ) {
    await q.query(
      `UPDATE tasks SET status = $3, msg = coalesce($4, msg), exit_code = $5, start_time = coalesce(start_time, $6),
         end_time = $7, lease_id = NULL, updated_at = $8,
         percent = CASE WHEN $3 = 'complete' THEN 100 ELSE percent END
       WHERE id = $1 AND lease_id = $2 AND status IN ('queued', 'running')`,
      [taskId, leaseId, status, msg, o.exitCode ?? null, o.startedAt ?? null, o.endedAt, this.c.clock.now()],
    );
  }

  /** A failed task with retries left: a new linked task, after the code's retries_delay. */
  private async retryFailed(q: Queryable, taskId: string) {
    const t = (
      await q.query<{
        project_id: string; code_id: string; code_name: string; code_revision_id: string; code_rev: number;
        retries_left: number; retries_delay: number; payload: string; priority: number; cluster: string;
        timeout: number; label: string | null; retry_count: number; original_task_id: string | null;
      }>('SELECT * FROM tasks WHERE id = $1', [taskId])
    ).rows[0]!;
    const [id] = await this.tasks.insert(q, [
      {
        projectId: t.project_id,
        codeId: t.code_id,
        codeName: t.code_name,
        revisionId: t.code_revision_id,
        rev: t.code_rev,
        retries: t.retries_left - 1,
        retriesDelay: t.retries_delay,
        payload: t.payload,
        priority: t.priority,
        cluster: t.cluster,
        timeout: t.timeout,
        delay: t.retries_delay,
        label: t.label,
        originalTaskId: taskId,
        retryCount: t.retry_count + 1,
      },
    ]);
    await q.query('UPDATE tasks SET retry_task_id = $2 WHERE id = $1', [taskId, id]);
  }

  /**
   * The lease sweeper (leader work): offers past their accept deadline go back to the
   * queue; accepted or running leases whose runner went silent past the lease TTL are
   * reclaimed — runner loss is not a task error: the task is requeued until the internal
   * budget is spent, then ends `killed` ("runner lost"); a task whose cancel was requested
   * ends `cancelled`. Returns what it did.
   */
  async sweep(cfg: LeaseConfig, limit = 500, fence?: Fence): Promise<{ expiredOffers: number; reclaimed: number; killed: number }> {
    const now = this.c.clock.now();
    const out = { expiredOffers: 0, reclaimed: 0, killed: 0 };
    const due = await this.c.db.query<{ id: string; attempt: number; state: LeaseState }>(
      `SELECT id, attempt, state FROM task_leases WHERE ended_at IS NULL AND expires_at < $1 ORDER BY expires_at LIMIT $2`,
      [now, limit],
    );
    for (const l of due.rows) {
      if (l.state === 'offered') {
        if (await this.release(l.id, l.attempt, null, 'offer_expired', fence)) out.expiredOffers++;
        continue;
      }
      const r = await this.reclaim(l.id, l.attempt, cfg, 'reclaimed', false, fence);
      if (r === 'requeued') out.reclaimed++;
      else if (r === 'ended') out.killed++;
    }
    return out;
  }

  /**
   * Takes a live lease away from its runner (runner lost, or handed back by a drain):
   * requeue within the internal budget, else end the task. Fenced by `expires_at < now`
   * unless `force`.
   */
  async reclaim(leaseId: string, attempt: number, cfg: LeaseConfig, outcome: 'reclaimed' | 'handed_back', force = false, fence?: Fence) {
    const now = this.c.clock.now();
    const r = await this.c.db.tx(async (q): Promise<'requeued' | 'ended' | 'none'> => {
      await checkFence(q, fence);
      const lease = (
        await q.query<Lease>(
          `SELECT * FROM task_leases WHERE id = $1 AND attempt = $2 AND ended_at IS NULL AND ($3 OR expires_at < $4)
           FOR UPDATE SKIP LOCKED`,
          [leaseId, attempt, force, now],
        )
      ).rows[0];
      if (!lease) return 'none';
      const task = (
        await q.query<{ id: string; lease_id: string | null; runner_losses: number; cancel_requested_at: Date | null; status: string }>(
          'SELECT id, lease_id, runner_losses, cancel_requested_at, status FROM tasks WHERE id = $1 FOR UPDATE',
          [lease.task_id],
        )
      ).rows[0];
      await this.endLease(q, lease.id, now, outcome);
      if (!task || task.lease_id !== lease.id) return 'none';
      if (task.cancel_requested_at) {
        await this.finish(q, task.id, lease.id, 'cancelled', 'Cancelled by user', { endedAt: now });
        return 'ended';
      }
      const losses = task.runner_losses + (lease.state === 'running' ? 1 : 0);
      if (losses > cfg.runnerLossBudget) {
        await q.query('UPDATE tasks SET runner_losses = $2 WHERE id = $1', [task.id, losses]);
        await this.finish(q, task.id, lease.id, 'killed', `Runner lost ${losses} times; giving up (runner lost)`, { endedAt: now });
        return 'ended';
      }
      await q.query(
        `UPDATE tasks SET status = 'queued', lease_id = NULL, runner_id = NULL, runner_losses = $2, start_time = NULL,
           msg = $3, updated_at = $4 WHERE id = $1`,
        [task.id, losses, outcome === 'handed_back' ? 'Handed back by a draining runner; requeued' : 'Runner lost; requeued', now],
      );
      return 'requeued';
    });
    return this.ended([leaseId], r);
  }

  /** Live leases of a runner (for reconcile, drains and cancels). */
  async liveOf(runnerId: string): Promise<Lease[]> {
    return (await this.c.db.query<Lease>('SELECT * FROM task_leases WHERE runner_id = $1 AND ended_at IS NULL', [runnerId])).rows;
  }

  async get(leaseId: string): Promise<Lease | undefined> {
    return (await this.c.db.query<Lease>('SELECT * FROM task_leases WHERE id = $1', [leaseId])).rows[0];
  }

  /** Rebinds a runner's live leases to its new session after a reconnect. */
  async rebind(runnerId: string, leaseIds: string[], epoch: number, ttlMs: number): Promise<void> {
    if (leaseIds.length === 0) return;
    await this.c.db.query(
      `UPDATE task_leases SET session_epoch = $3, expires_at = greatest(expires_at, $4)
       WHERE runner_id = $1 AND id = ANY($2::text[]) AND ended_at IS NULL`,
      [runnerId, leaseIds, epoch, new Date(this.c.clock.now().getTime() + ttlMs)],
    );
  }

  /**
   * Live leases of a runner whose task has a cancel requested and no Cancel sent yet; with
   * `resend`, those already sent too (a new session: a Cancel written to the old stream may
   * never have been read).
   */
  async pendingCancels(runnerId: string, resend = false): Promise<{ lease_id: string; attempt: number }[]> {
    return (
      await this.c.db.query<{ lease_id: string; attempt: number }>(
        `SELECT l.id AS lease_id, l.attempt FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.runner_id = $1 AND l.ended_at IS NULL AND t.cancel_requested_at IS NOT NULL
           AND (l.cancel_sent_at IS NULL OR $2)`,
        [runnerId, resend],
      )
    ).rows;
  }

  /** Those of these runners that have a live lease whose cancel was requested and not sent. */
  async runnersWithPendingCancels(runnerIds: readonly string[]): Promise<string[]> {
    if (runnerIds.length === 0) return [];
    return (
      await this.c.db.query<{ runner_id: string }>(
        `SELECT DISTINCT l.runner_id FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.runner_id = ANY($1::text[]) AND l.ended_at IS NULL AND l.cancel_sent_at IS NULL
           AND t.cancel_requested_at IS NOT NULL`,
        [runnerIds],
      )
    ).rows.map((r) => r.runner_id);
  }

  /** Which of these lease ids are live (not ended): the concurrency reconciler's truth. */
  async liveAmong(leaseIds: readonly string[]): Promise<Set<string>> {
    if (leaseIds.length === 0) return new Set();
    const r = await this.c.db.query<{ id: string }>('SELECT id FROM task_leases WHERE id = ANY($1::text[]) AND ended_at IS NULL', [
      leaseIds,
    ]);
    return new Set(r.rows.map((x) => x.id));
  }

  /** Live leases that hold a concurrency slot: of packages with a max_concurrency and of projects with a limit. */
  async liveLimited(): Promise<{ lease_id: string; scope: string; limit: number }[]> {
    return (
      await this.c.db.query<{ lease_id: string; scope: string; limit: number }>(
        `SELECT l.id AS lease_id, 'code:' || l.code_id AS scope, r.max_concurrency AS "limit"
         FROM task_leases l JOIN codes c ON c.id = l.code_id JOIN code_revisions r ON r.id = c.latest_revision_id
         WHERE l.ended_at IS NULL AND r.max_concurrency IS NOT NULL
         UNION ALL
         SELECT l.id, 'project:' || p.id, p.max_running
         FROM task_leases l JOIN tasks t ON t.id = l.task_id JOIN projects p ON p.id = t.project_id
         WHERE l.ended_at IS NULL AND p.max_running IS NOT NULL`,
      )
    ).rows;
  }

  /** Projects with a limit on running tasks (left out of claims while slots cannot be taken). */
  async limitedProjects(): Promise<string[]> {
    return (await this.c.db.query<{ id: string }>('SELECT id FROM projects WHERE max_running IS NOT NULL')).rows.map((r) => r.id);
  }

  /** Code packages of a cluster's queue that have a max_concurrency (excluded while slots cannot be taken). */
  async limitedCodes(): Promise<string[]> {
    return (
      await this.c.db.query<{ id: string }>(
        `SELECT c.id FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
         WHERE r.max_concurrency IS NOT NULL AND c.deleted_at IS NULL`,
      )
    ).rows.map((r) => r.id);
  }

  async markCancelSent(leaseId: string): Promise<void> {
    await this.c.db.query('UPDATE task_leases SET cancel_sent_at = $2 WHERE id = $1', [leaseId, this.c.clock.now()]);
  }

  /** Running leases past their task's timeout plus grace: the control plane's backstop. */
  async overdue(graceMs: number): Promise<{ lease_id: string; attempt: number; runner_id: string }[]> {
    return (
      await this.c.db.query<{ lease_id: string; attempt: number; runner_id: string }>(
        `SELECT l.id AS lease_id, l.attempt, l.runner_id FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.state = 'running' AND l.ended_at IS NULL AND l.cancel_sent_at IS NULL
           AND l.started_at + make_interval(secs => t.timeout + $2::float8 / 1000) < $1`,
        [this.c.clock.now(), graceMs],
      )
    ).rows;
  }

  /** Ends a lease whose runner stayed silent past its timeout: the task times out. */
  async timeOut(leaseId: string, attempt: number, fence?: Fence): Promise<boolean> {
    const now = this.c.clock.now();
    const ok = await this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const l = (
        await q.query<Lease>('SELECT * FROM task_leases WHERE id = $1 AND attempt = $2 AND ended_at IS NULL FOR UPDATE', [
          leaseId,
          attempt,
        ])
      ).rows[0];
      if (!l) return false;
      await this.endLease(q, l.id, now, 'timeout');
      await this.finish(q, l.task_id, l.id, 'timeout', 'Timed out (enforced by the control plane)', { endedAt: now });
      return true;
    });
    return this.ended(ok ? [leaseId] : [], ok);
  }

  // ---------- batched forms, for a runner's burst of frames (one transaction each) ----------

  /** Accept for many leases of one runner; returns the lease ids that were accepted. */
  async acceptMany(runnerId: string, items: { leaseId: string; attempt: number }[], ttlMs: number): Promise<Set<string>> {
    if (items.length === 0) return new Set();
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const r = await q.query<{ id: string }>(
        `WITH v AS (SELECT * FROM unnest($1::text[], $2::int[]) AS v(id, attempt))
         UPDATE task_leases l SET state = 'accepted', expires_at = $4
         FROM v WHERE l.id = v.id AND l.attempt = v.attempt AND l.runner_id = $3 AND l.state = 'offered'
         RETURNING l.id`,
        [items.map((i) => i.leaseId), items.map((i) => i.attempt), runnerId, new Date(now.getTime() + ttlMs)],
      );
      return new Set(r.rows.map((x) => x.id));
    });
  }

  /** Started for many leases of one runner; returns each started lease's grant time. */
  async startedMany(
    runnerId: string,
    items: { leaseId: string; attempt: number; containerId: string; startedAt: Date }[],
    ttlMs: number,
  ): Promise<Map<string, Date>> {
    if (items.length === 0) return new Map();
    // In a transaction only so that a lost deadlock is retried (see Db.tx).
    return this.c.db.tx((q) => this.startedIn(q, runnerId, items, ttlMs));
  }

  private async startedIn(
    q: Queryable,
    runnerId: string,
    items: { leaseId: string; attempt: number; containerId: string; startedAt: Date }[],
    ttlMs: number,
  ): Promise<Map<string, Date>> {
    if (items.length === 0) return new Map();
    const now = this.c.clock.now();
    const r = await q.query<{ id: string; granted_at: Date }>(
      `WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS v(id, attempt, container_id, started_at)),
       l AS (
         UPDATE task_leases l SET state = 'running', started_at = v.started_at::timestamptz, container_id = v.container_id,
           expires_at = $6
         FROM v WHERE l.id = v.id AND l.attempt = v.attempt AND l.runner_id = $5 AND l.state IN ('offered', 'accepted')
         RETURNING l.id, l.task_id, l.granted_at, l.started_at
       ),
       t AS (
         UPDATE tasks t SET status = 'running', start_time = l.started_at, end_time = NULL, updated_at = $7,
           run_times = t.run_times + 1
         FROM l WHERE t.id = l.task_id AND t.lease_id = l.id
         RETURNING t.id
       )
       SELECT l.id, l.granted_at FROM l`,
      [
        items.map((i) => i.leaseId),
        items.map((i) => i.attempt),
        items.map((i) => i.containerId),
        items.map((i) => i.startedAt.toISOString()),
        runnerId,
        new Date(now.getTime() + ttlMs),
        now,
      ],
    );
    return new Map(r.rows.map((x) => [x.id, x.granted_at]));
  }

  /**
   * Results of many leases of one runner in one transaction. The common case (a result
   * that ends the task, no retry to queue) is applied by one statement that ends the lease
   * and the task together, each guarded as the one-by-one path guards it; the rest
   * (retries, runner errors, stale or duplicate results, a lease listed twice) go one by one.
   */
  async completeMany(
    runnerId: string,
    items: (Completion & { started?: { containerId: string; startedAt: Date } })[],
    cfg: LeaseConfig,
  ): Promise<Disposition[]> {
    if (items.length === 0) return [];
    const now = this.c.clock.now();
    const out = await this.c.db.tx(async (q) => {
      // Candidates for the one-statement path: the first result of each lease whose outcome
      // ends the task by itself (a runner error may requeue it).
      const seen = new Set<string>();
      const fast: number[] = [];
      items.forEach((c, i) => {
        const status = OUTCOME_STATUS[c.outcome];
        if (status !== 'retry' && !seen.has(c.leaseId)) fast.push(i);
        seen.add(c.leaseId);
      });
      const recorded = new Set<string>();
      if (fast.length > 0) {
        const f = fast.map((i) => items[i]!);
        const status = (c: Completion) => OUTCOME_STATUS[c.outcome] as TaskStatus;
        // `o` is the lease as this statement's snapshot has it (its state before the update:
        // a Started folded into this result counts a run only if none was recorded). The
        // task's guards are checked on the snapshot to pick the leases and again, on the
        // locked row, by the task's update; if they disagree (a concurrent cancel or
        // reclaim), the counts differ and the transaction runs again.
        const r = await q.query<{ id: string; tasks: number }>(
          `WITH v AS (
             SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[])
               AS v(lease_id, attempt, status, msg, exit_code, started_at, ended_at, folded_at, container_id)
           ),
           l AS (
             UPDATE task_leases l SET state = 'done', ended_at = $11, outcome = v.status,
               started_at = coalesce(l.started_at, v.folded_at::timestamptz), container_id = coalesce(l.container_id, v.container_id)
             FROM v, task_leases o, tasks t
             WHERE l.id = v.lease_id AND o.id = l.id AND t.id = o.task_id
               AND l.attempt = v.attempt AND l.runner_id = $10 AND l.state <> 'done'
               AND t.lease_id = l.id AND t.status IN ('queued', 'running')
               AND NOT (v.status IN ('error', 'timeout') AND t.retries_left > 0)
             RETURNING l.id, l.task_id, v.status, v.msg, v.exit_code, v.started_at, v.ended_at,
               CASE WHEN v.folded_at IS NOT NULL AND o.state <> 'running' THEN 1 ELSE 0 END AS ran
           ),
           t AS (
             UPDATE tasks t SET status = l.status, msg = coalesce(l.msg, t.msg), exit_code = l.exit_code,
               start_time = coalesce(t.start_time, l.started_at::timestamptz), end_time = l.ended_at::timestamptz,
               lease_id = NULL, updated_at = $11, percent = CASE WHEN l.status = 'complete' THEN 100 ELSE t.percent END,
               run_times = t.run_times + l.ran
             FROM l WHERE t.id = l.task_id AND t.lease_id = l.id AND t.status IN ('queued', 'running')
             RETURNING t.id
           )
           SELECT l.id, (SELECT count(*) FROM t)::int AS tasks FROM l`,
          [
            f.map((c) => c.leaseId),
            f.map((c) => c.attempt),
            f.map(status),
            f.map((c) => c.msg || (status(c) === 'cancelled' ? 'Cancelled by user' : null)),
            f.map((c) => c.exitCode),
            f.map((c) => (c.startedAt ? new Date(c.startedAt).toISOString() : null)),
            f.map((c) => new Date(c.finishedAt || now.getTime()).toISOString()),
            f.map((c) => c.started?.startedAt.toISOString() ?? null),
            f.map((c) => c.started?.containerId ?? null),
            runnerId,
            now,
          ],
        );
        if (r.rows.length > 0 && r.rows[0]!.tasks !== r.rows.length) {
          throw Object.assign(new Error('a task changed while its result was recorded; recording again'), { code: '40001' });
        }
        for (const x of r.rows) recorded.add(x.id);
      }
      const out: Disposition[] = [];
      const fastSet = new Set(fast);
      for (let i = 0; i < items.length; i++) {
        const c = items[i]!;
        if (fastSet.has(i) && recorded.has(c.leaseId)) {
          out.push('recorded');
          continue;
        }
        // Everything else as the single-result path does it (it locks the lease and the task).
        if (c.started) await this.startedIn(q, runnerId, [{ leaseId: c.leaseId, attempt: c.attempt, ...c.started }], cfg.leaseTtlMs);
        out.push(await this.completeOne(q, c, runnerId, cfg));
      }
      return out;
    });
    return this.ended(
      items.filter((_, i) => out[i] === 'recorded').map((i) => i.leaseId),
      out,
    );
  }
}
