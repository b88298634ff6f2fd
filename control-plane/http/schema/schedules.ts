import { Type, type Static } from '@sinclair/typebox';
import { AuthQuery, Batch, PagingQuery, ProjectParams } from './common.ts';
import { endpoint } from './endpoint.ts';
import { DateTime, ErrorBody, Id, Int, MsgBody, Obj, OneOf, Reply, Str, Time } from './kit.ts';
import { RunOptions } from './tasks.ts';
import { HookFields, HookReplyProps } from './hooks.ts';

export const MAX_SCHEDULES = 100;
export const MAX_RUN_EVERY = 10 * 365 * 86400;

export const NewSchedule = Obj(
  {
    ...RunOptions,
    name: Str(255, { nullable: true, description: 'a name of your own (label is the same)' }),
    label: Str(255, { nullable: true }),
    start_at: Time({ description: 'the first run (default: now)' }),
    end_at: Time({ description: 'no run after this time' }),
    run_every: Int(1, MAX_RUN_EVERY, { nullable: true, description: 'seconds between runs (at least 60); omitted (and no cron): run once' }),
    cron: Str(255, {
      nullable: true,
      description: 'instead of run_every: a five-field cron expression (minute hour day-of-month month day-of-week, or @hourly, @daily, ...), e.g. "0 3 * * *"',
    }),
    timezone: Str(64, { nullable: true, description: 'the IANA time zone the cron expression is read in, e.g. "Europe/Berlin" (default UTC)' }),
    run_times: Int(1, 2 ** 31 - 1, { nullable: true, description: 'the most runs' }),
    ...HookFields,
  },
  { required: ['code_name'] },
);
/** A schedule to create as it reaches the handler, typed and bounded by the schema. */
export type ScheduleInput = Static<typeof NewSchedule>;

export const CreateSchedulesBody = Obj(
  {
    schedules: Batch(NewSchedule, MAX_SCHEDULES, 'schedules'),
  },
  { required: ['schedules'] },
);

const Schedule = Reply(
  {
    id: Id(),
    project_id: Id(),
    code_name: Type.String(),
    name: Type.String(),
    label: Type.String(),
    payload: Type.String(),
    status: OneOf(['scheduled', 'complete', 'cancelled'] as const),
    msg: Type.String(),
    priority: Type.Integer({ minimum: 0, maximum: 2 }),
    timeout: Type.Integer({ minimum: 1 }),
    cluster: Type.String(),
    delay: Type.Integer({ minimum: 0 }),
    task_delay: Type.Integer({ minimum: 0 }),
    start_at: DateTime(),
    run_every: Type.Integer({ minimum: 1 }),
    cron: Type.String(),
    timezone: Type.String(),
    next_fires: Type.Array(DateTime(), { maxItems: 5, description: 'the next five fire times (fewer when end_at or run_times comes first)' }),
    end_at: DateTime(),
    run_times: Type.Integer({ minimum: 1 }),
    run_count: Type.Integer({ minimum: 0 }),
    error_count: Type.Integer({ minimum: 0 }),
    last_run_time: DateTime(),
    next_start: DateTime(),
    created_at: DateTime(),
    updated_at: DateTime(),
    ...HookReplyProps,
  },
  ['name', 'label', 'msg', 'run_every', 'cron', 'timezone', 'end_at', 'run_times', 'last_run_time', 'next_start', 'webhooks', 'notify'],
  { title: 'Schedule' },
);

const errors = {
  400: { description: 'invalid input: the message names the field and the limit', schema: ErrorBody },
  401: { description: 'no valid OAuth token', schema: ErrorBody },
  404: { description: 'no such project, schedule or code package', schema: ErrorBody },
};
const ScheduleParams = { ...ProjectParams, scheduleId: Id('the schedule id') };

export const scheduleEndpoints = [
  endpoint({
    id: 'listSchedules',
    method: 'GET',
    path: '/2/projects/:projectId/schedules',
    tag: 'schedules',
    summary: 'List schedules',
    auth: 'project',
    params: ProjectParams,
    query: PagingQuery,
    responses: { 200: { description: 'the schedules', schema: Type.Object({ schedules: Type.Array(Schedule) }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'createSchedules',
    method: 'POST',
    path: '/2/projects/:projectId/schedules',
    tag: 'schedules',
    summary: 'Create 1 to 100 schedules',
    auth: 'project',
    params: ProjectParams,
    query: AuthQuery,
    body: { kind: 'json', schema: CreateSchedulesBody },
    responses: {
      200: {
        description: 'scheduled, ids in request order',
        schema: Type.Object({ msg: Type.String(), schedules: Type.Array(Type.Object({ id: Id() }, { additionalProperties: false })) }, { additionalProperties: false }),
      },
      403: { description: 'the cluster belongs to another user, or a quota is reached', schema: ErrorBody },
      406: { description: 'the body is not sent as application/json', schema: ErrorBody },
      413: { description: 'the body is larger than the limit', schema: ErrorBody },
      ...errors,
    },
  }),
  endpoint({
    id: 'getSchedule',
    method: 'GET',
    path: '/2/projects/:projectId/schedules/:scheduleId',
    tag: 'schedules',
    summary: 'Get a schedule',
    auth: 'project',
    params: ScheduleParams,
    query: AuthQuery,
    responses: { 200: { description: 'the schedule', schema: Schedule }, ...errors },
  }),
  endpoint({
    id: 'cancelSchedule',
    method: 'POST',
    path: '/2/projects/:projectId/schedules/:scheduleId/cancel',
    tag: 'schedules',
    summary: 'Cancel a schedule (tasks it queued are not touched)',
    auth: 'project',
    params: ScheduleParams,
    query: AuthQuery,
    responses: { 200: { description: 'cancelled', schema: MsgBody }, ...errors },
  }),
];
