/**
 * The dashboard's one way to the server: the public REST API under /2/, with the token from
 * sessionStorage in the Authorization header (never in a URL). A 401 forgets the token and
 * sends the page back to sign-in.
 */
const TOKEN = 'gantry.oauth';
const PROJECT = 'gantry.project';

export const session = {
  token: (): string | null => sessionStorage.getItem(TOKEN),
  project: (): string | null => sessionStorage.getItem(PROJECT),
  signIn(token: string): void {
    sessionStorage.setItem(TOKEN, token);
  },
  setProject(id: string): void {
    sessionStorage.setItem(PROJECT, id);
  },
  signOut(): void {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(PROJECT);
    location.hash = '#/';
    window.dispatchEvent(new Event('gantry:session'));
  },
};

/** An answer other than 2xx: the API's `{"msg"}` and the status. */
export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

type Query = Record<string, string | number | boolean | undefined | null>;

export interface CallOptions {
  method?: string;
  query?: Query;
  json?: unknown;
  form?: FormData;
  signal?: AbortSignal;
  accept?: string;
  headers?: Record<string, string>;
}

function url(path: string, query?: Query): string {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  return u.pathname + u.search;
}

/** The raw reply of a request; throws ApiError on a non-2xx status. */
export async function request(path: string, o: CallOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { Accept: o.accept ?? 'application/json', ...o.headers };
  const token = session.token();
  if (token) headers.Authorization = `OAuth ${token}`;
  let body: BodyInit | undefined;
  if (o.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(o.json);
  } else if (o.form) body = o.form;
  const res = await fetch(url(path, o.query), { method: o.method ?? 'GET', headers, body, signal: o.signal, cache: 'no-store' });
  if (res.ok) return res;
  let msg = `HTTP ${res.status}`;
  try {
    const j = (await res.json()) as { msg?: unknown };
    if (typeof j.msg === 'string') msg = j.msg;
  } catch {
    // not JSON: keep the status
  }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN);
    window.dispatchEvent(new Event('gantry:session'));
  }
  throw new ApiError(res.status, msg);
}

/** A JSON request. */
export async function api<T>(path: string, o: CallOptions = {}): Promise<T> {
  return (await request(path, o)).json() as Promise<T>;
}

/** A path under the current project. */
export const pp = (rest: string): string => `/2/projects/${session.project() ?? ''}${rest}`;

export type TaskStatus = 'queued' | 'running' | 'complete' | 'error' | 'cancelled' | 'killed' | 'timeout';
export const TASK_STATUSES: readonly TaskStatus[] = ['queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'];

export interface Project { id: string; name: string; created_at: string }
export interface Code {
  id: string; name: string; created_at: string; rev: number; image?: string; command?: string; max_concurrency?: number;
  retries?: number; retries_delay?: number; default_priority?: number; config?: string; env_vars?: Record<string, string>;
  log_streams?: string; category?: string; file_name?: string; code_size?: number; paused?: boolean; latest_change?: string;
}
export interface Revision { id: string; rev: number; created_at: string; image?: string; command?: string; file_name?: string; code_size?: number; checksum?: string }
export interface Task {
  id: string; code_name: string; code_rev?: string; status: TaskStatus; msg?: string; priority?: number; timeout?: number; delay?: number;
  payload?: string; cluster?: string; label?: string; percent?: number; schedule_id?: string; original_task_id?: string; retry_task_id?: string;
  start_time?: string; end_time?: string; duration?: number; log_size?: number; created_at: string; updated_at?: string;
}
export interface Execution {
  number: number; attempt: number; status: string; current: boolean; runner_id?: string; hostname?: string; image?: string; command?: string;
  exit_code?: number; error?: string; msg?: string; offered_at?: string; accepted_at?: string; started_at?: string; finished_at?: string; duration?: number; log_size?: number;
}
export interface Schedule {
  id: string; code_name: string; name?: string; payload?: string; status: string; msg?: string; run_every?: number; cron?: string; timezone?: string;
  next_start?: string; next_fires?: string[]; start_at?: string; end_at?: string; run_times?: number; run_count?: number; last_run_time?: string; created_at: string;
}
export interface Instance { instance_id: string; type: 'ADD' | 'LIVE' | 'KILL' | 'TERMINATE'; provider: string; runners_total: number; runners_available: number; launched_at?: string; live_at?: string; kill_at?: string; terminated_at?: string; created_at: string }
export interface Cluster { id: string; name: string; user_id: string; memory: number; disk_space: number; created_at: string }
export interface ClusterDetail extends Cluster { runners_total: number; runners_available: number; machines: Instance[]; shared_to: string[]; container: Record<string, unknown>; autoscale: Record<string, unknown> }
export interface ClusterStats { ewma: number; queued: number; runners_available: number; runners_total: number; instances: Instance[] }
export interface ClusterLoadPoint { time: string; busy: number; queued: number; runners: number; slots: number; instances: { add: number; live: number; kill: number }; ewma: number | null }
export interface LoadPoint { time: string; pending_count: number; queued_count: number; running_count: number }
export interface Worker {
  id: string; cluster: { id: string; name: string }; external: boolean; state: string; hostname: string | null; ip: string | null; version: string | null; docker_version: string | null;
  instance: { id: string; state: string | null } | null; slots: { busy: number; total: number }; tasks: { id: string; name: string; running_time?: number | null }[];
  register_time: string; last_activity_time: string | null; draining: boolean; penalised: boolean; penalty_reason: string | null;
}
export interface WorkerStats { workers: { worker: string; metrics: { metric: string; variant?: string; dates: number[]; stats: { aggregation: string; values: number[] }[] }[] }[] }
export interface Farm {
  hosts: { runner_id: string; cluster: string; hostname?: string; connected: boolean; available: boolean; draining: boolean; penalised: boolean; slots: number; busy: number; last_beat_at?: string }[];
  running: { task_id: string; code_name: string; cluster: string; runner_id: string; state: string; since: string }[];
  others_running: number;
  queues: { clusters: { cluster: string; queued: number; delayed: number; running: number }[]; codes: { code_id: string; code_name: string; queued: number; delayed: number; running: number }[] };
  upcoming: { schedule_id: string; code_name: string; next_start: string }[];
  counts: { codes: number; schedules: number; tasks: Record<TaskStatus, number> };
}
export interface Health { errors: string[]; postgres: boolean; etcd: boolean | null; database: string; leader: string | null; replica: string; draining: boolean; uptime_s: number }
