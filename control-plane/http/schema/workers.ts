import { Type, type TSchema } from '@sinclair/typebox';
import { endpoint } from './endpoint.ts';
import { Bool, DateTime, ErrorBody, Int, List, Num, Obj, OneOf, Reply, Str } from './kit.ts';

/**
 * The workers service under /2/workers.* (ClearML's, whose request and reply fields it
 * keeps): the fleet as data. Reads are a user's, over the runners of clusters they own;
 * register, status_report and unregister are a third-party worker's, with its cluster's id
 * and runner token.
 */

/** The most points one series of a reply may have. */
export const MAX_POINTS = 10_000;
/** Epoch seconds up to the end of year 9999. */
const MAX_EPOCH_S = 253_402_300_799;
export const AGGREGATIONS = ['avg', 'min', 'max', 'last', 'count'] as const;
export const DEFAULT_TIMEOUT_S = 600;

const WorkerId = () =>
  Str(128, {
    pattern: '^[^\\x00-\\x1f\\x7f]{1,128}$',
    describe: 'a worker id of 1 to 128 characters without control characters',
    requiredHint: 'the worker id, 1 to 128 characters',
  });
const WorkerIds = () =>
  List(WorkerId(), { max: 1000, nullable: true, describe: 'an array of worker ids', description: 'empty or absent: every worker the user sees' });
const Names = (max: number, what: string) =>
  List(Str(128, { pattern: '^[^\\x00-\\x1f\\x7f]{1,128}$', describe: `a ${what} of 1 to 128 characters without control characters` }), {
    max,
    nullable: true,
    describe: `an array of ${what}s`,
  });
const Seconds = (description: string) => Num(0, MAX_EPOCH_S, { description, requiredHint: 'seconds since the epoch' });
const Interval = () => Int(1, 31_536_000, { description: 'seconds per point (at least 1)', requiredHint: 'seconds per point, at least 1' });
const Empty = Type.Object({}, { additionalProperties: false });

const reply = (s: TSchema) => ({ 200: { description: 'done', schema: s } });
const bodyErrors = {
  400: { description: 'a field out of its limits (named, with the limit)', schema: ErrorBody },
  406: { description: 'a body that is not JSON', schema: ErrorBody },
  413: { description: 'body too large', schema: ErrorBody },
};
const readErrors = {
  ...bodyErrors,
  401: { description: 'missing or invalid token', schema: ErrorBody },
  404: { description: 'a worker id the user does not see', schema: ErrorBody },
};
const writeErrors = {
  ...bodyErrors,
  401: { description: 'missing or invalid cluster id or runner token', schema: ErrorBody },
  404: { description: 'status_report or unregister of a worker not registered (or whose registration timed out)', schema: ErrorBody },
  409: { description: "the id is a Gantry runner's or another cluster's worker's", schema: ErrorBody },
};

const Nullable = (s: TSchema) => Type.Union([s, Type.Null()]);
const IdName = Type.Object({ id: Type.String(), name: Type.String() }, { additionalProperties: false });

