import type { Context } from 'koa';
import getRawBody from 'raw-body';
import { Busboy } from '@fastify/busboy';
import { HttpError, badRequest } from '../errors.ts';

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

function tooLarge(limit: number) {
  return new HttpError(413, `Request body is larger than the limit of ${limit} bytes`, { code: 'too_large' });
}

/** The raw request body, at most `limit` bytes (413 above it). */
export async function readRaw(ctx: Context, limit: number): Promise<Buffer> {
  const declared = Number(ctx.get('Content-Length'));
  if (Number.isFinite(declared) && declared > limit) throw tooLarge(limit);
  try {
    return await getRawBody(ctx.req, { limit });
  } catch (err) {
    if ((err as { type?: string }).type === 'entity.too.large') throw tooLarge(limit);
    throw badRequest(`Could not read the request body: ${(err as Error).message}`);
  }
}

/**
 * A JSON object body. IronWorker answers 406 when `Content-Type: application/json` is
 * missing on endpoints that take JSON; an empty body reads as `{}`.
 */
export async function readJsonObject(ctx: Context, limit: number): Promise<Record<string, unknown>> {
  if (!JSON_TYPE.test(ctx.get('Content-Type'))) {
    throw new HttpError(406, 'Content-Type must be application/json', { code: 'not_acceptable' });
  }
  const raw = (await readRaw(ctx, limit)).toString('utf8');
  if (raw.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (err) {
    throw badRequest(`Request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badRequest('Request body must be a JSON object');
  return v as Record<string, unknown>;
}

export interface UploadForm {
  /** The `data` part, parsed. */
  data: Record<string, unknown>;
  /** The `file` part, if sent. */
  file?: { data: Buffer; fileName: string };
}

/**
 * The code upload form: a `data` part with JSON (which clients may send without a content
 * type of its own) and an optional `file` part with the zip (whose file name may lack
 * `.zip`, or be missing: the part named `file` is always read as bytes).
 */
export async function readUploadForm(ctx: Context, limit: number): Promise<UploadForm> {
  const ct = ctx.get('Content-Type');
  if (!/^multipart\/form-data/i.test(ct)) {
    throw badRequest('Content-Type must be multipart/form-data with a "data" part (and optionally a "file" part)');
  }
  const declared = Number(ctx.get('Content-Length'));
  if (Number.isFinite(declared) && declared > limit) throw tooLarge(limit);
  return new Promise<UploadForm>((resolve, reject) => {
    let bb: InstanceType<typeof Busboy>;
    try {
      bb = new Busboy({
        headers: { ...ctx.req.headers, 'content-type': ct },
        // files: 2 because some clients send the `data` part as a file (with a filename) too;
        // with 1, the zip after it was dropped without a word.
        limits: { fileSize: limit, files: 2, fields: 20, fieldSize: 1024 * 1024 },
        isPartAFile: (name, _type, fileName) => name === 'file' || fileName !== undefined,
      });
    } catch (err) {
      reject(badRequest(`Malformed multipart body: ${(err as Error).message}`));
      return;
    }
    let dataText: string | undefined;
    let file: UploadForm['file'];
    let failed: HttpError | undefined;
    const fail = (e: HttpError) => {
      failed ??= e;
    };
    bb.on('field', (name, value, _nt, valueTruncated) => {
      if (name !== 'data') return;
      if (valueTruncated) fail(new HttpError(413, 'The "data" part is larger than the limit of 1048576 bytes'));
      dataText = value;
    });
    bb.on('file', (name, stream, fileName) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('limit', () => fail(tooLarge(limit)));
      stream.on('end', () => {
        if (name === 'data') dataText = Buffer.concat(chunks).toString('utf8');
        else if (name === 'file') file = { data: Buffer.concat(chunks), fileName: fileName || 'code.zip' };
      });
    });
    bb.on('error', (err: Error) => reject(badRequest(`Malformed multipart body: ${err.message}`)));
    // A client gone mid-upload ends neither the pipe nor busboy: settle here, or the handler
    // (and every chunk read so far) waits forever.
    ctx.req.once('error', (err) => reject(badRequest(`Could not read the request body: ${err.message}`)));
    ctx.req.once('close', () => {
      if (!ctx.req.complete) reject(badRequest('The request was aborted before its body was complete'));
    });
    bb.on('finish', () => {
      if (failed) return reject(failed);
      if (dataText === undefined) return reject(badRequest('data: the multipart form needs a "data" part with JSON'));
      let data: unknown;
      try {
        data = JSON.parse(dataText);
      } catch (err) {
        return reject(badRequest(`data: not valid JSON: ${(err as Error).message}`));
      }
      if (typeof data !== 'object' || data === null || Array.isArray(data)) {
        return reject(badRequest('data: must be a JSON object'));
      }
      resolve({ data: data as Record<string, unknown>, ...(file ? { file } : {}) });
    });
    ctx.req.pipe(bb);
  });
}
