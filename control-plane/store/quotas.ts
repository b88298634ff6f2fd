/**
 * Per-user quotas, counted across all of a user's projects (migration 009).
 *
 * Clusters, code packages and schedules are made a few at a time: their check counts the
 * user's rows in the creating transaction, under a per-user advisory lock, so two requests
 * can never both take the last slot.
 *
 * Queued tasks are made thousands a second, so they are not counted per request. A user's
 * limit is split into QUEUED_SHARDS shares; the statement that inserts tasks also adds
 * them to the `queued` counter of one share (user_queued, its connection's), and only if it
 * stays within that share: the shares add up to the limit, so two requests can never both
 * take the last place, and concurrent requests of one user mostly lock different rows
 * (one counter row would serialize them on its lock until each commits). Nothing on the
 * dispatch path subtracts (a cancel of a queued task does), so the counters' sum is an upper
 * bound of the user's queued tasks. When a share is full, the slow path locks all the
 * user's counters, recounts the queued tasks exactly — at most once per RECOUNT_INTERVAL_MS
 * per user, trusting the sum in between, so a refused client hammering the API costs one
 * bounded count a second — and spreads the count over the shares again.
 *
 * Tasks the system queues on its own — a failed task's retries and a lost runner's
 * requeues — are neither refused nor counted: each stands in for a task counted when it was
 * queued, and the next recount counts it. A schedule's firing is counted and checked: one
 * past the quota queues nothing and is recorded on the schedule (SchedulesStore.fireDue).
 */
import { DEFAULT_QUOTAS, DEFAULT_QUOTA_RETRY_AFTER_S, type QuotaLimits } from '../config.ts';
import { QuotaExceededError } from '../errors.ts';
import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';

/** The quotas counted in the creating transaction under the user's lock. */
export type CountedQuota = 'clusters' | 'codes' | 'schedules';

/** Least time between two exact recounts of one user's queued tasks. */
export const RECOUNT_INTERVAL_MS = 1000;

const COLUMN: Record<keyof QuotaLimits, string> = {
  clusters: 'clusters',
  codes: 'codes',
  schedules: 'schedules',
  queuedTasks: 'queued_tasks',
};

/** A user's rows that count against each quota (indexes from migrations 001 and 009). */
const USAGE_SQL: Record<CountedQuota, string> = {
  clusters: 'SELECT count(*)::int AS n FROM clusters WHERE user_id = $1 AND deleted_at IS NULL',
  codes: `SELECT count(*)::int AS n FROM codes c JOIN projects p ON p.id = c.project_id
          WHERE p.user_id = $1 AND c.deleted_at IS NULL`,
  schedules: `SELECT count(*)::int AS n FROM schedules s JOIN projects p ON p.id = s.project_id
              WHERE p.user_id = $1 AND s.status = 'scheduled'`,
};

/**
 * Queued tasks of a user, counted up to $2 rows, through tasks_queued_project (whose
 * predicate, `project_id > ''` included, this states: see migration 009).
 */
const QUEUED_SQL = `SELECT count(*)::int AS n FROM (
    SELECT 1 FROM tasks t
    WHERE t.status = 'queued' AND t.project_id > '' AND t.project_id IN (SELECT id FROM projects WHERE user_id = $1) LIMIT $2
  ) x`;

/** Shares of a user's queued-tasks limit, each with its own counter row (migration 009's CHECK). */
export const QUEUED_SHARDS = 16;

/** Shard `s`'s share of `limit`: the shares add up to the limit (queue-*.sql compute the same in SQL). */
const share = (limit: number, s: number) => Math.floor(limit / QUEUED_SHARDS) + (s < limit % QUEUED_SHARDS ? 1 : 0);

/** A user's quotas: the effective limits, those an operator set, and the exact usage. */
export interface UserQuotas {
  limits: QuotaLimits;
  overrides: Partial<QuotaLimits>;
  usage: QuotaLimits;
}

export class QuotasStore {
  #defaults: Readonly<QuotaLimits> = DEFAULT_QUOTAS;
  #retryAfterS = DEFAULT_QUOTA_RETRY_AFTER_S;

  constructor(private readonly c: StoreCtx) {}

  /** Installs the configured defaults (config.quotas) and the Retry-After of a refused queueing. */
  useDefaults(limits: Readonly<QuotaLimits>, retryAfterS: number): void {
    this.#defaults = Object.freeze({ ...limits });
    this.#retryAfterS = retryAfterS;
  }

  get defaults(): Readonly<QuotaLimits> {
    return this.#defaults;
  }

  /** The owner of a project. */
  async ownerOf(q: Queryable, projectId: string): Promise<string> {
    const r = await q.query<{ user_id: string }>('SELECT user_id FROM projects WHERE id = $1', [projectId]);
    if (!r.rows[0]) throw new Error(`project ${projectId} does not exist`);
    return r.rows[0].user_id;
  }

