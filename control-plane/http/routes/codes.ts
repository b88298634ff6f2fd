import { createHash } from 'node:crypto';
import Router, { type RouterContext } from '@koa/router';
import { isId } from '../../../lib/ids.ts';
import { inspectZip, ZipRejectedError, type ZipLimits } from '../../../lib/zip.ts';
import { badRequest, notFound } from '../../errors.ts';
import type { CodeSettings } from '../../store/codes.ts';
import { requireProject } from '../auth.ts';
import { readUploadForm } from '../body.ts';
import { ep } from '../schema/index.ts';
import { CodeData, type CodeInput } from '../schema/codes.ts';
import { validated } from '../schema/endpoint.ts';
import { check } from '../schema/validator.ts';
import { presentCode, presentRevision } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { optTime, pagination } from '../validate.ts';
import { putOwn } from '../../../lib/record.ts';
import { HooksChecker } from '../hooks.ts';

/** Environment names Gantry sets itself; a code's env_vars may not replace them. */
export const RESERVED_ENV = ['PAYLOAD_FILE', 'CONFIG_FILE', 'TASK_ID', 'PROJECT_ID', 'CODE_NAME'];


/**
 * The `data` part of an upload as revision settings. The schema (CodeData) has typed and
 * bounded each field; what is checked here is what it cannot say: a name without
 * surrounding spaces, variables
 * Gantry sets itself, and the variables' total size.
 */
export function parseCodeData(d: CodeInput): { name: string; settings: CodeSettings } {
  const name = d.name!;
  if (name.trim() !== name) throw badRequest('name must be 1 to 255 characters without control characters or surrounding spaces');
  // Left out (or ""), the image is the previous revision's, like the other settings.
  const settings: CodeSettings = d.image ? { image: d.image } : {};
  if ('command' in d) settings.command = d.command ?? null;
  if ('config' in d) settings.config = d.config ?? null;
  if ('stack' in d) settings.stack = d.stack ?? null;
  // 0, -1 or null: no limit, as when omitted on IronWorker
  if ('max_concurrency' in d) settings.maxConcurrency = !d.max_concurrency || d.max_concurrency <= 0 ? null : d.max_concurrency;
  if ('retries' in d) settings.retries = d.retries ?? 0;
  if ('retries_delay' in d) settings.retriesDelay = d.retries_delay ?? 0;
  const prio = 'default_priority' in d ? d.default_priority : 'priority' in d ? d.priority : undefined;
  if (prio !== undefined) settings.defaultPriority = prio ?? 0;
  if (d.log_streams) settings.logStreams = d.log_streams;
  if ('category' in d) settings.category = d.category || null;
  if (d.env_vars) {
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(d.env_vars)) {
      if (RESERVED_ENV.includes(k)) throw badRequest(`env_vars: ${k} is set by Gantry and cannot be overridden`);
      putOwn(out, k, v);
    }
    const size = Buffer.byteLength(JSON.stringify(out));
    if (size > 65536) throw badRequest(`env_vars must be at most 65536 bytes in all, got ${size}`);
    settings.envVars = out;
  } else if ('env_vars' in d) {
    settings.envVars = {};
  }
  return { name, settings };
}

/**
 * `attachment; filename=<name>` as IronWorker sends it: a bare token when the name allows
 * (clients look for `filename=yourworker_rev.zip`), else a quoted ASCII fallback plus the
 * exact name as RFC 5987 `filename*` (RFC 6266: filename= is never percent-decoded).
 */
