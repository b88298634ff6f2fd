/** `gantry login`: checks a token against the API, then writes it to iron.json (or ~/.iron.json). */
import { ApiClient } from '../api.ts';
import { apiBase, checkSettings, ironJsonPath, writeIronJson, type Protocol } from '../config.ts';
import type { Context } from '../context.ts';
import { ApiError, CliUsageError } from '../errors.ts';

/** `gantry login`'s own flag. */
export interface LoginOptions {
  global?: boolean;
}

/** Checks the settings with GET .../codes, then writes them; nothing is written when the check fails. */
export async function login(ctx: Context, o: LoginOptions): Promise<void> {
  const current = ctx.config();
  const settings = { host: current.host, port: String(current.port), protocol: current.protocol as string, project_id: current.projectId, token: current.token };
  // On a terminal, every setting not given as a flag is asked for, the current one its default.
  if (ctx.io.stdinIsTTY && ctx.io.stderr.isTTY) {
    const given = { host: ctx.flags.host, port: ctx.flags.port, protocol: ctx.flags.protocol, project_id: ctx.flags.projectId, token: ctx.flags.token };
    for (const key of ['host', 'port', 'protocol', 'project_id', 'token'] as const) {
      if (given[key] !== undefined) continue;
      const now = settings[key];
      const shown = now === undefined ? '' : key === 'token' ? ` [keep …${now.slice(-4)}]` : ` [${now}]`;
      const answer = (await ctx.io.ask(`${key}${shown}: `, { secret: key === 'token' })).trim();
      if (answer) settings[key] = answer;
    }
  }
  if (!settings.token) throw new CliUsageError('gantry login needs a token', { hint: 'pass --token TOKEN (an operator makes one with: gantry token create --user EMAIL)' });
  if (!settings.project_id) throw new CliUsageError('gantry login needs a project id', { hint: 'pass --project-id ID (an operator lists them with: gantry project list)' });
  // The answers go through the same checks as any other source.
  const checked = checkSettings(settings);
  const api = new ApiClient(checked, ctx.userAgent);
  let reply;
  try {
    reply = await api.request('GET', api.project('/codes'), { query: { per_page: 1 } });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      throw new ApiError(401, `the token was refused by ${apiBase(checked)}: ${err.msg}`, err.body, 'check the token (an operator makes one with: gantry token create --user EMAIL); nothing was written');
    }
    if (err instanceof ApiError && err.status === 404) {
      throw new ApiError(404, `no project ${settings.project_id} for this token at ${apiBase(checked)}: ${err.msg}`, err.body, 'check the project id (gantry project list); nothing was written');
    }
    throw err;
  }
  const file = ironJsonPath(ctx.places, Boolean(o.global));
  writeIronJson(file, {
    host: checked.host,
    port: checked.port,
    protocol: checked.protocol as Protocol,
    project_id: settings.project_id,
    token: settings.token,
  });
  if (ctx.json) ctx.printJson(reply.text);
  else ctx.print(`logged in to ${apiBase(checked)}, project ${settings.project_id}: wrote ${file}`);
}