  /**
   * Takes the user's quota lock until the transaction ends: counts and the inserts they
   * admit are then one step for the user's clusters, code packages and schedules.
   */
  async lock(q: Queryable, userId: string): Promise<void> {
    await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`quota:${userId}`]);
  }

  /** Throws QuotaExceededError unless the user may add `adding` more of `kind`. Call it under lock(). */
  async check(q: Queryable, userId: string, kind: CountedQuota, adding: number): Promise<void> {
    const limit = await this.#limit(q, userId, kind);
    const used = (await q.query<{ n: number }>(USAGE_SQL[kind], [userId])).rows[0]!.n;
    if (used + adding > limit) throw new QuotaExceededError(kind, limit, used, adding);
  }

  async #limit(q: Queryable, userId: string, kind: keyof QuotaLimits): Promise<number> {
    const r = await q.query<{ v: number | null }>(`SELECT ${COLUMN[kind]} AS v FROM user_quotas WHERE user_id = $1`, [userId]);
    return r.rows[0]?.v ?? this.#defaults[kind];
  }

  /**
   * The slow path of queueing `n` tasks of a project, in the caller's transaction: with
   * every counter of the owner locked, the tasks are admitted if they fit the limit by the
   * counters' sum or else by an exact recount (at most one per RECOUNT_INTERVAL_MS per user);
   * the count is then spread over the shares again. Undefined when admitted (counted: the
   * caller inserts the tasks in the same transaction), else the refusal to throw once the
   * transaction has committed (so that the recount is kept).
   */
  async admitQueued(q: Queryable, projectId: string, n: number): Promise<QuotaExceededError | undefined> {
    const now = this.c.clock.now();
    const userId = await this.ownerOf(q, projectId);
    const limit = await this.#limit(q, userId, 'queuedTasks');
    // A counter a user does not have yet holds nothing: every queueing counts in one
    // (migration 009 counted the tasks queued before it). All of them, locked.
    await q.query(
      `INSERT INTO user_queued (user_id, shard, queued) SELECT $1, s, 0 FROM generate_series(0, $2::int - 1) s
       ON CONFLICT (user_id, shard) DO NOTHING`,
      [userId, QUEUED_SHARDS],
    );
    const rows = (
      await q.query<{ shard: number; queued: number; counted_at: Date | null }>(
        'SELECT shard, queued, counted_at FROM user_queued WHERE user_id = $1 ORDER BY shard FOR UPDATE',
        [userId],
      )
    ).rows;
    let used = rows.reduce((sum, r) => sum + Number(r.queued), 0);
    const countedAt = rows.find((r) => r.shard === 0)?.counted_at ?? null;
    const recount = !countedAt || now.getTime() - countedAt.getTime() >= RECOUNT_INTERVAL_MS;
    if (recount) used = (await q.query<{ n: number }>(QUEUED_SQL, [userId, limit + 1])).rows[0]!.n;
    const ok = used + n <= limit;
    if (!ok && !recount) return new QuotaExceededError('queued_tasks', limit, used, n, this.#retryAfterS);
    // Spread evenly: within the limit, each shard's part is within its share, and every
    // share keeps room for the fast path.
    const total = used + (ok ? n : 0);
    const parts = Array.from({ length: QUEUED_SHARDS }, (_, s) => share(total, s));
    await q.query(
      `UPDATE user_queued u SET queued = v.queued, counted_at = CASE WHEN u.shard = 0 AND $3::boolean THEN $4 ELSE u.counted_at END
       FROM unnest($2::bigint[]) WITH ORDINALITY AS v(queued, ord) WHERE u.user_id = $1 AND u.shard = v.ord - 1`,
      [userId, parts, recount, now],
    );
    return ok ? undefined : new QuotaExceededError('queued_tasks', limit, used, n, this.#retryAfterS);
  }

  /** A user's limits (the configured defaults unless an operator set one) and exact usage. */
  async get(userId: string): Promise<UserQuotas> {
    const db = this.c.db;
    const o = (
      await db.query<{ clusters: number | null; codes: number | null; schedules: number | null; queued_tasks: number | null }>(
        'SELECT clusters, codes, schedules, queued_tasks FROM user_quotas WHERE user_id = $1',
        [userId],
      )
    ).rows[0];
    const overrides: Partial<QuotaLimits> = {};
    if (o?.clusters != null) overrides.clusters = o.clusters;
    if (o?.codes != null) overrides.codes = o.codes;
    if (o?.schedules != null) overrides.schedules = o.schedules;
    if (o?.queued_tasks != null) overrides.queuedTasks = o.queued_tasks;
    const count = async (sql: string, params: unknown[]) => (await db.query<{ n: number }>(sql, params)).rows[0]!.n;
    return {
      limits: { ...this.#defaults, ...overrides },
      overrides,
      usage: {
        clusters: await count(USAGE_SQL.clusters, [userId]),
        codes: await count(USAGE_SQL.codes, [userId]),
        schedules: await count(USAGE_SQL.schedules, [userId]),
        // Exact (LIMIT NULL: unbounded): an operator's look, not the hot path.
        queuedTasks: await count(QUEUED_SQL, [userId, null]),
      },
    };
  }

  /**
   * Sets a user's limits: a number overrides the default, null returns to it, a quota left
   * out keeps its current setting.
   */
  async set(userId: string, patch: { [K in keyof QuotaLimits]?: number | null }): Promise<void> {
    const keys = Object.keys(patch) as (keyof QuotaLimits)[];
    if (keys.length === 0) return;
    const cols = keys.map((k) => COLUMN[k]);
    const values = keys.map((k) => patch[k] ?? null);
    await this.c.db.query(
      `INSERT INTO user_quotas (user_id, ${cols.join(', ')}, updated_at) VALUES ($1, ${cols.map((_, i) => `$${i + 2}`).join(', ')}, $${cols.length + 2})
       ON CONFLICT (user_id) DO UPDATE SET ${cols.map((c) => `${c} = excluded.${c}`).join(', ')}, updated_at = excluded.updated_at`,
      [userId, ...values, this.c.clock.now()],
    );
  }
}
