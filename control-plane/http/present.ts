import type { Code, CodeRevision } from '../store/codes.ts';
import type { Execution } from '../store/executions.ts';
import type { FarmStatus } from '../store/status.ts';
import type { Schedule } from '../store/schedules.ts';
import type { Task } from '../store/tasks.ts';
import { upcomingFires } from '../../lib/cron.ts';
import { fullLists, type Hooks } from '../store/hooks.ts';

export type Json = Record<string, unknown>;

/** `webhooks` and `notify` as replies show them: all three lists of each kind that is set. */
export function presentHooks(h: Hooks | null): Json {
  return {
    ...(h?.webhooks ? { webhooks: fullLists(h.webhooks) } : {}),
    ...(h?.notify ? { notify: fullLists(h.notify) } : {}),
  };
}

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
    ...presentHooks(c.hooks),
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
    ...presentHooks(r.hooks),
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
    ...presentHooks(t.hooks),
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
    cron: s.cron,
    timezone: s.timezone,
    next_fires: upcomingFires({ ...s, runsLeft: s.runTimes === null ? null : Math.max(0, s.runTimes - s.runCount) }, s.status === 'scheduled' ? s.nextStart : null).map((d) =>
      d.toISOString(),
    ),
    end_at: s.endAt,
    run_times: s.runTimes,
    run_count: s.runCount,
    error_count: s.errorCount,
    last_run_time: s.lastRunTime,
    next_start: s.nextStart,
    created_at: s.createdAt,
    updated_at: s.updatedAt,
    ...presentHooks(s.hooks),
  });
}

/** An execution of a task (ExecutionsStore). */
export function presentExecution(e: Execution): Json {
  const ended = e.state === 'done';
  const failed = ended && e.outcome !== 'complete';
  return clean({
    number: e.number,
    attempt: e.attempt,
    task_id: e.taskId,
    status: e.state === 'done' ? (e.outcome ?? 'ended') : e.state === 'accepted' ? 'starting' : 'running',
    current: e.current,
    runner_id: e.runnerId,
    instance_id: e.instanceId,
    hostname: e.hostname,
    container_id: e.containerId,
    image: e.image,
    command: e.command,
    exit_code: e.exitCode,
    error: failed ? e.msg : null,
    msg: e.msg,
    offered_at: e.offeredAt,
    accepted_at: e.acceptedAt,
    started_at: e.startedAt,
    finished_at: e.finishedAt,
    duration: e.startedAt && e.finishedAt ? Math.max(0, e.finishedAt.getTime() - e.startedAt.getTime()) : null,
    log_size: e.logSize,
  });
}

/** The farm's status (StatusStore.farm). */
export function presentFarm(f: FarmStatus): Json {
  return {
    hosts: f.hosts.map((h) =>
      clean({
        runner_id: h.runnerId,
        cluster: h.cluster,
        hostname: h.hostname,
        instance_id: h.instanceId,
        connected: h.connected,
        available: h.available,
        draining: h.draining,
        penalised: h.penalised,
        penalty_until: h.penaltyUntil,
        last_error: h.lastError,
        slots: h.slots,
        busy: h.busy,
        last_beat_at: h.lastBeatAt,
      }),
    ),
    running: f.running.map((r) =>
      clean({
        task_id: r.taskId,
        project_id: r.projectId,
        code_name: r.codeName,
        cluster: r.cluster,
        runner_id: r.runnerId,
        container_id: r.containerId,
        state: r.state,
        since: r.since,
      }),
    ),
    others_running: f.othersRunning,
    queues: {
      clusters: f.queues.clusters.map((c) => ({ cluster: c.cluster, queued: c.queued, delayed: c.delayed, running: c.running })),
      codes: f.queues.codes.map((c) => ({ project_id: c.projectId, code_id: c.codeId, code_name: c.codeName, queued: c.queued, delayed: c.delayed, running: c.running })),
    },
    upcoming: f.upcoming.map((u) => clean({ schedule_id: u.scheduleId, project_id: u.projectId, code_name: u.codeName, next_start: u.nextStart })),
    counts: f.counts,
  };
}
