import { Type } from '@sinclair/typebox';
import { AuthQuery, ProjectParams, projectErrors } from './common.ts';
import { endpoint } from './endpoint.ts';
import { DateTime, ErrorBody, Id, Obj, OneOf, Reply, Str } from './kit.ts';

/** A Standard Webhooks secret: whsec_ and the base64 of 24 to 64 bytes. */
export const SIGNING_SECRET = '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$';

const Attempt = Reply(
  {
    n: Type.Integer({ minimum: 1, description: 'the attempt number' }),
    at: DateTime('when it was made'),
    status_code: Type.Integer({ description: "the receiver's HTTP status, or the SMTP server's reply code" }),
    error: Type.String({ description: 'why it failed' }),
    latency_ms: Type.Integer({ minimum: 0 }),
    response: Type.String({ description: "the start of the receiver's answer (at most 512 bytes)" }),
  },
  ['status_code', 'error', 'response'],
  { title: 'DeliveryAttempt' },
);

const Delivery = Reply(
  {
    id: Type.String({ description: 'the idempotency key every attempt carries (webhook-id; the e-mail\'s Message-ID)' }),
    task_id: Id(),
    kind: OneOf(['webhook', 'email'] as const),
    url: Type.String({ description: 'a webhook\'s receiver' }),
    address: Type.String({ description: "an e-mail's recipient" }),
    events: Type.Array(OneOf(['succeeds', 'fails', 'finishes'] as const), { description: 'the lists that named the receiver' }),
    status: Type.String({ description: 'the task status it tells of' }),
    state: OneOf(['pending', 'delivered', 'failed'] as const, { describe: 'pending (being tried), delivered, or failed (given up)' }),
    attempts: Type.Array(Attempt),
    created_at: DateTime(),
    next_attempt_at: DateTime('when a pending delivery is tried next'),
    delivered_at: DateTime(),
    error: Type.String({ description: 'why the last attempt failed' }),
  },
  ['url', 'address', 'next_attempt_at', 'delivered_at', 'error'],
  { title: 'Delivery' },
);

const SecretInfo = Reply(
  {
    set: Type.Boolean({ description: 'whether the project has a signing secret' }),
    rotated_at: DateTime(),
    previous_valid_until: DateTime('until when the previous secret still signs, beside the current one'),
  },
  ['rotated_at', 'previous_valid_until'],
  { title: 'SigningSecretInfo' },
);

const errors = projectErrors('project, task or delivery');
const TaskParams = { ...ProjectParams, taskId: Id('the task id') };

export const deliveryEndpoints = [
  endpoint({
    id: 'listTaskDeliveries',
    method: 'GET',
    path: '/2/projects/:projectId/tasks/:taskId/deliveries',
    tag: 'tasks',
    summary: "The outcome webhooks and e-mails of a task, each with its attempts",
    auth: 'project',
    params: TaskParams,
    query: AuthQuery,
    responses: { 200: { description: 'the deliveries', schema: Type.Object({ deliveries: Type.Array(Delivery) }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'redeliver',
    method: 'POST',
    path: '/2/projects/:projectId/tasks/:taskId/deliveries/:deliveryId/redeliver',
    tag: 'tasks',
    summary: 'Send a delivery again now, under the same id, with a new retry window (a receiver that handled it may drop it by its id)',
    auth: 'project',
    params: { ...TaskParams, deliveryId: Type.String({ pattern: '^[0-9a-f]{24}$', description: 'the delivery id' }) },
    query: AuthQuery,
    responses: {
      200: { description: 'queued to be sent again', schema: Delivery },
      ...errors,
      409: { description: 'an attempt of it is in flight', schema: ErrorBody },
    },
  }),
  endpoint({
    id: 'getSigningSecret',
    method: 'GET',
    path: '/2/projects/:projectId/webhook_secret',
    tag: 'tasks',
    summary: "Whether the project's webhook signing secret is set, and when it was rotated (the secret itself is never shown again)",
    auth: 'project',
    params: ProjectParams,
    query: AuthQuery,
    responses: { 200: { description: 'the secret\'s state', schema: SecretInfo }, ...errors },
  }),
  endpoint({
    id: 'rotateSigningSecret',
    method: 'POST',
    path: '/2/projects/:projectId/webhook_secret',
    tag: 'tasks',
    summary: "Make (or rotate) the project's webhook signing secret; the previous one keeps signing beside it for GANTRY_WEBHOOK_SECRET_OVERLAP_S (a day by default)",
    description:
      'Deliveries carry webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>"> per secret, as the Standard Webhooks specification defines, so its libraries verify them. The secret is in the reply once and never again.',
    auth: 'project',
    params: ProjectParams,
    query: AuthQuery,
    body: {
      kind: 'json',
      schema: Obj(
        { secret: Str(100, { pattern: SIGNING_SECRET, describe: 'whsec_ and the base64 of 24 to 64 random bytes', description: 'a secret of your own (default: a new random one)' }) },
        { additional: false },
      ),
    },
    responses: {
      200: {
        description: 'the new secret, shown this once',
        schema: Reply(
          { msg: Type.String(), secret: Type.String(), rotated_at: DateTime(), previous_valid_until: DateTime() },
          ['previous_valid_until'],
        ),
      },
      ...errors,
    },
  }),
];
