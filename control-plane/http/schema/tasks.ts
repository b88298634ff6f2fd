import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TASK_STATUSES } from '../../store/codes.ts';
import { AuthQuery, Batch, ClusterRef, Flag, OAuthQuery, Paging, ProjectParams } from './common.ts';
import { endpoint, type Endpoint } from './endpoint.ts';
import { DateTime, ErrorBody, Id, Int, MsgBody, Obj, OneOf, Reply, Str, Time } from './kit.ts';
import { HookFields, HookReplyProps } from './hooks.ts';

export const MAX_PAYLOAD = 65536;

/** A log's follow parameters (tasks and executions alike). */
export const FollowQuery = {
  follow: Flag('keep the reply open and send output as it is stored, until the task is final and its log whole (or GANTRY_LOG_FOLLOW_MAX_S passes: resume with offset)'),
  offset: Int(0, Number.MAX_SAFE_INTEGER, { description: 'follow from this byte of the log (Server-Sent Events: Last-Event-ID wins)' }),
};

/** A log's reply: whole, followed, or as Server-Sent Events. */
export const LogReply = {
  description: 'the log as text; followed (follow=1) as it is stored; or Server-Sent Events (Accept: text/event-stream): start, log (id: the offset after it), behind, execution, end',
  text: 'text/plain',
  alsoText: ['text/event-stream'],
};

/** A log's WebSocket endpoint (a GET upgraded; without the upgrade, 426). */
export function socketEndpoint(id: string, path: string, summary: string, params: Record<string, TSchema>, errors: Endpoint['responses']): Endpoint {
  return endpoint({
    id,
    method: 'GET',
    path,
    tag: 'tasks',
    summary,
    auth: 'project',
    params,
    query: SocketQuery,
    responses: { 101: { description: 'switching to the WebSocket protocol' }, ...errors, 426: { description: 'not a WebSocket upgrade', schema: ErrorBody } },
  });
}

/** A log's stream page: public HTML that asks for the token itself (http/stream-page.ts). */
export function pageEndpoint(id: string, path: string, summary: string, params: Record<string, TSchema>, errors: Endpoint['responses']): Endpoint {
  return endpoint({
    id,
    method: 'GET',
    path,
    tag: 'tasks',
    summary,
    description: 'The page holds no task data and needs no token to load; it reads the token from its #oauth= fragment (or asks for it), keeps it in sessionStorage and sends it in the Authorization header only.',
    auth: 'none',
    params,
    query: Obj({}),
    responses: { 200: { description: 'the page', text: 'text/html' }, ...errors },
  });
}

/** The query of a log WebSocket (tasks and executions alike). */
export const SocketQuery = Obj({
  ...OAuthQuery,
  stream: OneOf(['stdout', 'stderr'] as const, { describe: 'stdout or stderr (omit it for both, interleaved)' }),
  offset: Int(0, Number.MAX_SAFE_INTEGER, { description: 'start at this byte of the log (the bytes received before a reconnect)' }),
  format: OneOf(['text', 'json'] as const, { describe: 'text (each message log text) or json (log, behind, execution and end messages)' }),
});
export const MAX_DELAY = 604800;
export const MAX_BATCH = 1000;
/** The schema's bound on timeouts; the cluster's own ceiling (GANTRY_MAX_TIMEOUT, GANTRY_CLUSTER_MAX_TIMEOUTS) is checked with it. */
export const TIMEOUT_BOUND = 2 ** 31 - 1;

/** Options shared by queued tasks, webhooks and schedules. */
export const RunOptions = {
  code_name: Str(255, { minLength: 1, description: 'the code package to run' }),
  payload: Str<true>(MAX_PAYLOAD, {
    nullable: true,
    description: 'given to the task as the file PAYLOAD_FILE (JSON-encode structured payloads)',
    message: { type: '{field} must be a string (JSON-encode structured payloads)' },
  }),
  cluster: ClusterRef(),
  priority: Int(0, 2, { nullable: true, description: "0 (default), 1 or 2; default: the code package's default_priority" }),
  timeout: Int(1, TIMEOUT_BOUND, { nullable: true, description: "seconds before the task is stopped (at most the cluster's ceiling, 3600 by default)" }),
  delay: Int(0, MAX_DELAY, { nullable: true, description: 'seconds before the task may run' }),
};

