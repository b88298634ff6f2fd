import type { StoreCtx, Page } from './ctx.ts';
import { pageSql } from './ctx.ts';
import type { TasksStore } from './tasks.ts';
import { checkFence, type Fence } from './fence.ts';
import type { QuotasStore } from './quotas.ts';
import { DEFAULT_TIMEZONE, firstFire, nextFireAfter } from '../../lib/cron.ts';
import { resolveHooks, type Hooks } from './hooks.ts';

export interface Schedule {
  id: string;
  projectId: string;
  codeName: string;
  name: string | null;
  payload: string;
  priority: number;
  timeout: number;
  cluster: string;
  taskDelay: number;
  startAt: Date;
  runEvery: number | null;
  /** A five-field cron expression instead of runEvery, read in `timezone` (lib/cron.ts). */
  cron: string | null;
  timezone: string | null;
  endAt: Date | null;
  runTimes: number | null;
  runCount: number;
  errorCount: number;
  lastRunTime: Date | null;
  nextStart: Date | null;
  status: 'scheduled' | 'complete' | 'cancelled';
  msg: string | null;
  /** The hooks its tasks carry, each kind as given (`{}`: none), else their package's. */
  hooks: Hooks | null;
  createdAt: Date;
  updatedAt: Date;
}

/** A schedules row as SELECT * reads it; the columns of one word under Schedule's own names. */
interface ScheduleRow extends Pick<Schedule, 'id' | 'name' | 'payload' | 'priority' | 'timeout' | 'cluster' | 'status' | 'msg'> {
  project_id: string;
  code_name: string;
  task_delay: number;
  start_at: Date;
  run_every: number | null;
  cron: string | null;
  timezone: string | null;
  end_at: Date | null;
  run_times: number | null;
  run_count: number;
  error_count: number;
  last_run_time: Date | null;
  next_start: Date | null;
  hooks: Hooks | null;
  created_at: Date;
  updated_at: Date;
}

