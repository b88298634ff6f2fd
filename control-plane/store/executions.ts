import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';

/**
 * One attempt of a task that reached a runner: a lease the runner accepted (or started
 * without an Accept). Offers that were never accepted are not executions. Executions are
 * numbered 1, 2, ... in attempt order; `attempt` is the lease's own attempt number, which
 * also counts offers never accepted.
 */
export interface Execution {
  number: number;
  attempt: number;
  leaseId: string;
  taskId: string;
  runnerId: string;
  /** The runner's cloud instance and host as the runner last reported them. */
  instanceId: string | null;
  hostname: string | null;
  containerId: string | null;
  /** What ran: the task's code revision's image and command (no command: the image's own). */
  image: string;
  command: string | null;
  /** accepted (the runner is starting it), running, or done. */
  state: 'accepted' | 'running' | 'done';
  /**
   * How it ended: the task's final status when this attempt decided it (complete, error,
   * timeout, cancelled, killed), `runner_lost` when its runner went silent and the lease was
   * taken back, `handed_back` when a draining runner gave it back, or another reason a lease
   * was taken away. Null while it runs.
   */
  outcome: string | null;
  exitCode: number | null;
  /** The attempt's result message, or why it was ended. */
  msg: string | null;
  offeredAt: Date;
  acceptedAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  /** Bytes of this attempt's combined log stored so far. */
  logSize: number;
  /** Whether this execution is the task's current one (the one its `log` shows). */
  current: boolean;
}

interface ExecutionRow {
  number: number;
  id: string;
  task_id: string;
  attempt: number;
  runner_id: string;
  state: 'offered' | 'accepted' | 'running' | 'done';
  outcome: string | null;
  exit_code: number | null;
  msg: string | null;
  container_id: string | null;
  granted_at: Date;
  accepted_at: Date;
  started_at: Date | null;
  ended_at: Date | null;
  instance_id: string | null;
  hostname: string | null;
  image: string;
  command: string | null;
  log_size: string | number;
  current: boolean;
}

function toExecution(r: ExecutionRow): Execution {
  return {
    number: r.number,
    attempt: r.attempt,
    leaseId: r.id,
    taskId: r.task_id,
    runnerId: r.runner_id,
    instanceId: r.instance_id,
    hostname: r.hostname,
    containerId: r.container_id,
    image: r.image,
    command: r.command,
    state: r.state === 'offered' ? 'accepted' : r.state,
    outcome: r.outcome === 'reclaimed' ? 'runner_lost' : r.outcome,
    exitCode: r.exit_code,
    msg: r.msg,
    offeredAt: r.granted_at,
    acceptedAt: r.accepted_at,
    startedAt: r.started_at,
    finishedAt: r.ended_at,
    logSize: Number(r.log_size),
    current: r.current,
  };
}

const EXECUTIONS = `
  SELECT row_number() OVER (ORDER BY l.attempt)::int AS number, l.id, l.task_id, l.attempt, l.runner_id, l.state,
    l.outcome, l.exit_code, l.msg, l.container_id, l.granted_at, l.accepted_at, l.started_at, l.ended_at,
    rn.instance_id, rn.hostname, cr.image, cr.command, t.attempt = l.attempt AS current,
    (SELECT coalesce(sum(octet_length(c.data)), 0) FROM task_log_chunks c WHERE c.task_id = l.task_id AND c.attempt = l.attempt) AS log_size
  FROM task_leases l
  JOIN tasks t ON t.id = l.task_id
  JOIN code_revisions cr ON cr.id = t.code_revision_id
  LEFT JOIN runners rn ON rn.id = l.runner_id
  WHERE l.task_id = $1 AND l.accepted_at IS NOT NULL
  ORDER BY l.attempt`;

/** A task's executions and their logs. */
export class ExecutionsStore {
  constructor(private readonly c: StoreCtx) {}

  /** Every execution of the task, oldest first (a task has few: each is a runner's attempt). */
  async list(taskId: string): Promise<Execution[]> {
    return (await this.c.db.query<ExecutionRow>(EXECUTIONS, [taskId])).rows.map(toExecution);
  }

