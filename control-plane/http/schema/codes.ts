import { Type, type Static } from '@sinclair/typebox';
import { LOG_STREAMS, TASK_STATUSES } from '../../store/codes.ts';
import { AuthQuery, OAuthQuery, PagingQuery, ProjectParams } from './common.ts';
import { endpoint } from './endpoint.ts';
import { DateTime, Dict, ErrorBody, Id, Int, MsgBody, Obj, OneOf, Reply, Str, Time } from './kit.ts';
import { HookFields, HookReplyProps } from './hooks.ts';

/** Docker's reference grammar: [registry[:port]/]path[:tag][@digest]. */
export const IMAGE_REF =
  '^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?\\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\\w][\\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$';
export const ENV_NAME = '^[A-Za-z_][A-Za-z0-9_]{0,254}$';
const CODE_NAME = '^[^\\x00-\\x1f\\x7f]{1,255}$';
const NAME_RULE = '1 to 255 characters without control characters or surrounding spaces';

/** The `data` part of a code upload (unknown fields are ignored, as IronWorker does). */
export const CodeData = Obj(
  {
    name: Str(255, { pattern: CODE_NAME, minLength: 1, describe: NAME_RULE, description: `the code package's name: ${NAME_RULE}` }),
    image: Str(255, {
      nullable: true,
      pattern: `^$|${IMAGE_REF}`,
      describe: 'a Docker image reference like "busybox" or "iron/node:4"',
      description: 'the Docker image the code runs in (required: stacks are deprecated and not supported)',
    }),
    command: Str(8192, { nullable: true, description: 'the command run in the image (default: its entrypoint and command)' }),
    config: Str(65536, { nullable: true, description: 'text given to every task as the file CONFIG_FILE' }),
    stack: Str(64, { nullable: true, description: 'deprecated; stored and shown, never used' }),
    max_concurrency: Int(-1, 100000, { nullable: true, description: 'the most tasks of this package running at once; 0, -1 or null: no limit' }),
    retries: Int(0, 10, { nullable: true, description: 'times a failed task is retried' }),
    retries_delay: Int(0, 604800, { nullable: true, description: 'seconds before a retry' }),
    default_priority: Int(0, 2, { nullable: true, description: 'priority of tasks that give none' }),
    priority: Int(0, 2, { nullable: true, description: 'the same as default_priority' }),
    env_vars: Dict(Str(65536, { describe: 'a string' }), {
      nullable: true,
      keyPattern: ENV_NAME,
      keyDescribe: 'a valid variable name (letters, digits, _; not starting with a digit)',
      description: 'environment variables of every task (at most 65536 bytes in all; Gantry sets PAYLOAD_FILE, CONFIG_FILE, TASK_ID, PROJECT_ID and CODE_NAME itself)',
      message: { type: '{field} must be an object of string values' },
    }),
    log_streams: OneOf(LOG_STREAMS, {
      description:
        "merged (the default for a new package): the task's stderr joins its stdout inside the container, so its log keeps the order lines were written in; separate: the two stay apart for ?stream=stderr, and lines of the two written within milliseconds may swap",
    }),
    category: Str(255, {
      nullable: true,
      pattern: `^$|${CODE_NAME}`,
      describe: 'at most 255 characters without control characters',
      description:
        'a category of your own for the queue services (GET .../load?job_type_category=, requeue-jobs); inherited by later uploads; null or "" clears it',
    }),
    ...HookFields,
  },
  { required: ['name'], what: 'code' },
);
/** The `data` part as it reaches the handler, typed and bounded by the schema. */
export type CodeInput = Static<typeof CodeData>;

const CodeProps = {
    id: Id(),
    project_id: Id(),
    name: Type.String(),
    created_at: DateTime(),
    rev: Type.Integer({ minimum: 1 }),
    latest_history_id: Id('the latest revision'),
    latest_change: DateTime(),
    latest_checksum: Type.String({ description: 'MD5 of the latest zip' }),
    image: Type.String(),
    stack: Type.String(),
    command: Type.String(),
    max_concurrency: Type.Integer({ minimum: 1 }),
    retries: Type.Integer({ minimum: 0 }),
    retries_delay: Type.Integer({ minimum: 0 }),
    priority: Type.Integer({ minimum: 0, maximum: 2 }),
    default_priority: Type.Integer({ minimum: 0, maximum: 2 }),
    config: Type.String(),
    env_vars: Type.Record(Type.String(), Type.String()),
    log_streams: OneOf(LOG_STREAMS),
    category: Type.String({ description: 'the queue services\' job type category, when set' }),
    file_name: Type.String(),
    code_size: Type.Integer({ minimum: 0 }),
    paused: Type.Boolean(),
    ...HookReplyProps,
};
const CODE_OPTIONAL: (keyof typeof CodeProps)[] = ['latest_checksum', 'stack', 'command', 'max_concurrency', 'config', 'category', 'file_name', 'code_size', 'webhooks', 'notify'];
const Code = Reply(CodeProps, CODE_OPTIONAL, { title: 'Code' });