function toSchedule(r: ScheduleRow): Schedule {
  return {
    id: r.id,
    projectId: r.project_id,
    codeName: r.code_name,
    name: r.name,
    payload: r.payload,
    priority: r.priority,
    timeout: r.timeout,
    cluster: r.cluster,
    taskDelay: r.task_delay,
    startAt: r.start_at,
    runEvery: r.run_every,
    cron: r.cron,
    timezone: r.timezone,
    endAt: r.end_at,
    runTimes: r.run_times,
    runCount: r.run_count,
    errorCount: r.error_count,
    lastRunTime: r.last_run_time,
    nextStart: r.next_start,
    status: r.status,
    msg: r.msg,
    hooks: r.hooks ?? null,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

export interface NewSchedule {
  codeName: string;
  name: string | null;
  payload: string;
  priority: number;
  timeout: number;
  cluster: string;
  taskDelay: number;
  startAt: Date;
  runEvery: number | null;
  /** Instead of runEvery: a five-field cron expression, read in `timezone` (default UTC). */
  cron?: string | null;
  timezone?: string | null;
  endAt: Date | null;
  runTimes: number | null;
  /** Its tasks' hooks, each kind given replacing their package's. */
  hooks?: Hooks | null;
}

/** What firing a schedule at `now` makes of it: its next start, or its end and why. */
export function afterFiring(s: Pick<Schedule, 'startAt' | 'runEvery' | 'cron' | 'timezone' | 'endAt' | 'runTimes' | 'runCount'>, now: Date) {
  const runCount = s.runCount + 1;
  if (s.runTimes !== null && runCount >= s.runTimes) {
    return { runCount, nextStart: null, status: 'complete' as const, msg: 'Ran max times.' };
  }
  // The boundary strictly after `now`: firing late (after downtime) fires once and moves on
  // to the next future period, no burst of missed runs.
  const next = nextFireAfter(s, now);
  if (next === null) return { runCount, nextStart: null, status: 'complete' as const, msg: s.cron === null ? 'Ran once.' : 'No fire time left.' };
  if (s.endAt !== null && next > s.endAt) {
    return { runCount, nextStart: null, status: 'complete' as const, msg: 'Reached end_at.' };
  }
  return { runCount, nextStart: next, status: 'scheduled' as const, msg: null };
}

/** Schedules, and the firing of due ones into ordinary queued tasks. */
export class SchedulesStore {
  constructor(
    private readonly c: StoreCtx,
    private readonly tasks: TasksStore,
    private readonly quotas: QuotasStore,
  ) {}

  /** Creates schedules, all or none: a batch that would pass the owner's quota of active schedules creates none. */
  async create(projectId: string, items: NewSchedule[]): Promise<string[]> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const userId = await this.quotas.ownerOf(q, projectId);
      await this.quotas.lock(q, userId);
      await this.quotas.check(q, userId, 'schedules', items.length);
      const ids: string[] = [];
      for (const s of items) {
        const id = this.c.ids();
        ids.push(id);
        await q.query(
          `INSERT INTO schedules (id, project_id, code_name, name, payload, priority, timeout, cluster, task_delay,
             start_at, run_every, end_at, run_times, next_start, status, created_at, updated_at, cron, timezone, hooks)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,'scheduled',$15,$15,$16,$17,$18::jsonb)`,
          [id, projectId, s.codeName, s.name, s.payload, s.priority, s.timeout, s.cluster, s.taskDelay, s.startAt,
            s.runEvery, s.endAt, s.runTimes, firstFire({ ...s, cron: s.cron ?? null, timezone: s.timezone ?? null }), now, s.cron ?? null,
            s.cron ? (s.timezone ?? DEFAULT_TIMEZONE) : null, s.hooks && (s.hooks.webhooks || s.hooks.notify) ? JSON.stringify(s.hooks) : null],
        );
      }
      return ids;
    });
  }

  async list(projectId: string, p: Page): Promise<Schedule[]> {
    const { limit, offset } = pageSql(p);
    return (
      await this.c.db.query<ScheduleRow>('SELECT * FROM schedules WHERE project_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3', [
        projectId,
        limit,
        offset,
      ])
    ).rows.map(toSchedule);
  }

  async get(projectId: string, id: string): Promise<Schedule | undefined> {
    const r = (await this.c.db.query<ScheduleRow>('SELECT * FROM schedules WHERE project_id = $1 AND id = $2', [projectId, id]))
      .rows[0];
    return r && toSchedule(r);
  }

  /** Cancels a schedule that is still scheduled; returns the schedule after, or undefined. */
  async cancel(projectId: string, id: string): Promise<Schedule | undefined> {
    await this.c.db.query(
      `UPDATE schedules SET status = 'cancelled', next_start = NULL, msg = 'Cancelled by user', updated_at = $3
       WHERE project_id = $1 AND id = $2 AND status = 'scheduled'`,
      [projectId, id, this.c.clock.now()],
    );
    return this.get(projectId, id);
  }

  /**
   * Fires every schedule due at `now` into a queued task, at most `limit` per call. Each
   * schedule fires in its own transaction that locks its row, inserts the task keyed by
   * (schedule, period) — a unique index, so a period can never fire twice — and advances
   * next_start past `now`. A firing counts against the owner's queued-tasks quota: one that
   * would pass it queues nothing and is recorded on the schedule as an error (like a firing
   * whose code package is gone), and the period passes.
   */
  async fireDue(now: Date, limit = 100, fence?: Fence): Promise<number> {
    const due = await this.c.db.query<{ id: string }>(
      `SELECT id FROM schedules WHERE status = 'scheduled' AND next_start <= $1 ORDER BY next_start LIMIT $2`,
      [now, limit],
    );
    let fired = 0;
    for (const { id } of due.rows) {
      if (await this.fireOne(id, now, fence)) fired++;
    }
    return fired;
  }

  private async fireOne(id: string, now: Date, fence: Fence | undefined): Promise<boolean> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const row = (
        await q.query<ScheduleRow>(
          `SELECT * FROM schedules WHERE id = $1 AND status = 'scheduled' AND next_start <= $2 FOR UPDATE SKIP LOCKED`,
          [id, now],
        )
      ).rows[0];
      const s = row && toSchedule(row);
      if (!s || !s.nextStart) return false;
      const code = (
        await q.query<{ id: string; rev: number; revision_id: string; retries: number; retries_delay: number; hooks: Hooks | null }>(
          `SELECT c.id, c.rev, r.id AS revision_id, r.retries, r.retries_delay, r.hooks
           FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
           WHERE c.project_id = $1 AND c.name = $2 AND c.deleted_at IS NULL`,
          [s.projectId, s.codeName],
        )
      ).rows[0];
      if (!code) {
        // Nothing was queued: an error, not a run. run_count is "the number of times the
        // scheduled task was queued" (IronWorker), so it and last_run_time stay, and run_times
        // cannot end the schedule; the period still passes (no burst when the code returns).
        const skip = afterFiring({ ...s, runTimes: null }, now);
        await q.query(
          `UPDATE schedules SET error_count = error_count + 1, next_start = $2, status = $3, msg = $4, updated_at = $5
           WHERE id = $1`,
          [s.id, skip.nextStart, skip.status, `Code package "${s.codeName}" not found; no task queued.`, now],
        );
        return true;
      }
      const refused = await this.quotas.admitQueued(q, s.projectId, 1);
      if (refused) {
        const skip = afterFiring({ ...s, runTimes: null }, now);
        await q.query(
          `UPDATE schedules SET error_count = error_count + 1, next_start = $2, status = $3, msg = $4, updated_at = $5
           WHERE id = $1`,
          [s.id, skip.nextStart, skip.status, `Quota exceeded: at most ${refused.limit} queued tasks per user (${refused.used} queued); no task queued for this run.`, now],
        );
        return true;
      }
      const next = afterFiring(s, now);
      await this.tasks.insert(q, [
        {
          projectId: s.projectId,
          codeId: code.id,
          codeName: s.codeName,
          revisionId: code.revision_id,
          rev: code.rev,
          retries: code.retries,
          retriesDelay: code.retries_delay,
          payload: s.payload,
          priority: s.priority,
          cluster: s.cluster,
          timeout: s.timeout,
          delay: s.taskDelay,
          label: s.name,
          scheduleId: s.id,
          scheduledFor: s.nextStart,
          hooks: resolveHooks(s.hooks, code.hooks),
        },
      ]);
      await q.query(
        `UPDATE schedules SET run_count = $2, next_start = $3, status = $4, msg = $5, last_run_time = $6, updated_at = $6
         WHERE id = $1`,
        [s.id, next.runCount, next.nextStart, next.status, next.msg, now],
      );
      return true;
    });
  }
}