const { payload: _payload, ...WEBHOOK_OPTIONS } = RunOptions;

export const NewTask = Obj({ ...RunOptions, label: Str(255, { nullable: true, description: 'a label of your own' }), ...HookFields }, { required: ['code_name'] });
/** A task to queue as it reaches the handler, typed and bounded by the schema. */
export type TaskInput = Static<typeof NewTask>;
/** The run options a handler reads (a schedule's or a webhook's as well as a task's). */
export type RunInput = Omit<TaskInput, 'code_name' | 'payload' | 'webhooks' | 'notify'>;

export const QueueTasksBody = Obj(
  {
    tasks: Batch(NewTask, MAX_BATCH, 'tasks'),
  },
  { required: ['tasks'] },
);

export const TaskProps = {
  id: Id(),
  project_id: Id(),
  code_id: Id(),
  code_name: Type.String(),
  code_rev: Type.String({ pattern: '^\\d+$' }),
  code_history_id: Id('the code revision the task runs'),
  status: OneOf(TASK_STATUSES),
  msg: Type.String(),
  priority: Type.Integer({ minimum: 0, maximum: 2 }),
  timeout: Type.Integer({ minimum: 1 }),
  delay: Type.Integer({ minimum: 0 }),
  payload: Type.String(),
  cluster: Type.String(),
  label: Type.String(),
  percent: Type.Integer({ minimum: 0, maximum: 100 }),
  schedule_id: Id(),
  original_task_id: Id(),
  retry_task_id: Id(),
  retry_count: Type.Integer({ minimum: 0 }),
  run_times: Type.Integer({ minimum: 1 }),
  start_time: DateTime(),
  end_time: DateTime(),
  duration: Type.Integer({ minimum: 0, description: 'milliseconds from start to end' }),
  log_size: Type.Integer({ minimum: 0 }),
  created_at: DateTime(),
  updated_at: DateTime(),
  ...HookReplyProps,
};
export const Task = Reply(
  TaskProps,
  // Lists leave the payload out (it may be 64 KB a task).
  ['msg', 'payload', 'label', 'percent', 'schedule_id', 'original_task_id', 'retry_task_id', 'run_times', 'start_time', 'end_time', 'duration', 'webhooks', 'notify'],
  { title: 'Task' },
);

const Queued = Type.Object(
  { msg: Type.String(), tasks: Type.Array(Type.Object({ id: Id() }, { additionalProperties: false })) },
  { additionalProperties: false },
);

/** Errors of the endpoints that read tasks, and of those that queue them. */
export const errors = {
  400: { description: 'invalid input: the message names the field and the limit', schema: ErrorBody },
  401: { description: 'no valid OAuth token', schema: ErrorBody },
  404: { description: 'no such project, task or code package', schema: ErrorBody },
};
export const queueErrors = {
  ...errors,
  403: { description: 'the cluster belongs to another user, or a quota is reached', schema: ErrorBody },
  406: { description: 'the body is not sent as application/json', schema: ErrorBody },
  413: { description: 'the body is larger than the limit', schema: ErrorBody },
  429: { description: 'the queued-tasks quota is reached; retry after Retry-After', schema: ErrorBody },
};
const TaskParams = { ...ProjectParams, taskId: Id('the task id') };

