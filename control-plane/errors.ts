import { GantryError } from '../lib/errors.ts';

/** An error with an HTTP status, answered to the client as `{"msg": message}`. */
export class HttpError extends GantryError {
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(status: number, message: string, opts: { code?: string; headers?: Record<string, string>; cause?: unknown } = {}) {
    super(opts.code ?? `http_${status}`, message, { cause: opts.cause });
    this.status = status;
    this.headers = opts.headers ?? {};
  }
}

export const badRequest = (msg: string) => new HttpError(400, msg, { code: 'invalid' });
export const notFound = (msg: string) => new HttpError(404, msg, { code: 'not_found' });

/** The database cannot be reached now; clients get 503 with Retry-After and try again. */
export class StoreUnavailableError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('store_unavailable', message, { cause, retryable: true });
  }
}

/** A write was refused because its precondition no longer holds (stale owner or state). */
export class StaleWriteError extends GantryError {
  constructor(message: string) {
    super('stale_write', message);
  }
}
