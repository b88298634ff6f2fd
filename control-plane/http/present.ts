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
    project_id: c.projectId,
    name: c.name,
    created_at: c.createdAt,
    rev: c.rev,
    latest_history_id: c.latestRevisionId,
    latest_change: c.updatedAt,
    latest_checksum: c.checksum,
    image: c.image,
    stack: c.stack,
    command: c.command,
    max_concurrency: c.maxConcurrency,
    retries: c.retries,
    retries_delay: c.retriesDelay,
    priority: c.defaultPriority,
    default_priority: c.defaultPriority,
    config: c.config,
    env_vars: c.envVars,
    log_streams: c.logStreams,
    category: c.category,
    file_name: c.fileName,
    code_size: c.codeSize,
    paused: c.paused,
  });
}

export function presentRevision(r: CodeRevision, name: string): Json {
  return clean({
    id: r.id,
    code_id: r.codeId,
    project_id: r.projectId,
    name,
    rev: r.rev,
    created_at: r.createdAt,
    updated_at: r.createdAt,
    image: r.image,
    stack: r.stack,
    command: r.command,
    checksum: r.checksum,
    code_size: r.codeSize,
    file_name: r.fileName,
    max_concurrency: r.maxConcurrency,
    retries: r.retries,
    retries_delay: r.retriesDelay,
    priority: r.defaultPriority,
    config: r.config,
    env_vars: r.envVars,
    log_streams: r.logStreams,
    category: r.category,
  });
}

/** A task; `waiting`: why a queued one has not started (TasksStore.waitReasons), shown as its msg unless it set one. */
export function presentTask(t: Task, waiting?: string): Json {
  const duration = t.startTime && t.endTime ? t.endTime.getTime() - t.startTime.getTime() : undefined;
  return clean({
    id: t.id,
    project_id: t.projectId,
    code_id: t.codeId,
    code_name: t.codeName,
    code_rev: String(t.codeRev),
    code_history_id: t.codeRevisionId,
    status: t.status,
    msg: t.msg ?? waiting,
    priority: t.priority,
    timeout: t.timeout,
    delay: t.delay,
    payload: t.payload,
    cluster: t.cluster,
    label: t.label,
    percent: t.percent,
    schedule_id: t.scheduleId,
    original_task_id: t.originalTaskId,
    retry_task_id: t.retryTaskId,
    retry_count: t.retryCount,
    run_times: t.runTimes > 0 ? t.runTimes : undefined,
    start_time: t.startTime,
    end_time: t.endTime,
    duration,
    log_size: t.logSize,
    created_at: t.createdAt,
    updated_at: t.updatedAt,
  });
}

export function presentSchedule(s: Schedule): Json {
  return clean({
    id: s.id,
    project_id: s.projectId,
    code_name: s.codeName,
    name: s.name,
    label: s.name,
    payload: s.payload,
    status: s.status,
    msg: s.msg,
    priority: s.priority,
    timeout: s.timeout,
    cluster: s.cluster,
    delay: s.taskDelay,
    task_delay: s.taskDelay,
    start_at: s.startAt,
    run_every: s.runEvery,
    end_at: s.endAt,
    run_times: s.runTimes,
    run_count: s.runCount,
    error_count: s.errorCount,
    last_run_time: s.lastRunTime,
    next_start: s.nextStart,
    created_at: s.createdAt,
    updated_at: s.updatedAt,
  });
}
