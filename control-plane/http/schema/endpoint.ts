import type { Middleware } from 'koa';
import type { IncomingHttpHeaders } from 'node:http';
import type { TSchema } from '@sinclair/typebox';
import { readJsonObject, readRaw } from '../body.ts';
import type { ApiState } from '../state.ts';
import { check } from './validator.ts';

/**
 * One endpoint of the API, declared once: the router validates requests with it
 * (`validated`) and the OpenAPI document (schema/openapi.ts) is made from the same
 * declarations, so the two cannot disagree.
 */
export interface Endpoint {
  /** The OpenAPI operationId. */
  readonly id: string;
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** The path as the router writes it (`/2/projects/:projectId/tasks`). */
  readonly path: string;
  readonly summary: string;
  readonly description?: string;
  readonly tag: string;
  /**
   * `user`: any valid token; `project`: a token of the project's owner; `runner`: a
   * cluster's id and runner token (third-party workers); `none`: no token.
   */
  readonly auth: 'none' | 'user' | 'project' | 'runner';
  /** Path parameters (documented; an id that names nothing answers 404, as IronWorker does). */
  readonly params?: Record<string, TSchema>;
  readonly query?: TSchema;
  readonly body?:
    | { readonly kind: 'json'; readonly schema: TSchema; readonly required?: boolean; readonly maxBytes?: (config: ApiState['deps']['config']) => number }
    | { readonly kind: 'multipart'; readonly data: TSchema; readonly description: string }
    | { readonly kind: 'raw'; readonly description: string };
  /**
   * Replies by status; `schema` for JSON, `text` for other media types (text/plain,
   * application/zip), `alsoText` for more media types the same reply may come as (a log as
   * text/event-stream when asked with Accept).
   */
  readonly responses: Readonly<Record<number, { readonly description: string; readonly schema?: TSchema; readonly text?: string; readonly alsoText?: readonly string[] }>>;
}

/** Declares an endpoint (an identity function, for type checking). */
export const endpoint = <E extends Endpoint>(e: E): E => e;

/**
 * Validates the query string and, for JSON endpoints, reads and validates the body; the
 * results are `ctx.state.query` and `ctx.state.body`. Runs after authentication. A request
 * without a body validates `{}` (so an endpoint whose fields are all optional needs none).
 *
 * An endpoint that takes no body still reads (and ignores) one that is sent, within the
 * JSON limit, before its handler runs: a request whose body never arrives whole is then
 * refused without having acted, instead of acting while the client is told 400.
 */
export function validated(ep: Endpoint): Middleware<ApiState> {
  return async (ctx, next) => {
    ctx.state.query = ep.query ? check(ep.query, { ...ctx.query }) : {};
    if (ep.body?.kind === 'json') {
      const limit = ep.body.maxBytes?.(ctx.state.deps.config) ?? ctx.state.deps.config.maxJsonBody;
      // No body at all reads as {} (a POST to retry, like one to cancel, needs none); a body
      // that is sent must say it is JSON.
      ctx.state.body = check(ep.body.schema, sendsBody(ctx.req.headers) ? await readJsonObject(ctx, limit) : {});
    } else if (!ep.body && sendsBody(ctx.req.headers)) {
      await readRaw(ctx, ctx.state.deps.config.maxJsonBody);
    }
    await next();
  };
}

function sendsBody(h: IncomingHttpHeaders): boolean {
  return h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
}
