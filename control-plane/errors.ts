import { GantryError, type ErrorKind } from '../lib/errors.ts';

/**
 * The control plane's errors. Each is a GantryError with a kind; the API's one error
 * middleware (http/app.ts) answers every kind with its status (STATUS_OF_KIND) and
 * `{"msg": message}`. HttpError is for what only HTTP has words for (405, 406, 417, a
 * Retry-After): it names its status itself.
 */

/** The HTTP status of each kind of error. */
export const STATUS_OF_KIND: Readonly<Record<ErrorKind, number>> = {
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  too_many: 429,
  misconfigured: 500,
  unavailable: 503,
  internal: 500,
};

const KIND_OF_STATUS: Readonly<Record<number, ErrorKind>> = Object.fromEntries(
  Object.entries(STATUS_OF_KIND).filter(([k]) => k !== 'misconfigured').map(([k, v]) => [v, k as ErrorKind]),
);

/** An error with an HTTP status, answered to the client as `{"msg": message}`. */
export class HttpError extends GantryError {
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(status: number, message: string, opts: { code?: string; headers?: Record<string, string>; cause?: unknown } = {}) {
    super(opts.code ?? `http_${status}`, message, { cause: opts.cause, kind: KIND_OF_STATUS[status] ?? (status < 500 ? 'invalid' : 'internal') });
    this.status = status;
    this.headers = opts.headers ?? {};
  }
}

export const badRequest = (msg: string) => new HttpError(400, msg, { code: 'invalid' });
export const notFound = (msg: string) => new HttpError(404, msg, { code: 'not_found' });

/** The database cannot be reached now; clients get 503 with Retry-After and try again. */
export class StoreUnavailableError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('store_unavailable', message, { cause, retryable: true, kind: 'unavailable' });
  }
}

/**
 * A transaction saw another one change what it read (a compare-and-set matched fewer rows
 * than it expected). It did nothing that lasts: Db.tx runs it again, as it does one that
 * lost a deadlock or a serialization conflict.
 */
export class TxConflictError extends GantryError {
  constructor(message: string) {
    super('tx_conflict', message, { retryable: true });
  }
}

/** The request cannot be applied in the present state, which changed under it: try again (409). */
export class ConflictError extends GantryError {
  constructor(message: string) {
    super('conflict', message, { kind: 'conflict' });
  }
}

/** A value PostgreSQL cannot store as text (NUL, invalid Unicode): a client error (400). */
export class InvalidTextError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('invalid_text', `A value is not text that can be stored: ${message}`, { cause, kind: 'invalid' });
  }
}

/** The quotas a user has, by the words their messages use. */
export type QuotaKind = 'clusters' | 'codes' | 'schedules' | 'queued_tasks';

const QUOTA_NOUN: Record<QuotaKind, string> = {
  clusters: 'clusters',
  codes: 'code packages',
  schedules: 'active schedules',
  queued_tasks: 'queued tasks',
};

/**
 * A request would take the user past a quota: 403 naming the quota, its limit, the usage
 * and what to do; for queued tasks, which free as the queue drains, 429 with Retry-After.
 */
export class QuotaExceededError extends HttpError {
  readonly quota: QuotaKind;
  readonly limit: number;
  readonly used: number;
  constructor(kind: QuotaKind, limit: number, used: number, adding: number, retryAfterS?: number) {
    const have = `you have ${used}${adding > 1 ? `; this request adds ${adding}` : ''}`;
    const raise = 'ask an operator to raise it (gantry user quota)';
    const todo =
      kind === 'queued_tasks'
        ? `retry after ${retryAfterS ?? 1} s when some have run, cancel some, or ${raise}`
        : `${kind === 'schedules' ? 'cancel' : 'delete'} ${adding > 1 ? 'some' : 'one'} or ${raise}`;
    super(kind === 'queued_tasks' ? 429 : 403, `quota exceeded: at most ${limit} ${QUOTA_NOUN[kind]} per user (${have}); ${todo}`, {
      code: 'quota_exceeded',
      headers: kind === 'queued_tasks' ? { 'Retry-After': String(retryAfterS ?? 1) } : {},
    });
    this.quota = kind;
    this.limit = limit;
    this.used = used;
  }
}
