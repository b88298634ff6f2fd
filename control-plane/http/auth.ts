import type { Middleware } from 'koa';
import { isId } from '../../lib/ids.ts';
import { HttpError, badRequest, notFound } from '../errors.ts';
import type { ApiState } from './state.ts';

/** `Authorization: OAuth <token>` (that exact case, as IronWorker requires) or `?oauth=<token>`. */
function tokenOf(header: string, query: unknown): string | undefined {
  const m = /^OAuth\s+(\S+)\s*$/.exec(header);
  if (m) return m[1];
  const q = Array.isArray(query) ? query[0] : query;
  return typeof q === 'string' && q !== '' ? q : undefined;
}

/** Requires a valid token; sets `ctx.state.userId`. */
export const requireUser: Middleware<ApiState> = async (ctx, next) => {
  // Node keeps the first of two Authorization headers, a proxy in front may keep the last:
  // which user a request is would depend on who reads it. Refuse the ambiguity.
  const sent = ctx.req.headersDistinct.authorization?.length ?? 0;
  if (sent > 1) throw badRequest(`Send one Authorization header; this request has ${sent}`);
  const token = tokenOf(ctx.get('Authorization'), ctx.query.oauth);
  if (!token) {
    throw new HttpError(401, 'Missing OAuth token: send "Authorization: OAuth <token>" or ?oauth=<token>', {
      code: 'unauthorized',
    });
  }
  const userId = await ctx.state.deps.store.accounts.authenticate(token);
  if (!userId) throw new HttpError(401, 'Invalid OAuth token', { code: 'unauthorized' });
  ctx.state.userId = userId;
  await next();
};

/**
 * Whether the request's user is an operator (an e-mail in GANTRY_OPERATORS): operators see
 * every cluster and its runners, not only their own and those shared to them.
 */
export async function isOperator(ctx: { state: ApiState }): Promise<boolean> {
  const { store, config } = ctx.state.deps;
  if (config.operators.length === 0) return false;
  const email = (await store.accounts.findUser(ctx.state.userId!))?.email.toLowerCase();
  return email !== undefined && config.operators.includes(email);
}

/**
 * Requires a token whose user owns the project in the path; sets `ctx.state.projectId`.
 * Another user's project answers 404, exactly like one that does not exist.
 */
export const requireProject: Middleware<ApiState> = async (ctx, next) => {
  await requireUser(ctx, async () => {
    const projectId = (ctx.params as Record<string, string>).projectId ?? '';
    const project = isId(projectId)
      ? await ctx.state.deps.store.accounts.projectOfUser(projectId, ctx.state.userId!)
      : undefined;
    if (!project) throw notFound('Project not found');
    ctx.state.projectId = project.id;
    await next();
  });
};
