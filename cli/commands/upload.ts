/**
 * `gantry upload [PATH]`: a code package from an image and a command, optionally with a zip
 * (a zip file as is, or a directory zipped here). Each upload is a new revision; settings
 * left out keep the previous revision's values (README.md, "Using it").
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.ts';
import { CliUsageError } from '../errors.ts';
import { zipDirectory } from '../zip-dir.ts';
import type { FormPart } from '../api.ts';

/** `gantry upload`'s flags, as commander names them (`configFile` holds the file's text). */
export interface UploadOptions {
  name?: string;
  image?: string;
  command?: string;
  /** The text of --config-file. */
  configFile?: string;
  maxConcurrency?: number;
  retries?: number;
  retriesDelay?: number;
  priority?: number;
  env?: Record<string, string>;
}

/** POST .../codes: `data` from the flags, `file` the zip of `target` when there is one. */
export async function upload(ctx: Context, target: string | undefined, o: UploadOptions): Promise<void> {
  const api = ctx.api();
  let file: { data: Buffer; name: string } | undefined;
  let name = o.name;
  if (target !== undefined) {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(target);
    } catch {
      throw new CliUsageError(`${target} does not exist`, { hint: 'give a directory or a .zip file to upload, or leave it out for an image-only package' });
    }
    const base = path.basename(path.resolve(target));
    if (stat.isDirectory()) {
      const { zip, entries } = await zipDirectory(target);
      ctx.progress(`zipped ${target}: ${entries} entries, ${zip.length} bytes`);
      file = { data: zip, name: `${base}.zip` };
      name ??= base;
    } else {
      const data = fs.readFileSync(target);
      if (data.length < 4 || (data.readUInt32LE(0) !== 0x04034b50 && data.readUInt32LE(0) !== 0x06054b50)) {
        throw new CliUsageError(`${target} is not a zip file`, { hint: 'give a directory (it is zipped for you) or a .zip file' });
      }
      file = { data, name: base };
      name ??= base.replace(/\.zip$/i, '');
    }
  }
  if (!name) throw new CliUsageError('gantry upload needs --name (or a directory or zip to name it after)', { hint: 'gantry upload --name hello --image busybox --command "echo hi"' });
  const data: Record<string, unknown> = { name };
  if (o.image !== undefined) data.image = o.image;
  if (o.command !== undefined) data.command = o.command;
  if (o.configFile !== undefined) data.config = o.configFile;
  if (o.maxConcurrency !== undefined) data.max_concurrency = o.maxConcurrency;
  if (o.retries !== undefined) data.retries = o.retries;
  if (o.retriesDelay !== undefined) data.retries_delay = o.retriesDelay;
  if (o.priority !== undefined) data.default_priority = o.priority;
  if (o.env !== undefined) data.env_vars = o.env;
  const parts: FormPart[] = [{ name: 'data', data: JSON.stringify(data), contentType: 'application/json' }];
  if (file) parts.push({ name: 'file', data: file.data, contentType: 'application/zip', fileName: file.name });

  // A bar of the bytes sent, on a terminal only; cli-progress is loaded only then.
  let bar: { start(total: number, at: number): void; update(n: number): void; stop(): void } | undefined;
  if (file && ctx.io.stderr.isTTY && !ctx.json) {
    const { SingleBar, Presets } = (await import('cli-progress')).default;
    bar = new SingleBar({ stream: ctx.io.stderr as NodeJS.WritableStream, format: 'uploading {bar} {percentage}% | {value}/{total} bytes', hideCursor: true }, Presets.shades_classic);
  }
  let started = false;
  const reply = await (async () => {
    try {
      return await api.upload(api.project('/codes'), parts, (sent, total) => {
        if (!bar) return;
        if (!started) bar.start(total, 0);
        started = true;
        bar.update(sent);
      });
    } finally {
      if (started) bar?.stop();
    }
  })();
  if (ctx.json) return ctx.printJson(reply.text);
  const c = reply.body;
  ctx.print(`uploaded ${c.name}: revision ${c.rev}, id ${c.id}, image ${c.image}${c.command ? `, command ${JSON.stringify(c.command)}` : ''}${c.code_size ? `, zip ${c.code_size} bytes` : ''}`);
}