export const taskEndpoints = [
  endpoint({
    id: 'listTasks',
    method: 'GET',
    path: '/2/projects/:projectId/tasks',
    tag: 'tasks',
    summary: 'List tasks, newest first, optionally by status, code package and time',
    auth: 'project',
    params: ProjectParams,
    query: Obj({
      ...Paging,
      ...OAuthQuery,
      ...Object.fromEntries(TASK_STATUSES.map((s) => [s, Flag(`include ${s} tasks`)])),
      code_name: Str(255, { description: 'only tasks of this code package' }),
      from_time: Time({ description: 'only tasks created at or after this time' }),
      to_time: Time({ description: 'only tasks created before this time' }),
    }),
    responses: { 200: { description: 'the tasks', schema: Type.Object({ tasks: Type.Array(Task) }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'queueTasks',
    method: 'POST',
    path: '/2/projects/:projectId/tasks',
    tag: 'tasks',
    summary: 'Queue 1 to 1000 tasks',
    auth: 'project',
    params: ProjectParams,
    query: AuthQuery,
    body: { kind: 'json', schema: QueueTasksBody },
    responses: { 200: { description: 'queued, ids in request order', schema: Queued }, ...queueErrors },
  }),
  endpoint({
    id: 'queueTaskWebhook',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/webhook',
    tag: 'tasks',
    summary: 'Queue a task whose payload is the request body, byte for byte (UTF-8 text)',
    auth: 'project',
    params: ProjectParams,
    query: Obj({ ...OAuthQuery, ...WEBHOOK_OPTIONS, label: Str(255, { nullable: true }) }, { required: ['code_name'] }),
    body: { kind: 'raw', description: 'the payload: any UTF-8 text of at most 65536 bytes without NUL' },
    responses: {
      200: { description: 'queued', schema: Type.Object({ id: Id(), msg: Type.String() }, { additionalProperties: false }) },
      ...queueErrors,
    },
  }),
  endpoint({
    id: 'getTask',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId',
    tag: 'tasks',
    summary: 'Get a task',
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    responses: { 200: { description: 'the task', schema: Task }, ...errors },
  }),
  endpoint({
    id: 'getTaskLog',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId/log',
    tag: 'tasks',
    summary: "A task's log: stdout and stderr interleaved in arrival order, or one of them",
    auth: 'project',
    params: TaskParams,
    query: Obj({
      ...OAuthQuery,
      stream: OneOf(['stdout', 'stderr'] as const, { describe: 'stdout or stderr (omit it for both, interleaved)' }),
      ...FollowQuery,
    }),
    responses: { 200: LogReply, ...errors },
  }),
  pageEndpoint('taskStreamPage', '/2/projects/:projectId/tasks/:taskId/stream', "A web page that shows the task's log live", TaskParams, errors),
  socketEndpoint('followTaskLogSocket', '/2/projects/:projectId/tasks/:taskId/log/ws', "A WebSocket carrying the task's log as it is stored, closed with reason done when the task is final", TaskParams, errors),
  endpoint({
    id: 'cancelTask',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/:taskId/cancel',
    tag: 'tasks',
    summary: 'Cancel a queued or running task',
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    responses: { 200: { description: 'cancelled, or cancellation requested of the runner', schema: MsgBody }, ...errors },
  }),
  endpoint({
    id: 'setTaskProgress',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/:taskId/progress',
    tag: 'tasks',
    summary: "Set a task's progress (percent and/or a message)",
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    body: {
      kind: 'json',
      schema: Obj({ percent: Int(0, 100, { nullable: true }), msg: Str(4096, { nullable: true }) }),
    },
    responses: { 200: { description: 'progress set', schema: MsgBody }, 406: queueErrors[406], 413: queueErrors[413], ...errors },
  }),
  endpoint({
    id: 'retryTask',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/:taskId/retry',
    tag: 'tasks',
    summary: 'Queue a finished task again, as a new task',
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    body: { kind: 'json', schema: Obj({ delay: Int(0, MAX_DELAY, { nullable: true }) }) },
    responses: { 200: { description: 'queued', schema: Queued }, ...queueErrors },
  }),
];
