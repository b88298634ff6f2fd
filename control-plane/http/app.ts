import Koa from 'koa';
import Router from '@koa/router';
import { newId } from '../../lib/ids.ts';
import { GantryError } from '../../lib/errors.ts';
import { HttpError, STATUS_OF_KIND, StoreUnavailableError, badRequest, notFound } from '../errors.ts';
import { requireUser } from './auth.ts';
import { checkRequestText } from './text.ts';
import { validated } from './schema/endpoint.ts';
import { ep } from './schema/index.ts';
import { openApiDocument } from './schema/openapi.ts';
import { bearerMatches, metricsUnauthorized, requestMetrics } from './metrics-endpoint.ts';
import { clustersRouter } from './routes/clusters.ts';
import { codesRouter } from './routes/codes.ts';
import { executionsRouter } from './routes/executions.ts';
import { deliveriesRouter } from './routes/deliveries.ts';
import { schedulesRouter } from './routes/schedules.ts';
import { queueRouter } from './routes/queue.ts';
import { tasksRouter } from './routes/tasks.ts';
import { workersRouter } from './routes/workers.ts';
import { ROUTER_OPTIONS, type ApiDeps, type ApiState } from './state.ts';
import { settledWithin } from '../../lib/deadline.ts';
import { presentFarm } from './present.ts';
import { serveDashboard } from './dashboard.ts';

/**
 * The one answer to every error: `{"msg": message}` with the status of its kind
 * (STATUS_OF_KIND). Errors that are not ours are bugs: 500 naming the request id, the error
 * in the log. A 4xx from a library (a `status` of its own) is passed on as it said.
 */
function answerError(ctx: Koa.ParameterizedContext<ApiState>, err: unknown): void {
  if (err instanceof GantryError && err.kind !== 'internal') {
    ctx.status = err instanceof HttpError ? err.status : STATUS_OF_KIND[err.kind];
    if (err instanceof HttpError) ctx.set(err.headers);
    if (err.kind === 'unavailable') {
      ctx.set('Retry-After', String(ctx.state.deps.config.retryAfterSeconds));
      const store = err instanceof StoreUnavailableError;
      ctx.body = { msg: store ? 'Service unavailable: the database cannot be reached right now; retry with backoff' : err.message };
      ctx.state.log.warn({ err: err.message }, store ? 'database unavailable' : 'dependency unavailable');
      return;
    }
    ctx.body = { msg: err.message };
    if (err.kind === 'misconfigured') ctx.state.log.error({ err }, 'this server is misconfigured');
    return;
  }
  const status = (err as { status?: number }).status;
  if (!(err instanceof GantryError) && typeof status === 'number' && status >= 400 && status < 500) {
    ctx.status = status;
    ctx.body = { msg: (err as Error).message };
    return;
  }
  ctx.status = 500;
  ctx.body = { msg: `Internal server error (request ${ctx.state.reqId})` };
  ctx.state.log.error({ err }, 'unhandled error');
}

/** The IronWorker v2 REST API under `/2/`, plus `/healthz`, `/readyz` and `/healthcheck`. */
export function createApp(deps: ApiDeps): Koa<ApiState> {
  const app = new Koa<ApiState>();
  app.proxy = true;

  if (deps.metrics) app.use(requestMetrics(deps.metrics));
  // The one error middleware: every error body is {"msg": "..."}.
  app.use(async (ctx, next) => {
    ctx.state.deps = deps;
    ctx.state.reqId = newId();
    ctx.state.log = deps.log.child({ reqId: ctx.state.reqId });
    ctx.set('X-Request-Id', ctx.state.reqId);
    const started = performance.now();
    try {
      if (ctx.req.httpVersion === '1.1' && !ctx.get('Host')) throw badRequest('HTTP/1.1 requests need a Host header');
      checkRequestText(ctx.query);
      await next();
      if (ctx.status === 404 && ctx.body === undefined) throw notFound(`Not found: ${ctx.method} ${ctx.path}`);
      // The router's bodyless 405 (or 501 for a method it knows nothing of), with its Allow;
      // a path no route has is 404 whatever the method.
      if ((ctx.status === 405 || ctx.status === 501) && ctx.body === undefined) {
        const allow = ctx.response.get('Allow');
        if (!allow) {
          ctx.remove('Allow');
          throw notFound(`Not found: ${ctx.method} ${ctx.path}`);
        }
        throw new HttpError(405, 'Method not allowed on this endpoint', { code: 'method_not_allowed', headers: { Allow: allow } });
      }
    } catch (err) {
      answerError(ctx, err);
    }
    ctx.state.log.debug(
      { method: ctx.method, path: ctx.path, status: ctx.status, ms: Math.round(performance.now() - started) },
      'request',
    );
  });

  // The web dashboard's built files at `/` and `/assets/...`; every other request goes on to the API.
  app.use(serveDashboard());
  // Not thrown: the router then sets Allow, which a 405 must carry (RFC 9110 15.5.6); the
  // error middleware above turns its bodyless 405/501 into the JSON 405.
  for (const r of apiRouters(deps)) {
    app.use(r.routes());
    app.use(r.allowedMethods());
  }
  app.on('error', (err) => deps.log.debug({ err }, 'koa error event'));
  return app;
}

