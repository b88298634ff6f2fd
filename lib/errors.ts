/**
 * What kind of failure an error is, for whoever answers it: the HTTP API maps each kind to
 * one status (control-plane/http/app.ts), programs map them to exit codes.
 */
export type ErrorKind =
  | 'invalid' // the request or input is wrong: 400
  | 'unauthorized' // no valid credentials: 401
  | 'forbidden' // valid credentials, not allowed (a quota): 403
  | 'not_found' // 404
  | 'conflict' // cannot be applied in the present state: 409
  | 'too_large' // 413
  | 'too_many' // come back later (a quota that frees): 429
  | 'misconfigured' // this server lacks something an operator must set: 500, its message shown
  | 'unavailable' // a dependency cannot be reached now: 503
  | 'internal'; // a bug: 500, its message kept in the log

/**
 * Base error for every Gantry program: a stable `code`, a `kind`, an optional `cause`, and
 * a `retryable` marker telling callers whether trying again later can succeed.
 */
export class GantryError extends Error {
  readonly code: string;
  readonly kind: ErrorKind;
  readonly retryable: boolean;
  constructor(code: string, message: string, opts: { cause?: unknown; retryable?: boolean; kind?: ErrorKind } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.kind = opts.kind ?? 'internal';
    this.retryable = opts.retryable ?? false;
  }
}

/** A configuration value is missing or malformed; names the variable. */
export class ConfigError extends GantryError {
  constructor(message: string) {
    super('config_invalid', message, { kind: 'invalid' });
  }
}

/** A command line is wrong: the message says what to type instead. */
export class UsageError extends GantryError {
  constructor(message: string) {
    super('usage', message, { kind: 'invalid' });
  }
}