export function contentDisposition(fileName: string): string {
  if (/^[!#$&+.^_`|~0-9A-Za-z-]+$/.test(fileName)) return `attachment; filename=${fileName}`;
  const ascii = fileName.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  const ext = encodeURIComponent(fileName).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${ascii}"; filename*=UTF-8''${ext}`;
}

/**
 * A zip a runner can unpack, judged from its central directory: readable, every entry a
 * relative path inside the package, entries and unpacked size within the limits. A package
 * that cannot run is refused here, where its owner sees why, not later on a shared runner.
 */
async function checkZip(zip: Buffer, limits: ZipLimits): Promise<void> {
  try {
    await inspectZip(zip, limits);
  } catch (err) {
    if (err instanceof ZipRejectedError) throw badRequest(`file must be a zip archive a runner can unpack: ${err.message}`);
    throw err;
  }
}

export function codesRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  const loadCode = async (ctx: RouterContext<ApiState>) => {
    const id = ctx.params.codeId ?? '';
    const code = isId(id) ? await ctx.state.deps.store.codes.get(ctx.state.projectId!, id) : undefined;
    if (!code) throw notFound('Code package not found');
    return code;
  };

  r.get('/projects/:projectId/codes', requireProject, validated(ep('listCodes')), async (ctx) => {
    const codes = await ctx.state.deps.store.codes.list(ctx.state.projectId!, pagination(ctx.state.query!));
    ctx.body = { codes: codes.map(presentCode) };
  });

  r.post('/projects/:projectId/codes', requireProject, validated(ep('uploadCode')), async (ctx) => {
    const { config, store } = ctx.state.deps;
    const form = await readUploadForm(ctx, config.maxUploadBytes);
    const data = check<CodeInput>(CodeData, form.data);
    const { name, settings } = parseCodeData(data);
    Object.assign(settings, await new HooksChecker(ctx.state.deps, ctx.state.projectId!).accept(data, ''));
    let archive;
    if (form.file && form.file.data.length > 0) {
      await checkZip(form.file.data, config.zipLimits);
      archive = {
        data: form.file.data,
        fileName: form.file.fileName,
        checksum: createHash('md5').update(form.file.data).digest('hex'),
      };
    }
    const code = await store.codes.upload(ctx.state.projectId!, name, settings, archive);
    ctx.state.log.info({ codeId: code.id, codeName: name, rev: code.rev }, 'code package uploaded');
    ctx.body = { msg: 'Upload successful.', ...presentCode(code) };
  });

  r.get('/projects/:projectId/codes/:codeId', requireProject, validated(ep('getCode')), async (ctx) => {
    ctx.body = presentCode(await loadCode(ctx));
  });

  r.delete('/projects/:projectId/codes/:codeId', requireProject, validated(ep('deleteCode')), async (ctx) => {
    const code = await loadCode(ctx);
    if (!(await ctx.state.deps.store.codes.delete(ctx.state.projectId!, code.id))) throw notFound('Code package not found');
    ctx.body = { msg: 'Deleted' };
  });

  r.get('/projects/:projectId/codes/:codeId/download', requireProject, validated(ep('downloadCode')), async (ctx) => {
    const code = await loadCode(ctx);
    const rev = (ctx.state.query!.revision as number | undefined) ?? code.rev;
    const revision = await ctx.state.deps.store.codes.revision(code.id, rev);
    if (!revision) throw notFound(`Revision ${rev} of code package ${code.name} not found (latest is ${code.rev})`);
    const zip = await ctx.state.deps.store.codes.archive(revision.id);
    if (!zip) throw notFound(`Revision ${rev} of code package ${code.name} has no zip file: it runs the image ${revision.image}`);
    ctx.set('Content-Disposition', contentDisposition(`${code.name}_${rev}.zip`));
    ctx.type = 'application/zip';
    ctx.body = zip;
  });

  r.get('/projects/:projectId/codes/:codeId/revisions', requireProject, validated(ep('listCodeRevisions')), async (ctx) => {
    const code = await loadCode(ctx);
    const revs = await ctx.state.deps.store.codes.revisions(code.id, pagination(ctx.state.query!));
    ctx.body = { revisions: revs.map((x) => presentRevision(x, code.name)) };
  });

  r.get('/projects/:projectId/codes/:codeId/stats', requireProject, validated(ep('getCodeStats')), async (ctx) => {
    const code = await loadCode(ctx);
    const now = ctx.state.deps.clock.now();
    const q = ctx.state.query!;
    const endDate = optTime(q, 'end_date', 'end_date');
    const end = endDate ?? now;
    const start = optTime(q, 'start_date', 'start_date') ?? new Date(end.getTime() - 24 * 3600 * 1000);
    // Only two explicit bounds can contradict; a start_date alone after now is an empty window.
    if (endDate && start > endDate) throw badRequest('start_date must not be after end_date');
    ctx.body = await ctx.state.deps.store.codes.stats(code.id, start, new Date(end.getTime() + 1));
  });

  for (const [path, paused, msg, id] of [
    ['pause_task_queue', true, 'Paused', 'pauseCodeQueue'],
    ['resume_task_queue', false, 'Resumed', 'resumeCodeQueue'],
  ] as const) {
    r.post(`/projects/:projectId/codes/:codeId/${path}`, requireProject, validated(ep(id)), async (ctx) => {
      const code = await loadCode(ctx);
      if (!(await ctx.state.deps.store.codes.setPaused(ctx.state.projectId!, code.id, paused))) {
        throw notFound('Code package not found');
      }
      if (!paused) ctx.state.deps.hub.tasksReady('*');
      ctx.body = { msg };
    });
  }
  return r;
}

