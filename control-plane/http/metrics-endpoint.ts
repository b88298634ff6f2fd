import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type Koa from 'koa';
import type { ControlPlaneMetrics } from '../metrics.ts';
import { HttpError } from '../errors.ts';
import { answerClientErrors } from './client-error.ts';
import type { ApiState } from './state.ts';

const UNAUTHORIZED = 'Unauthorized: /metrics needs "Authorization: Bearer <GANTRY_METRICS_TOKEN>"';

/**
 * Whether an Authorization header carries the metrics token. Both sides are hashed first, so
 * the comparison is constant-time whatever the header's length (timingSafeEqual needs equal lengths).
 */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(m?.[1] ?? ''), digest(token));
}

/** The 401 of a scrape without the token (the API's `{"msg"}` body). */
export function metricsUnauthorized(): HttpError {
  return new HttpError(401, UNAUTHORIZED, { code: 'unauthorized', headers: { 'WWW-Authenticate': 'Bearer realm="metrics"' } });
}

/**
 * Counts every REST request by the route pattern that served it (`/2/projects/:projectId/tasks`,
 * never the raw path, so ids never become label values), method and final status. Outermost,
 * so it sees the status the error middleware settles on.
 */
export function requestMetrics(metrics: ControlPlaneMetrics): Koa.Middleware<ApiState> {
  return async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      const route = (ctx as unknown as { _matchedRoute?: string | RegExp })._matchedRoute;
      metrics.httpRequest(typeof route === 'string' ? route : 'unmatched', ctx.method, ctx.status, (performance.now() - started) / 1000);
    }
  };
}

export interface MetricsServer {
  readonly url: string;
  close(): Promise<void>;
}

/**
 * `/metrics` on its own listener (GANTRY_METRICS_HOST/PORT), so the API's port need not be
 * reachable by the scraper nor the metrics by the API's clients. Same token rule, same
 * `{"msg"}` error bodies; any other path is 404.
 */
export async function startMetricsServer(
  metrics: ControlPlaneMetrics,
  o: { host: string; port: number; token: string | undefined },
): Promise<MetricsServer> {
  const answer = (res: http.ServerResponse, status: number, msg: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', ...headers });
    res.end(JSON.stringify({ msg }));
  };
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') return answer(res, 404, `Not found: ${req.method} ${path}`);
    if (req.method !== 'GET' && req.method !== 'HEAD') return answer(res, 405, 'Method not allowed on this endpoint', { Allow: 'GET, HEAD' });
    if (o.token !== undefined && !bearerMatches(req.headers.authorization, o.token)) {
      return answer(res, 401, UNAUTHORIZED, { 'WWW-Authenticate': 'Bearer realm="metrics"' });
    }
    metrics.registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: Error) => answer(res, 503, `Metrics cannot be read right now: ${err.message}`),
    );
  });
  server.keepAliveTimeout = 5000;
  answerClientErrors(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 2000).unref();
      }),
  };
}