/** Every route of the API: `/healthz`, `/readyz`, `/healthcheck`, `/metrics`, and `/2/…` (each declared in schema/). */
export function apiRouters(deps: ApiDeps): Router<ApiState>[] {
  const root = new Router<ApiState>(ROUTER_OPTIONS);
  root.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok' };
  });
  // Served here unless GANTRY_METRICS_PORT gives it a listener of its own; GANTRY_METRICS_TOKEN guards it either way.
  root.get('/metrics', async (ctx) => {
    if (!deps.metrics || deps.config.metricsPort !== undefined) throw notFound('Not found: /metrics is not served on this port');
    const token = deps.config.metricsToken;
    if (token !== undefined && !bearerMatches(ctx.get('Authorization'), token)) throw metricsUnauthorized();
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await deps.metrics.registry.metrics();
  });
  // Ready = PostgreSQL reachable, coordinator healthy, a leader known, and not draining.
  // The body says which part failed; the REST API itself keeps serving from PostgreSQL
  // while the coordinator is away.
  root.get('/readyz', async (ctx) => {
    const db = await deps.store.db.ping();
    const coord = deps.coordStatus?.();
    const draining = deps.draining?.() ?? false;
    const ready = db && (!coord || (coord.healthy && coord.leader !== undefined)) && !draining;
    ctx.status = ready ? 200 : 503;
    ctx.body = {
      ready,
      database: db ? 'ok' : 'unreachable',
      ...(coord
        ? {
            coordinator: { kind: coord.kind, status: coord.healthy ? 'ok' : 'unreachable' },
            leader: coord.leader ?? null,
            is_leader: coord.isLeader,
          }
        : {}),
      ...(draining ? { draining: true } : {}),
    };
  });

  // Each configured dependency asked now, each within the same bound, so a hung one makes
  // a 503 in time rather than a hung health check.
  const startedAt = Date.now();
  root.get('/healthcheck', async (ctx) => {
    const t0 = Date.now();
    const bound = deps.config.healthcheckTimeoutMs;
    const ask = (p: () => Promise<boolean>) => settledWithin(p().catch(() => false), bound);
    const coord = deps.coordStatus?.();
    const etcd = coord?.kind === 'etcd';
    const [postgres, etcdUp] = await Promise.all([ask(() => deps.store.db.ping()), etcd && deps.coordPing ? ask(deps.coordPing) : Promise.resolve(null)]);
    const database = deps.store.db.engine;
    const errors: string[] = [];
    if (postgres !== true) errors.push(`${database}: ${postgres === undefined ? `no answer within ${bound} ms` : 'unreachable'}`);
    if (etcd && etcdUp !== true) errors.push(`etcd: ${etcdUp === undefined ? `no answer within ${bound} ms` : 'unreachable'}`);
    ctx.status = errors.length === 0 ? 200 : 503;
    ctx.body = {
      errors,
      postgres: postgres === true,
      etcd: etcd ? etcdUp === true : null,
      database,
      leader: coord?.leader ?? null,
      is_leader: coord?.isLeader ?? false,
      replica: deps.config.serverId,
      draining: deps.draining?.() ?? false,
      uptime_s: Math.floor((Date.now() - startedAt) / 1000),
      checked_in_ms: Date.now() - t0,
    };
  });

  const v2 = new Router<ApiState>({ ...ROUTER_OPTIONS, prefix: '/2' });
  // Stacks are deprecated: Gantry runs Docker images, so the list is empty.
  v2.get('/stacks', requireUser, validated(ep('listStacks')), (ctx) => {
    ctx.body = [];
  });
  v2.get('/projects', requireUser, validated(ep('listProjects')), async (ctx) => {
    const projects = await deps.store.accounts.listProjects(ctx.state.userId!);
    ctx.body = { projects: projects.map((p) => ({ id: p.id, name: p.name, created_at: p.createdAt.toISOString() })) };
  });
  v2.get('/status', requireUser, validated(ep('getStatus')), async (ctx) => {
    ctx.body = presentFarm(await deps.store.status.farm({ userId: ctx.state.userId! }));
  });
  const document = JSON.stringify(openApiDocument());
  v2.get('/openapi.json', (ctx) => {
    ctx.type = 'application/json';
    ctx.body = document;
  });
  for (const r of [codesRouter(), tasksRouter(), executionsRouter(), deliveriesRouter(), schedulesRouter(), queueRouter()]) v2.use(r.routes());
  v2.use(clustersRouter().routes());
  v2.use(workersRouter().routes());
  return [root, v2];
}