const Worker = Reply(
  {
    id: Type.String({ description: 'the runner id (or the third-party worker id)' }),
    key: Type.String({ description: "the worker's entry key (its id)" }),
    cluster: IdName,
    external: Type.Boolean({ description: 'a third-party worker registered through workers.register, not a Gantry runner' }),
    state: Type.Union(['connected', 'draining', 'disconnected', 'registered'].map((x) => Type.Literal(x))),
    hostname: Nullable(Type.String()),
    ip: Nullable(Type.String({ description: 'the address its connection came from' })),
    version: Nullable(Type.String({ description: 'the runner agent version' })),
    docker_version: Nullable(Type.String()),
    instance: Nullable(
      Type.Object(
        { id: Type.String(), state: Nullable(Type.Union(['ADD', 'LIVE', 'KILL', 'TERMINATE'].map((x) => Type.Literal(x)))) },
        { additionalProperties: false },
      ),
    ),
    tags: Type.Array(Type.String()),
    queues: Type.Array(IdName, { description: "a runner's cluster; the queues a third-party worker reported" }),
    queue: Type.Union([IdName, Type.Null()], { description: "the queue its current task came from: a busy runner's cluster, what a third-party worker reported; null when idle" }),
    slots: Type.Object({ busy: Type.Integer({ minimum: 0 }), total: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
    tasks: Type.Array(
      Type.Object(
        {
          id: Type.String(),
          name: Type.String({ description: "the task's code package" }),
          lease_id: Nullable(Type.String()),
          slot: Nullable(Type.Integer({ minimum: 0 })),
          running_time: Nullable(Type.Integer({ minimum: 0, description: 'seconds since its container started' })),
        },
        { additionalProperties: false },
      ),
    ),
    task: Nullable(
      Type.Object(
        { id: Type.String(), name: Type.String(), running_time: Nullable(Type.Integer({ minimum: 0 })) },
        { additionalProperties: false, description: 'the first of tasks (ClearML has one task per worker)' },
      ),
    ),
    replica: Nullable(Type.String({ description: 'the control-plane replica holding its session' })),
    register_time: DateTime('first seen'),
    last_activity_time: Nullable(DateTime('last beat or report')),
    last_report_time: Nullable(DateTime('last beat or report')),
    draining: Type.Boolean(),
    penalised: Type.Boolean({ description: 'offered nothing until penalty_until, for faults of its own' }),
    penalty_until: Nullable(DateTime()),
    penalty_reason: Nullable(Type.String()),
    timeout: Nullable(Type.Integer({ description: "a third-party worker's registration timeout, seconds" })),
  },
  [],
  { title: 'Worker' },
);

const ActivitySeries = Type.Object(
  { dates: Type.Array(Type.Integer()), counts: Type.Array(Type.Integer({ minimum: 0 })) },
  { additionalProperties: false, title: 'ActivitySeries' },
);

const MetricStats = Type.Object(
  {
    metric: Type.String(),
    variant: Type.Optional(Type.String({ description: 'set when split_by_variant' })),
    dates: Type.Array(Type.Integer(), { description: 'bucket starts, seconds since the epoch, ascending; buckets without samples are left out' }),
    stats: Type.Array(
      Type.Object(
        { aggregation: Type.Union(AGGREGATIONS.map((a) => Type.Literal(a))), values: Type.Array(Type.Number()) },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false, title: 'MetricStats' },
);

/** machine_stats of a third-party worker's status_report (ClearML's fields and units). */
const MachineStatsBody = Obj(
  {
    cpu_usage: List(Num(0, 100), { max: 1024, nullable: true, description: 'percent per core' }),
    gpu_usage: List(Num(0, 100), { max: 64, nullable: true, description: 'percent per GPU' }),
    memory_used: Num(0, 1e9, { description: 'MB' }),
    memory_free: Num(0, 1e9, { description: 'MB' }),
    gpu_memory_free: List(Num(0, 1e9), { max: 64, nullable: true, description: 'MB per GPU' }),
    gpu_memory_used: List(Num(0, 1e9), { max: 64, nullable: true, description: 'MB per GPU' }),
    network_tx: Num(0, 1e9, { description: 'MB per second' }),
    network_rx: Num(0, 1e9, { description: 'MB per second' }),
    disk_free_home: Num(0, 100, { description: 'percent free of /home' }),
    disk_free_temp: Num(0, 100, { description: 'percent free of /tmp' }),
    disk_read: Num(0, 1e9, { description: 'MB per second' }),
    disk_write: Num(0, 1e9, { description: 'MB per second' }),
    cpu_temperature: List(Num(-273, 1000), { max: 1024, nullable: true }),
    gpu_temperature: List(Num(-273, 1000), { max: 64, nullable: true }),
  },
  { nullable: true, what: 'machine_stats', description: 'the machine statistics' },
);

const workerWrite = (id: string, path: string, summary: string, body: TSchema) =>
  endpoint({ id, method: 'POST', path, tag: 'workers', summary, auth: 'runner', body: { kind: 'json', required: true, schema: body }, responses: { ...reply(Empty), ...writeErrors } });

export const workerEndpoints = [
  workerWrite(
    'registerWorker',
    '/2/workers.register',
    "Register a third-party worker in its cluster (or renew its registration); it is removed once `timeout` seconds pass without a register or status_report",
    Obj(
      {
        worker: WorkerId(),
        timeout: Int(1, 604_800, { description: `registration timeout, seconds (default ${DEFAULT_TIMEOUT_S})` }),
        queues: Names(64, 'queue name'),
        tags: Names(64, 'tag'),
      },
      { required: ['worker'] },
    ),
  ),
  workerWrite(
    'reportWorkerStatus',
    '/2/workers.status_report',
    "A third-party worker's periodic report: alive, the task it runs, its machine stats (recorded with the runners')",
    Obj(
      {
        worker: WorkerId(),
        timestamp: Int(0, MAX_EPOCH_S, { description: 'UNIX time in seconds (the sample is stamped with the server\'s time)', requiredHint: 'UNIX time in seconds' }),
        task: Str(128, { pattern: '^[^\\x00-\\x1f\\x7f]{0,128}$', describe: 'a task id of at most 128 characters', description: 'the task it runs now; absent clears it' }),
        queue: Str(128, { pattern: '^[^\\x00-\\x1f\\x7f]{0,128}$', describe: 'a queue name of at most 128 characters', description: 'the queue its current task came from; absent clears it' }),
        queues: Names(64, 'queue name'),
        tags: Names(64, 'tag'),
        machine_stats: MachineStatsBody,
      },
      { required: ['worker', 'timestamp'] },
    ),
  ),
  workerWrite('unregisterWorker', '/2/workers.unregister', 'Remove a third-party worker (its recorded stats stay)', Obj({ worker: WorkerId() }, { required: ['worker'] })),
  endpoint({
    id: 'listWorkers',
    method: 'POST',
    path: '/2/workers.get_all',
    tag: 'workers',
    summary: 'The workers of your clusters: state, host, slots, current tasks, replica, first and last seen',
    auth: 'user',
    body: {
      kind: 'json',
      schema: Obj({
        last_seen: Type.Unsafe<number | string | null>({
          type: ['integer', 'string', 'null'],
          minimum: 0,
          maximum: 315_360_000,
          pattern: '^none$',
          'x-describe': "an integer from 0 to 315360000 (seconds), or 'none'",
          description: "leave out workers not seen for more than this many seconds (default 3600); 0 or 'none': no filter",
        }),
      }),
    },
    responses: { ...reply(Type.Object({ workers: Type.Array(Worker) }, { additionalProperties: false })), ...readErrors },
  }),
  endpoint({
    id: 'getWorkerActivity',
    method: 'POST',
    path: '/2/workers.get_activity_report',
    tag: 'workers',
    summary: 'Per interval: how many of your workers reported (total) and how many ran a task (active)',
    auth: 'user',
    body: {
      kind: 'json',
      required: true,
      schema: Obj({ from_date: Seconds('start, seconds since the epoch'), to_date: Seconds('end, seconds since the epoch'), interval: Interval() }, { required: ['from_date', 'to_date', 'interval'] }),
    },
    responses: { ...reply(Type.Object({ total: ActivitySeries, active: ActivitySeries }, { additionalProperties: false })), ...readErrors },
  }),
  endpoint({
    id: 'getWorkerMetricKeys',
    method: 'POST',
    path: '/2/workers.get_metric_keys',
    tag: 'workers',
    summary: 'The metric keys recorded for these workers (or all of yours), by category',
    auth: 'user',
    body: { kind: 'json', schema: Obj({ worker_ids: WorkerIds() }) },
    responses: {
      ...reply(
        Type.Object(
          { categories: Type.Array(Type.Object({ name: Type.String(), metric_keys: Type.Array(Type.String()) }, { additionalProperties: false })) },
          { additionalProperties: false },
        ),
      ),
      ...readErrors,
    },
  }),
  endpoint({
    id: 'getWorkerStats',
    method: 'POST',
    path: '/2/workers.get_stats',
    tag: 'workers',
    summary: 'Per worker and interval, the requested statistics (avg, min, max, last, count) of each metric key',
    auth: 'user',
    body: {
      kind: 'json',
      required: true,
      schema: Obj(
        {
          worker_ids: WorkerIds(),
          from_date: Seconds('start, seconds since the epoch'),
          to_date: Seconds('end, seconds since the epoch'),
          interval: Interval(),
          items: List(
            Obj(
              {
                key: Str(64, { pattern: '^[a-z][a-z0-9_]{0,63}$', describe: 'a metric key (workers.get_metric_keys lists them)', requiredHint: 'a metric key' }),
                category: OneOf(AGGREGATIONS, { description: 'the statistic (ClearML calls it category); default avg' }),
              },
              { required: ['key'], what: 'stat item' },
            ),
            {
              min: 1,
              max: 50,
              requiredHint: 'an array of 1 to 50 {key, category}',
              message: { minItems: '{field} must hold 1 to 50 {key, category}', maxItems: '{field} must hold at most 50 {key, category}, got {count}' },
            },
          ),
          split_by_variant: Bool({ description: 'one series per variant (core, filesystem, interface); default false' }),
        },
        { required: ['from_date', 'to_date', 'interval', 'items'] },
      ),
    },
    responses: {
      ...reply(
        Type.Object(
          { workers: Type.Array(Type.Object({ worker: Type.String(), metrics: Type.Array(MetricStats) }, { additionalProperties: false })) },
          { additionalProperties: false },
        ),
      ),
      ...readErrors,
    },
  }),
];
