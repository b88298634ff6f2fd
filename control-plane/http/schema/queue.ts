import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { OAuthQuery, ProjectParams } from './common.ts';
import { endpoint } from './endpoint.ts';
import { Id, ID_PATTERN, Int, List, Obj, OneOf, Reply, Str, DateTime } from './kit.ts';
import { RunOptions, Task, MAX_PAYLOAD, errors, queueErrors as writeErrors } from './tasks.ts';

/**
 * The queue services (a job type is a code package, a job a task): the recorded load, the
 * queue's status now, queueing a job, requeueing finished ones. README, "Queue services",
 * maps each field onto Gantry.
 */

/** The most days one load query spans. */
export const MAX_LOAD_DAYS = 31;
/** The most tasks one requeue-jobs call requeues. */
export const MAX_REQUEUE = 10_000;
/** The most values one repeatable filter takes. */
const MAX_REPEATS = 100;

/** A query parameter that may be repeated (`?job_type_id=a&job_type_id=b`): one value of `item`, or several. */
function Repeatable(item: TSchema, description: string) {
  const s = JSON.parse(JSON.stringify(item)) as Record<string, unknown>;
  return Type.Unsafe<unknown>({
    ...s,
    type: [s.type as string, 'array'],
    items: item,
    maxItems: MAX_REPEATS,
    description: `${description}; repeat it for several (at most ${MAX_REPEATS})`,
  });
}

const ISO_TIME_RULE = 'an ISO 8601 date-time (e.g. 2026-01-02T15:04:05Z) or an ISO 8601 duration before now (e.g. PT3H0M0S)';
/** An ISO 8601 date-time, or a duration meaning that long before now. */
const IsoTime = (description: string) => Str(64, { describe: ISO_TIME_RULE, description: `${description}: ${ISO_TIME_RULE}` });

const CodeIdItem = Str(24, { pattern: ID_PATTERN, describe: 'a code package id (24 hex characters)' });
const NameItem = Str(255, { minLength: 1 });
const PriorityItem = Int(0, 2);

const PAGING = {
  page: Int(0, 100_000, { description: 'page number, from 0' }),
  per_page: Int(1, 1000, { description: 'results per page (default 100)' }),
};

export const LoadQuery = Obj({
  started: IsoTime('start of the range (default: a week before ended)'),
  ended: IsoTime('end of the range (default: now)'),
  job_type_id: Repeatable(CodeIdItem, 'count only tasks of this code package id'),
  job_type_name: Repeatable(NameItem, 'count only tasks of the code package of this name'),
  job_type_category: Repeatable(NameItem, 'count only tasks of code packages of this category'),
  job_type_priority: Repeatable(PriorityItem, 'count only tasks of this priority'),
  resolution: OneOf(['minute', 'hour'] as const, {
    description: 'minute: every recorded interval; hour: the hourly roll-up (each count the mean over the hour). Default: minute, or hour when started is older than the per-interval rows are kept',
  }),
  ...PAGING,
  ...OAuthQuery,
});

const Paged = (item: TSchema, extra: Record<string, TSchema> = {}, description?: string) =>
  Type.Object(
    {
      count: Type.Integer({ minimum: 0, description: 'how many results there are in all' }),
      next: Type.Union([Type.String(), Type.Null()], { description: 'the next page, or null' }),
      previous: Type.Union([Type.String(), Type.Null()], { description: 'the previous page, or null' }),
      results: Type.Array(item),
      ...extra,
    },
    { additionalProperties: false, ...(description ? { description } : {}) },
  );

const LoadPoint = Reply(
  {
    time: DateTime('when the counts were recorded (hourly: the start of the hour)'),
    pending_count: Type.Integer({ minimum: 0, description: 'queued tasks whose delay has not passed' }),
    queued_count: Type.Integer({ minimum: 0, description: 'eligible tasks waiting for a runner' }),
    running_count: Type.Integer({ minimum: 0, description: 'tasks holding a lease: offered, starting or running' }),
  },
  [],
  { title: 'LoadPoint' },
);

const QueueStatusEntry = Reply(
  {
    job_type_id: Id('the code package'),
    job_type_name: Type.String(),
    job_type_version: Type.String({ description: 'the code revision the tasks run' }),
    job_type_category: Type.String(),
    count: Type.Integer({ minimum: 1 }),
    longest_queued: DateTime('when the task that has waited longest became eligible'),
    highest_priority: Type.Integer({ minimum: 0, maximum: 2, description: 'the highest priority among them (2 is the highest)' }),
    is_job_type_paused: Type.Boolean(),
  },
  ['job_type_category'],
  { title: 'QueueStatus' },
);

export const NewJobBody = Obj(
  {
    job_type_id: Str(24, { pattern: ID_PATTERN, describe: 'a code package id (24 hex characters)', description: 'the code package to run', requiredHint: 'the id of a code package' }),
    job_data: Type.Unsafe<unknown>({
      description: `the task's payload, as JSON text (at most ${MAX_PAYLOAD} bytes)`,
      'x-describe': 'any JSON value',
    }),
    cluster: RunOptions.cluster,
    priority: RunOptions.priority,
    timeout: RunOptions.timeout,
    delay: RunOptions.delay,
    label: Str(255, { nullable: true, description: 'a label of your own' }),
  },
  { required: ['job_type_id'] },
);
export type NewJobInput = Static<typeof NewJobBody>;

/** Seed statuses and Gantry's own. */
export const REQUEUE_STATUSES = ['CANCELED', 'FAILED', 'cancelled', 'error', 'timeout', 'killed'] as const;
const StatusItem = OneOf(REQUEUE_STATUSES, { describe: `one of ${REQUEUE_STATUSES.join(', ')}` });

