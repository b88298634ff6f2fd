import type { Code, CodeRevision } from '../store/codes.ts';
import type { Schedule } from '../store/schedules.ts';
import type { Task } from '../store/tasks.ts';

export type Json = Record<string, unknown>;

/** Drops absent values (IronWorker omits optional fields) and writes dates as RFC 3339. */
export function clean(o: Json): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === null || v === undefined) continue;
    out[k] = v instanceof Date ? v.toISOString() : v;
  }
  return out;
}

export function presentCode(c: Code): Json {
  return clean({
    id: c.id,
    project_id: c.project_id,
    name: c.name,
    created_at: c.created_at,
    rev: c.rev,
    latest_history_id: c.latest_revision_id,
    latest_change: c.updated_at,
    latest_checksum: c.checksum,
    image: c.image,
    stack: c.stack,
    command: c.command,
    max_concurrency: c.max_concurrency,
    retries: c.retries,
    retries_delay: c.retries_delay,
    priority: c.default_priority,
    default_priority: c.default_priority,
    config: c.config,
    env_vars: c.env_vars,
    file_name: c.file_name,
    code_size: c.code_size,
    paused: c.paused,
  });
}

export function presentRevision(r: CodeRevision, name: string): Json {
  return clean({
    id: r.id,
    code_id: r.code_id,
    project_id: r.project_id,
    name,
    rev: r.rev,
    created_at: r.created_at,
    updated_at: r.created_at,
    image: r.image,
    stack: r.stack,
    command: r.command,
    checksum: r.checksum,
    code_size: r.code_size,
    file_name: r.file_name,
    max_concurrency: r.max_concurrency,
    retries: r.retries,
    retries_delay: r.retries_delay,
    priority: r.default_priority,
    config: r.config,
    env_vars: r.env_vars,
  });
}

export function presentTask(t: Task): Json {
  const duration = t.start_time && t.end_time ? t.end_time.getTime() - t.start_time.getTime() : undefined;
  return clean({
    id: t.id,
    project_id: t.project_id,
    code_id: t.code_id,
    code_name: t.code_name,
    code_rev: String(t.code_rev),
    code_history_id: t.code_revision_id,
    status: t.status,
    msg: t.msg,
    priority: t.priority,
    timeout: t.timeout,
    delay: t.delay,
    payload: t.payload,
    cluster: t.cluster,
    label: t.label,
    percent: t.percent,
    schedule_id: t.schedule_id,
    original_task_id: t.original_task_id,
    retry_task_id: t.retry_task_id,
    retry_count: t.retry_count,
    run_times: t.run_times > 0 ? t.run_times : undefined,
    start_time: t.start_time,
    end_time: t.end_time,
    duration,
    log_size: t.log_size,
    created_at: t.created_at,
    updated_at: t.updated_at,
  });
}

export function presentSchedule(s: Schedule): Json {
  return clean({
    id: s.id,
    project_id: s.project_id,
    code_name: s.code_name,
    name: s.name,
    label: s.name,
    payload: s.payload,
    status: s.status,
    msg: s.msg,
    priority: s.priority,
    timeout: s.timeout,
    cluster: s.cluster,
    delay: s.task_delay,
    task_delay: s.task_delay,
    start_at: s.start_at,
    run_every: s.run_every,
    end_at: s.end_at,
    run_times: s.run_times,
    run_count: s.run_count,
    error_count: s.error_count,
    last_run_time: s.last_run_time,
    next_start: s.next_start,
    created_at: s.created_at,
    updated_at: s.updated_at,
  });
}
