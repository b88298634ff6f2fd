import { Type, type TSchema } from '@sinclair/typebox';
import { AuthQuery } from './common.ts';
import { endpoint, type Endpoint } from './endpoint.ts';
import { TASK_STATUSES } from '../../store/codes.ts';
import { DateTime, ErrorBody, Id, Reply } from './kit.ts';

const Count = Type.Integer({ minimum: 0 });
const QueueCounts = { queued: Count, delayed: Count, running: Count };
const FarmStatusBody = Type.Object(
  {
    hosts: Type.Array(
      Reply(
        {
          runner_id: Type.String(),
          cluster: Type.String(),
          hostname: Type.String(),
          instance_id: Type.String(),
          connected: Type.Boolean(),
          available: Type.Boolean({ description: 'connected, not draining and not set aside: it takes new work' }),
          draining: Type.Boolean(),
          penalised: Type.Boolean({ description: 'set aside after faults (its circuit is open) until penalty_until' }),
          penalty_until: DateTime(),
          last_error: Type.String({ description: 'why it was last set aside' }),
          slots: Count,
          busy: Count,
          last_beat_at: DateTime(),
        },
        ['hostname', 'instance_id', 'penalty_until', 'last_error', 'last_beat_at'],
      ),
      { description: 'runners of the clusters the user owns or is shared, seen in the last hour' },
    ),
    running: Type.Array(
      Reply({
        task_id: Id(),
        project_id: Id(),
        code_name: Type.String(),
        cluster: Type.String(),
        runner_id: Type.String(),
        container_id: Type.String(),
        state: Type.Union([Type.Literal('starting'), Type.Literal('running')]),
        since: DateTime(),
      }, ['container_id']),
      { description: "the user's tasks on a runner now, longest first" },
    ),
    others_running: Type.Integer({ minimum: 0, description: "other users' tasks running in these clusters (counted, never named)" }),
    queues: Type.Object(
      {
        clusters: Type.Array(Reply({ cluster: Type.String(), ...QueueCounts })),
        codes: Type.Array(Reply({ project_id: Id(), code_id: Id(), code_name: Type.String(), ...QueueCounts })),
      },
      { additionalProperties: false, description: 'queued (eligible), delayed (not yet eligible) and running tasks' },
    ),
    upcoming: Type.Array(Reply({ schedule_id: Id(), project_id: Id(), code_name: Type.String(), next_start: DateTime() }), {
      description: 'the next scheduled runs, soonest first',
    }),
    counts: Type.Object(
      {
        codes: Count,
        schedules: Count,
        tasks: Type.Object(Object.fromEntries(TASK_STATUSES.map((s) => [s, Count])), { additionalProperties: false }),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false, title: 'FarmStatus' },
);

/** A probe's replies: the same body with 200 when all is well and 503 when not. */
function upOrDown(up: string, down: string, schema: TSchema) {
  return { 200: { description: up, schema }, 503: { description: down, schema } };
}

/** Health, readiness, metrics, stacks, the farm's status and this document itself. */
export const systemEndpoints = [
  endpoint({
    id: 'healthz',
    method: 'GET',
    path: '/healthz',
    tag: 'operations',
    summary: 'Liveness: the process serves HTTP',
    auth: 'none',
    responses: { 200: { description: 'alive', schema: Type.Object({ status: Type.Literal('ok') }, { additionalProperties: false }) } },
  }),
  endpoint({
    id: 'readyz',
    method: 'GET',
    path: '/readyz',
    tag: 'operations',
    summary: 'Readiness: PostgreSQL reachable, the coordinator healthy with a known leader, not draining',
    auth: 'none',
    responses: upOrDown(
      'ready',
      'not ready: the body says which part failed',
      Type.Object(
        {
          ready: Type.Boolean(),
          database: Type.Union([Type.Literal('ok'), Type.Literal('unreachable')]),
          coordinator: Type.Optional(
            Type.Object(
              { kind: Type.String(), status: Type.Union([Type.Literal('ok'), Type.Literal('unreachable')]) },
              { additionalProperties: false },
            ),
          ),
          leader: Type.Optional(Type.Union([Type.String(), Type.Null()])),
          is_leader: Type.Optional(Type.Boolean()),
          draining: Type.Optional(Type.Literal(true)),
        },
        { additionalProperties: false },
      ),
    ),
  }),
  endpoint({
    id: 'healthcheck',
    method: 'GET',
    path: '/healthcheck',
    tag: 'operations',
    summary: 'Health of this replica and of each dependency it is configured with, each asked now and within a bounded time',
    auth: 'none',
    responses: upOrDown(
      'every configured dependency answers',
      'a dependency does not answer: errors says which, and what was seen',
      Type.Object(
        {
          errors: Type.Array(Type.String(), { description: 'one line per dependency that did not answer' }),
          postgres: Type.Boolean({ description: 'the database answered (PostgreSQL, or the embedded PGlite)' }),
          etcd: Type.Union([Type.Boolean(), Type.Null()], { description: 'etcd answered; null when this replica runs without etcd' }),
          database: Type.Union([Type.Literal('postgres'), Type.Literal('pglite')]),
          leader: Type.Union([Type.String(), Type.Null()], { description: 'the replica leading, when known' }),
          is_leader: Type.Boolean(),
          replica: Type.String({ description: "this replica's id (GANTRY_SERVER_ID)" }),
          draining: Type.Boolean(),
          uptime_s: Type.Integer({ minimum: 0 }),
          checked_in_ms: Type.Integer({ minimum: 0, description: 'how long the checks took' }),
        },
        { additionalProperties: false },
      ),
    ),
  }),
  endpoint({
    id: 'metrics',
    method: 'GET',
    path: '/metrics',
    tag: 'operations',
    summary: 'Prometheus metrics (text exposition format)',
    auth: 'none',
    responses: { 200: { description: 'the metrics', text: 'text/plain' }, 404: { description: 'metrics are not enabled', schema: ErrorBody } },
  }),
  endpoint({
    id: 'openapi',
    method: 'GET',
    path: '/2/openapi.json',
    tag: 'operations',
    summary: 'This document (OpenAPI 3.1)',
    auth: 'none',
    responses: { 200: { description: 'the OpenAPI document', schema: Type.Object({ openapi: Type.String() }) } },
  }),
  endpoint({
    id: 'getStatus',
    method: 'GET',
    path: '/2/status',
    tag: 'operations',
    summary: "The farm at a glance: hosts, running containers, queue lengths, the next scheduled runs and counts, of the caller's projects and clusters",
    auth: 'user',
    query: AuthQuery,
    responses: {
      200: { description: 'the farm as this user sees it', schema: FarmStatusBody },
      401: { description: 'no valid OAuth token', schema: ErrorBody },
    },
  }),
  endpoint({
    id: 'listStacks',
    method: 'GET',
    path: '/2/stacks',
    tag: 'codes',
    summary: 'Stacks are deprecated: Gantry runs Docker images, so the list is empty',
    auth: 'user',
    query: AuthQuery,
    responses: {
      200: { description: 'an empty list', schema: Type.Array(Type.String(), { maxItems: 0 }) },
      401: { description: 'no valid OAuth token', schema: ErrorBody },
    },
  }),
];

/**
 * The projects a token can use (the dashboard's project switcher). Listed after every other
 * endpoint so the fuzzer's per-operation seeds of the others stay as they were.
 */
export const projectEndpoints: readonly Endpoint[] = [
  endpoint({
    id: 'listProjects',
    method: 'GET',
    path: '/2/projects',
    tag: 'projects',
    summary: "The projects the token's user owns, oldest first (every one its token can use)",
    auth: 'user',
    query: AuthQuery,
    responses: {
      200: {
        description: "the user's projects",
        schema: Type.Object(
          { projects: Type.Array(Reply({ id: Id(), name: Type.String(), created_at: DateTime() }, [], { title: 'Project' })) },
          { additionalProperties: false },
        ),
      },
      401: { description: 'no valid OAuth token', schema: ErrorBody },
    },
  }),
];
