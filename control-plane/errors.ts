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

/** A value PostgreSQL cannot store as text (NUL, invalid Unicode): a client error (400). */
export class InvalidTextError extends GantryError {
  readonly status = 400;
  constructor(message: string, cause?: unknown) {
    super('invalid_text', `A value is not text that can be stored: ${message}`, { cause });
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
  readonly kind: QuotaKind;
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
    this.kind = kind;
    this.limit = limit;
    this.used = used;
  }
}
