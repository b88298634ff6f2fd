import type { Context } from 'koa';
import getRawBody from 'raw-body';
import { Busboy } from '@fastify/busboy';
import { HttpError, badRequest } from '../errors.ts';
import { checkRequestText } from './text.ts';

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * JSON text, which is UTF-8 (RFC 8259 8.1). Bytes that are not UTF-8 are refused: read
 * leniently they would become U+FFFD and be stored changed without a word.
 */
function utf8Text(bytes: Buffer, what: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw badRequest(`${what} is not valid UTF-8`);
  }
}

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
  const raw = utf8Text(await readRaw(ctx, limit), 'Request body');
  if (raw.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (err) {
    throw badRequest(`Request body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badRequest('Request body must be a JSON object');
  checkRequestText(v);
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
        // The `data` part is always read as bytes (a file to busboy), so that text that is not
        // UTF-8 is refused rather than decoded into U+FFFD. files: 3 is `data`, the zip and one
        // more: with fewer, a zip after an extra part was dropped without a word.
        limits: { fileSize: limit, files: 3, fields: 20, fieldSize: 1024 * 1024 },
        isPartAFile: (name, _type, fileName) => name === 'file' || name === 'data' || fileName !== undefined,
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
    const DATA_LIMIT = 1024 * 1024;
    bb.on('file', (name, stream, fileName) => {
      const chunks: Buffer[] = [];
      let size = 0;
      // A body that ends inside a part makes the part's stream emit 'error' ("Part terminated
      // early"); an emitter's 'error' with no listener throws and would stop the process.
      stream.on('error', (err: Error) => settle(badRequest(`Malformed multipart body: ${err.message}`)));
      stream.on('data', (c: Buffer) => {
        size += c.length;
        if (name === 'data' && size > DATA_LIMIT) fail(new HttpError(413, `The "data" part is larger than the limit of ${DATA_LIMIT} bytes`));
        else chunks.push(c);
      });
      stream.on('limit', () => fail(tooLarge(limit)));
      stream.on('end', () => {
        if (name === 'data') {
          try {
            dataText = utf8Text(Buffer.concat(chunks), 'data');
          } catch (err) {
            fail(err as HttpError);
          }
        } else if (name === 'file') file = { data: Buffer.concat(chunks), fileName: fileName || 'code.zip' };
      });
    });
    // The first of busboy's error, a part's error, the request's error or close, and finish
    // settles the upload; the rest are ignored, and the request is no longer read.
    let settled = false;
    const settle = (err: HttpError) => {
      if (settled) return;
      settled = true;
      ctx.req.unpipe(bb);
      ctx.req.resume();
      reject(err);
    };
    bb.on('error', (err: Error) => settle(badRequest(`Malformed multipart body: ${err.message}`)));
    // A client gone mid-upload ends neither the pipe nor busboy: settle here, or the handler
    // (and every chunk read so far) waits forever.
    ctx.req.once('error', (err) => settle(badRequest(`Could not read the request body: ${err.message}`)));
    ctx.req.once('close', () => {
      if (!ctx.req.complete) settle(badRequest('The request was aborted before its body was complete'));
    });
    bb.on('finish', () => {
      if (settled) return;
      settled = true;
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
      try {
        checkRequestText(data);
      } catch (err) {
        return reject(err);
      }
      resolve({ data: data as Record<string, unknown>, ...(file ? { file } : {}) });
    });
    ctx.req.pipe(bb);
  });
}