export const RequeueBody = Obj({
  started: IsoTime('requeue only tasks that ended at or after this'),
  ended: IsoTime('requeue only tasks that ended at or before this'),
  status: Type.Unsafe<string | string[]>({
    type: ['string', 'array'],
    items: StatusItem,
    maxItems: REQUEUE_STATUSES.length,
    'x-describe': `one of ${REQUEUE_STATUSES.join(', ')}, or an array of them`,
    description: 'CANCELED (cancelled) and/or FAILED (error, timeout, killed), or Gantry\'s own statuses (default: all of them)',
  }),
  job_ids: List(Str(24, { pattern: ID_PATTERN, describe: 'a task id (24 hex characters)' }), { max: MAX_REQUEUE, description: 'requeue only these tasks' }),
  job_type_ids: List(CodeIdItem, { max: MAX_REPEATS, description: 'requeue only tasks of these code packages' }),
  job_type_names: List(NameItem, { max: MAX_REPEATS, description: 'requeue only tasks of the code packages of these names' }),
  job_type_categories: List(NameItem, { max: MAX_REPEATS, description: 'requeue only tasks of code packages of these categories' }),
  priority: Int(0, 2, { nullable: true, description: "the new tasks' priority (default: each task's own; 2 is the highest)" }),
});
export type RequeueInput = Static<typeof RequeueBody>;

const Requeued = Paged(Task, { requeue_id: Id('pages on: GET .../queue/requeue-jobs/{requeue_id}') });
const PageQuery = Obj({ ...PAGING, ...OAuthQuery });

export const queueEndpoints = [
  endpoint({
    id: 'getLoad',
    method: 'GET',
    path: '/2/projects/:projectId/load',
    tag: 'queue',
    summary: `The project's recorded queue load over a range of at most ${MAX_LOAD_DAYS} days (default: the past week), oldest first`,
    auth: 'project',
    params: ProjectParams,
    query: LoadQuery,
    responses: { 200: { description: 'tasks pending, queued and running at each recorded instant', schema: Paged(LoadPoint) }, ...errors },
  }),
  endpoint({
    id: 'getQueueStatus',
    method: 'GET',
    path: '/2/projects/:projectId/queue/status',
    tag: 'queue',
    summary: "The project's queue now: eligible waiting tasks by code package revision",
    auth: 'project',
    params: ProjectParams,
    query: Obj({ ...OAuthQuery }),
    responses: {
      200: { description: 'one entry per code package revision with queued tasks', schema: Type.Object({ queue_status: Type.Array(QueueStatusEntry) }, { additionalProperties: false }) },
      ...errors,
    },
  }),
  endpoint({
    id: 'queueNewJob',
    method: 'POST',
    path: '/2/projects/:projectId/queue/new-job',
    tag: 'queue',
    summary: 'Queue a task of a code package by its id, job_data as its payload',
    auth: 'project',
    params: ProjectParams,
    query: Obj({ ...OAuthQuery }),
    body: { kind: 'json', schema: NewJobBody },
    responses: { 201: { description: 'queued: the task (Location names it)', schema: Task }, ...writeErrors },
  }),
  endpoint({
    id: 'requeueJobs',
    method: 'POST',
    path: '/2/projects/:projectId/queue/requeue-jobs',
    tag: 'queue',
    summary: `Requeue finished tasks that match, as new linked tasks (as retry does), at most ${MAX_REQUEUE} in one transaction`,
    auth: 'project',
    params: ProjectParams,
    query: PageQuery,
    body: { kind: 'json', schema: RequeueBody },
    responses: { 200: { description: 'the new tasks, first page', schema: Requeued }, ...writeErrors },
  }),
  endpoint({
    id: 'getClusterLoad',
    method: 'GET',
    path: '/2/clusters/:clusterId/load',
    tag: 'clusters',
    summary: `A cluster's recorded demand and fleet (what its autoscaler saw) over at most ${MAX_LOAD_DAYS} days (default: the past week), oldest first`,
    auth: 'user',
    params: { clusterId: Id('the cluster id') },
    query: Obj({ started: LoadQuery.properties.started, ended: LoadQuery.properties.ended, ...PAGING, ...OAuthQuery }),
    responses: {
      200: {
        description: "per recorded instant: busy leases, tasks that could be leased, connected runners and their slots, instances by state, the autoscaler's EWMA",
        schema: Paged(
          Reply(
            {
              time: DateTime('the recorded instant'),
              busy: Type.Integer({ minimum: 0 }),
              queued: Type.Integer({ minimum: 0 }),
              runners: Type.Integer({ minimum: 0 }),
              slots: Type.Integer({ minimum: 0 }),
              instances: Reply({ add: Type.Integer({ minimum: 0 }), live: Type.Integer({ minimum: 0 }), kill: Type.Integer({ minimum: 0 }) }),
              ewma: Type.Union([Type.Number({ minimum: 0 }), Type.Null()], { description: "the autoscaler's fast EWMA of demand (busy + queued) then; null before it had one" }),
            },
            [],
            { title: 'ClusterLoadPoint' },
          ),
        ),
      },
      401: errors[401],
      404: { description: 'no such cluster, or not yours nor shared with you', schema: errors[404].schema },
      400: errors[400],
    },
  }),
  endpoint({
    id: 'listRequeued',
    method: 'GET',
    path: '/2/projects/:projectId/queue/requeue-jobs/:requeueId',
    tag: 'queue',
    summary: 'The tasks one requeue-jobs call made, a page at a time',
    auth: 'project',
    params: { ...ProjectParams, requeueId: Id('the requeue_id of a requeue-jobs reply') },
    query: PageQuery,
    responses: { 200: { description: 'the new tasks', schema: Requeued }, ...errors },
  }),
];