  /** Execution `number` of the task, or undefined. */
  async get(taskId: string, number: number): Promise<Execution | undefined> {
    return (await this.list(taskId)).find((e) => e.number === number);
  }

  /** An execution's log: both streams interleaved in arrival order, or one stream alone. */
  async log(taskId: string, attempt: number, stream?: 'stdout' | 'stderr'): Promise<Buffer> {
    return readLog(this.c.db, taskId, attempt, stream);
  }
}

/**
 * Log bytes of one attempt of a task (`attempt` null: the task's current one), both streams
 * in the order they arrived or one alone. Gantry's own notes (stream 0: truncation) belong
 * to the combined log only.
 */
export async function readLog(q: Queryable, taskId: string, attempt: number | null, stream?: 'stdout' | 'stderr'): Promise<Buffer> {
  const which = attempt === null ? '(SELECT attempt FROM tasks WHERE id = $1)' : '$2::int';
  const params: unknown[] = attempt === null ? [taskId] : [taskId, attempt];
  const only = stream ? ` AND stream = $${params.push(stream === 'stdout' ? 1 : 2)}` : '';
  const r = await q.query<{ data: Uint8Array }>(
    `SELECT data FROM task_log_chunks WHERE task_id = $1 AND attempt = ${which}${only} ORDER BY byte_offset`,
    params,
  );
  return Buffer.concat(r.rows.map((x) => x.data));
}

/** One stored chunk of an attempt's combined log. */
export interface LogChunk {
  offset: number;
  /** 1 stdout, 2 stderr, 0 Gantry's own note (truncation). */
  stream: number;
  data: Uint8Array;
}

/** What a follower of one attempt's log needs to know besides its bytes. */
export interface FollowState {
  /** The task's status and current attempt. */
  status: string;
  currentAttempt: number;
  /** The current attempt's log is whole (the runner's final frame matched). */
  logComplete: boolean;
  /** The followed attempt's lease outcome, when it ended (null while it runs, or never ran). */
  outcome: string | null;
}

/** The largest chunk the store holds: a runner's log frame (proto/README.md section 7). */
const MAX_CHUNK = 256 * 1024;

/**
 * Up to `limit` chunks of an attempt's combined log holding bytes at or past `from`, in
 * order (the first may start before `from`: the caller cuts it).
 */
export async function chunksFrom(q: Queryable, taskId: string, attempt: number, from: number, limit: number): Promise<LogChunk[]> {
  const r = await q.query<{ byte_offset: number; stream: number; data: Uint8Array }>(
    `SELECT byte_offset, stream, data FROM task_log_chunks
     WHERE task_id = $1 AND attempt = $2 AND byte_offset > $3::bigint - $5::bigint AND byte_offset + octet_length(data) > $3::bigint
     ORDER BY byte_offset LIMIT $4`,
    [taskId, attempt, from, limit, MAX_CHUNK],
  );
  return r.rows.map((x) => ({ offset: Number(x.byte_offset), stream: x.stream, data: x.data }));
}

/** The task's status and attempt and the followed attempt's outcome; undefined when the task is gone. */
export async function followState(q: Queryable, taskId: string, attempt: number): Promise<FollowState | undefined> {
  const r = await q.query<{ status: string; attempt: number; log_complete: boolean; state: string | null; outcome: string | null }>(
    `SELECT t.status, t.attempt, t.log_complete, l.state, l.outcome FROM tasks t
     LEFT JOIN task_leases l ON l.task_id = t.id AND l.attempt = $2
     WHERE t.id = $1`,
    [taskId, attempt],
  );
  const row = r.rows[0];
  if (!row) return undefined;
  const outcome = row.state === 'done' ? (row.outcome === 'reclaimed' ? 'runner_lost' : (row.outcome ?? 'ended')) : null;
  return { status: row.status, currentAttempt: row.attempt, logComplete: row.log_complete, outcome };
}
