import { createHash } from 'node:crypto';
import Router, { type RouterContext } from '@koa/router';
import { isId } from '../../../lib/ids.ts';
import { inspectZip, ZipRejectedError, type ZipLimits } from '../../../lib/zip.ts';
import { badRequest, notFound } from '../../errors.ts';
import type { CodeSettings } from '../../store/codes.ts';
import { requireProject } from '../auth.ts';
import { readUploadForm } from '../body.ts';
import { ep } from '../schema/index.ts';
import { CodeData } from '../schema/codes.ts';
import { validated } from '../schema/endpoint.ts';
import { check } from '../schema/validator.ts';
import { presentCode, presentRevision } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { optInt, optString, optTime, pagination, reqString, type Obj } from '../validate.ts';
import { putOwn } from '../../../lib/record.ts';

/** Environment names Gantry sets itself; a code's env_vars may not replace them. */
export const RESERVED_ENV = ['PAYLOAD_FILE', 'CONFIG_FILE', 'TASK_ID', 'PROJECT_ID', 'CODE_NAME'];

// Docker's reference grammar: [registry[:port]/]path[:tag][@digest]
const IMAGE_REF =
  /^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;
const CODE_NAME = /^[^\x00-\x1f\x7f]{1,255}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,254}$/;

/** Validates the `data` part of an upload into revision settings. */
export function parseCodeData(d: Obj): { name: string; settings: CodeSettings } {
  const name = reqString(d, 'name', 'name', 255);
  if (!CODE_NAME.test(name) || name.trim() !== name) {
    throw badRequest('name must be 1 to 255 characters without control characters or surrounding spaces');
  }
  const image = optString(d, 'image', 'image', 255);
  if (!image) {
    throw badRequest('image is required: the Docker image the code runs in (stacks are deprecated and not supported)');
  }
  if (!IMAGE_REF.test(image)) throw badRequest(`image must be a Docker image reference like "busybox" or "iron/node:4", got ${JSON.stringify(image)}`);
  const settings: CodeSettings = { image };
  if ('command' in d) settings.command = optString(d, 'command', 'command', 8192) ?? null;
  if ('config' in d) settings.config = optString(d, 'config', 'config', 65536) ?? null;
  if ('stack' in d) settings.stack = optString(d, 'stack', 'stack', 64) ?? null;
  if ('max_concurrency' in d) {
    const mc = optInt(d, 'max_concurrency', 'max_concurrency', -1, 100000);
    // 0, -1 or null: no limit, as when omitted on IronWorker
    settings.max_concurrency = mc === undefined || mc <= 0 ? null : mc;
  }
  if ('retries' in d) settings.retries = optInt(d, 'retries', 'retries', 0, 10) ?? 0;
  if ('retries_delay' in d) settings.retries_delay = optInt(d, 'retries_delay', 'retries_delay', 0, 604800) ?? 0;
  const prio = 'default_priority' in d ? 'default_priority' : 'priority' in d ? 'priority' : undefined;
  if (prio) settings.default_priority = optInt(d, prio, prio, 0, 2) ?? 0;
  if ('env_vars' in d && d.env_vars !== null) {
    const ev = d.env_vars;
    if (typeof ev !== 'object' || Array.isArray(ev)) throw badRequest('env_vars must be an object of string values');
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(ev as Obj)) {
      if (!ENV_NAME.test(k)) throw badRequest(`env_vars: ${JSON.stringify(k)} is not a valid variable name (letters, digits, _; not starting with a digit)`);
      if (RESERVED_ENV.includes(k)) throw badRequest(`env_vars: ${k} is set by Gantry and cannot be overridden`);
      if (typeof v !== 'string') throw badRequest(`env_vars.${k} must be a string`);
      putOwn(out, k, v);
    }
    const size = Buffer.byteLength(JSON.stringify(out));
    if (size > 65536) throw badRequest(`env_vars must be at most 65536 bytes in all, got ${size}`);
    settings.env_vars = out;
  } else if ('env_vars' in d) {
    settings.env_vars = {};
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
    const { name, settings } = parseCodeData(check(CodeData, form.data));
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
    ctx.state.log.info({ codeId: code.id, name, rev: code.rev }, 'code package uploaded');
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
    const rev = optInt(ctx.state.query!, 'revision', 'revision', 1, 2 ** 31 - 1) ?? code.rev;
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