const Revision = Reply(
  {
    id: Id(),
    code_id: Id(),
    project_id: Id(),
    name: Type.String(),
    rev: Type.Integer({ minimum: 1 }),
    created_at: DateTime(),
    updated_at: DateTime(),
    image: Type.String(),
    stack: Type.String(),
    command: Type.String(),
    checksum: Type.String(),
    code_size: Type.Integer({ minimum: 0 }),
    file_name: Type.String(),
    max_concurrency: Type.Integer({ minimum: 1 }),
    retries: Type.Integer({ minimum: 0 }),
    retries_delay: Type.Integer({ minimum: 0 }),
    priority: Type.Integer({ minimum: 0, maximum: 2 }),
    config: Type.String(),
    env_vars: Type.Record(Type.String(), Type.String()),
    log_streams: OneOf(LOG_STREAMS),
    category: Type.String(),
    ...HookReplyProps,
  },
  ['stack', 'command', 'checksum', 'code_size', 'file_name', 'max_concurrency', 'config', 'category', 'webhooks', 'notify'],
  { title: 'CodeRevision' },
);

const errors = {
  400: { description: 'invalid input: the message names the field and the limit', schema: ErrorBody },
  401: { description: 'no valid OAuth token', schema: ErrorBody },
  404: { description: 'no such project or code package', schema: ErrorBody },
};
const CodeParams = { ...ProjectParams, codeId: Id('the code package id') };

export const codeEndpoints = [
  endpoint({
    id: 'listCodes',
    method: 'GET',
    path: '/2/projects/:projectId/codes',
    tag: 'codes',
    summary: 'List code packages',
    auth: 'project',
    params: ProjectParams,
    query: PagingQuery,
    responses: { 200: { description: 'the code packages', schema: Type.Object({ codes: Type.Array(Code) }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'uploadCode',
    method: 'POST',
    path: '/2/projects/:projectId/codes',
    tag: 'codes',
    summary: 'Upload a code package (a new revision when the name exists)',
    auth: 'project',
    params: ProjectParams,
    query: AuthQuery,
    body: {
      kind: 'multipart',
      data: CodeData,
      description:
        'multipart/form-data: a `data` part with the JSON above (its own content type may be missing) and an optional `file` part with a zip archive (its name need not end in .zip)',
    },
    responses: {
      200: { description: 'the package as stored', schema: Reply({ msg: Type.String(), ...CodeProps }, CODE_OPTIONAL) },
      413: { description: 'the upload is larger than the limit', schema: ErrorBody },
      ...errors,
    },
  }),
  endpoint({
    id: 'getCode',
    method: 'GET',
    path: '/2/projects/:projectId/codes/:codeId',
    tag: 'codes',
    summary: 'Get a code package',
    auth: 'project',
    params: CodeParams,
    query: AuthQuery,
    responses: { 200: { description: 'the code package', schema: Code }, ...errors },
  }),
  endpoint({
    id: 'deleteCode',
    method: 'DELETE',
    path: '/2/projects/:projectId/codes/:codeId',
    tag: 'codes',
    summary: 'Delete a code package',
    auth: 'project',
    params: CodeParams,
    query: AuthQuery,
    responses: { 200: { description: 'deleted', schema: MsgBody }, ...errors },
  }),
  endpoint({
    id: 'downloadCode',
    method: 'GET',
    path: '/2/projects/:projectId/codes/:codeId/download',
    tag: 'codes',
    summary: "Download a revision's zip",
    auth: 'project',
    params: CodeParams,
    query: Obj({ revision: Int(1, 2 ** 31 - 1, { description: 'the revision (default: the latest)' }), ...OAuthQuery }),
    responses: { 200: { description: 'the zip archive', text: 'application/zip' }, ...errors },
  }),
  endpoint({
    id: 'listCodeRevisions',
    method: 'GET',
    path: '/2/projects/:projectId/codes/:codeId/revisions',
    tag: 'codes',
    summary: "List a code package's revisions",
    auth: 'project',
    params: CodeParams,
    query: PagingQuery,
    responses: { 200: { description: 'the revisions, newest first', schema: Type.Object({ revisions: Type.Array(Revision) }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'getCodeStats',
    method: 'GET',
    path: '/2/projects/:projectId/codes/:codeId/stats',
    tag: 'codes',
    summary: "Counts of a code package's tasks by status, over a window (default: the last 24 hours)",
    auth: 'project',
    params: CodeParams,
    query: Obj({ start_date: Time(), end_date: Time(), ...OAuthQuery }),
    responses: {
      200: {
        description: 'tasks by status',
        schema: Type.Object(Object.fromEntries(TASK_STATUSES.map((s) => [s, Type.Integer({ minimum: 0 })])), { additionalProperties: false }),
      },
      ...errors,
    },
  }),
  ...(['pause', 'resume'] as const).map((verb) =>
    endpoint({
      id: `${verb}CodeQueue`,
      method: 'POST',
      path: `/2/projects/:projectId/codes/:codeId/${verb}_task_queue`,
      tag: 'codes',
      summary: verb === 'pause' ? "Pause a code package's queue (running tasks go on)" : "Resume a code package's queue",
      auth: 'project',
      params: CodeParams,
      query: AuthQuery,
      responses: { 200: { description: verb === 'pause' ? 'paused' : 'resumed', schema: MsgBody }, ...errors },
    }),
  ),
];

