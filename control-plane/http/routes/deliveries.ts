import Router from '@koa/router';
import { HttpError, badRequest, notFound } from '../../errors.ts';
import type { Delivery, DeliveryAttempt } from '../../store/deliveries.ts';
import { newSigningSecret, signingKey } from '../../outbox/webhook-send.ts';
import { requireProject } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { clean, type Json } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { loadTask } from './tasks.ts';

function presentDelivery(d: Delivery & { history?: DeliveryAttempt[] }): Json {
  return clean({
    id: d.id,
    task_id: d.taskId,
    kind: d.kind,
    [d.kind === 'webhook' ? 'url' : 'address']: d.target,
    events: d.events,
    status: d.status,
    state: d.state,
    attempts: (d.history ?? []).map((a) =>
      clean({ n: a.n, at: a.at, status_code: a.statusCode, error: a.error, latency_ms: a.latencyMs, response: a.response }),
    ),
    created_at: d.createdAt,
    next_attempt_at: d.state === 'pending' ? d.nextAt : undefined,
    delivered_at: d.deliveredAt,
    error: d.state === 'delivered' ? undefined : d.lastError,
  });
}

/** A task's outcome deliveries, redelivery, and the project's signing secret. */
export function deliveriesRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  r.get('/projects/:projectId/tasks/:taskId/deliveries', requireProject, validated(ep('listTaskDeliveries')), async (ctx) => {
    const task = await loadTask(ctx);
    ctx.body = { deliveries: (await ctx.state.deps.store.deliveries.forTask(task.projectId, task.id)).map(presentDelivery) };
  });

  r.post('/projects/:projectId/tasks/:taskId/deliveries/:deliveryId/redeliver', requireProject, validated(ep('redeliver')), async (ctx) => {
    const task = await loadTask(ctx);
    const id = ctx.params.deliveryId ?? '';
    const store = ctx.state.deps.store.deliveries;
    const before = (await store.forTask(task.projectId, task.id)).find((d) => d.id === id);
    if (!before) throw notFound(`Delivery not found: task ${task.id} has no delivery ${id}`);
    const d = await store.redeliver(task.projectId, task.id, id);
    if (!d) throw notFound(`Delivery not found: task ${task.id} has no delivery ${id}`);
    if (d.state === 'pending' && d.inFlight && d.nextAt > ctx.state.deps.clock.now()) {
      throw new HttpError(409, `Delivery ${id} is being attempted now; ask again when this attempt has ended`, { code: 'conflict' });
    }
    ctx.state.log.info({ taskId: task.id, delivery: id }, 'redelivery requested');
    ctx.body = presentDelivery({ ...d, history: before.history });
  });

  r.get('/projects/:projectId/webhook_secret', requireProject, validated(ep('getSigningSecret')), async (ctx) => {
    const s = await ctx.state.deps.store.deliveries.signingSecrets(ctx.state.projectId!);
    ctx.body = s ? clean({ set: true, rotated_at: s.rotatedAt, previous_valid_until: s.previousUntil }) : { set: false };
  });

  r.post('/projects/:projectId/webhook_secret', requireProject, validated(ep('rotateSigningSecret')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const given = ctx.state.body!.secret as string | undefined;
    if (given !== undefined) {
      try {
        signingKey(given);
      } catch (err) {
        // The message names the rule, never the secret.
        throw badRequest(`secret: ${(err as Error).message}`);
      }
    }
    const secret = given ?? newSigningSecret();
    const had = await deps.store.deliveries.hasSigningSecret(projectId!);
    const s = await deps.store.deliveries.rotateSigningSecret(projectId!, secret, had ? deps.config.deliveries.secretOverlapS : 0);
    // The secret itself is never logged.
    ctx.state.log.info({ projectId, rotated: had }, had ? 'webhook signing secret rotated' : 'webhook signing secret made');
    ctx.body = clean({
      msg: had
        ? 'Signing secret rotated: deliveries carry a signature by each secret until previous_valid_until; this reply is the only time the secret is shown'
        : 'Signing secret made: this reply is the only time it is shown',
      secret,
      rotated_at: s.rotatedAt,
      previous_valid_until: s.previousUntil,
    });
  });

  return r;
}
