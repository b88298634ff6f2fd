import { Type } from '@sinclair/typebox';
import { AuthQuery, Flag, OAuthQuery, PagingQuery, ProjectParams, projectErrors } from './common.ts';
import { endpoint } from './endpoint.ts';
import { DateTime, ErrorBody, Id, MsgBody, Obj, OneOf, Reply } from './kit.ts';
import { FollowQuery, LogReply, Task, pageEndpoint, socketEndpoint } from './tasks.ts';

const Execution = Reply(
  {
    number: Type.Integer({ minimum: 1, description: 'the execution number: 1, 2, ... in the order the attempts reached a runner' }),
    attempt: Type.Integer({ minimum: 1, description: "the lease's attempt number (offers never accepted count too, so it may skip)" }),
    task_id: Id(),
    status: Type.String({
      description:
        'starting, running, or how it ended: complete, error, timeout, cancelled, killed, runner_lost (its runner went silent and the task was taken back), handed_back (a draining runner gave it back), or another reason a lease was taken away',
    }),
    current: Type.Boolean({ description: "whether this is the task's current execution (the one its log shows)" }),
    runner_id: Type.String(),
    instance_id: Type.String({ description: "the runner's cloud instance" }),
    hostname: Type.String({ description: "the runner's host" }),
    container_id: Type.String(),
    image: Type.String({ description: 'the Docker image run' }),
    command: Type.String({ description: "the command run (absent: the image's own)" }),
    exit_code: Type.Integer(),
    error: Type.String({ description: 'the result message of a failed or ended execution' }),
    msg: Type.String({ description: 'the result message' }),
    offered_at: DateTime(),
    accepted_at: DateTime(),
    started_at: DateTime(),
    finished_at: DateTime(),
    duration: Type.Integer({ minimum: 0, description: 'milliseconds from start to finish' }),
    log_size: Type.Integer({ minimum: 0, description: "bytes of this execution's log" }),
  },
  ['instance_id', 'hostname', 'container_id', 'command', 'exit_code', 'error', 'msg', 'started_at', 'finished_at', 'duration'],
  { title: 'Execution' },
);

const errors = projectErrors('project, task, execution or schedule');
const TaskParams = { ...ProjectParams, taskId: Id('the task id') };
const ExecutionParams = { ...TaskParams, number: Type.String({ pattern: '^[1-9][0-9]{0,8}$', description: 'the execution number (1, 2, ...)' }) };

export const executionEndpoints = [
  endpoint({
    id: 'listExecutions',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId/executions',
    tag: 'tasks',
    summary: "A task's executions: every attempt that reached a runner, oldest first",
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    responses: {
      200: { description: 'the executions', schema: Type.Object({ executions: Type.Array(Execution) }, { additionalProperties: false }) },
      ...errors,
    },
  }),
  endpoint({
    id: 'getExecution',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId/executions/:number',
    tag: 'tasks',
    summary: 'One execution of a task',
    auth: 'project',
    params: ExecutionParams,
    query: AuthQuery,
    responses: { 200: { description: 'the execution', schema: Execution }, ...errors },
  }),
  endpoint({
    id: 'getExecutionLog',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId/executions/:number/log',
    tag: 'tasks',
    summary: "An execution's own log: both streams interleaved in arrival order, one of them, or stdout and stderr apart",
    auth: 'project',
    params: ExecutionParams,
    query: Obj({
      ...OAuthQuery,
      stream: OneOf(['stdout', 'stderr'] as const, { describe: 'stdout or stderr (omit it for both)' }),
      split: Flag('stdout, then a line "-=-", then stderr, instead of the two interleaved'),
      ...FollowQuery,
    }),
    responses: { 200: LogReply, ...errors },
  }),
  pageEndpoint('executionStreamPage', '/2/projects/:projectId/tasks/:taskId/executions/:number/stream', "A web page that shows an execution's log live", ExecutionParams, errors),
  socketEndpoint('followExecutionLogSocket', '/2/projects/:projectId/tasks/:taskId/executions/:number/log/ws', "A WebSocket carrying an execution's log as it is stored, closed with reason done when it has ended", ExecutionParams, errors),
  endpoint({
    id: 'stopExecution',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/:taskId/executions/:number/stop',
    tag: 'tasks',
    summary: 'Stop an execution while it runs: its runner stops it and the task ends cancelled',
    auth: 'project',
    params: ExecutionParams,
    query: AuthQuery,
    responses: {
      200: { description: 'the runner was asked to stop it', schema: MsgBody },
      ...errors,
      409: { description: 'the execution is not running (it ended, or a later one runs)', schema: ErrorBody },
    },
  }),
  endpoint({
    id: 'listScheduleTasks',
    method: 'GET',
    path: '/2/projects/:projectId/schedules/:scheduleId/tasks',
    tag: 'schedules',
    summary: 'The tasks a schedule has queued, newest first',
    auth: 'project',
    params: { ...ProjectParams, scheduleId: Id('the schedule id') },
    query: PagingQuery,
    responses: { 200: { description: 'the tasks', schema: Type.Object({ tasks: Type.Array(Task) }, { additionalProperties: false }) }, ...errors },
  }),
];
