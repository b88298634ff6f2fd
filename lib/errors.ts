/**
 * Base error for every Gantry program: a stable `code`, an optional `cause`, and a
 * `retryable` marker telling callers whether trying again later can succeed.
 */
export class GantryError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  constructor(code: string, message: string, opts: { cause?: unknown; retryable?: boolean } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

/** A configuration value is missing or malformed; names the variable. */
export class ConfigError extends GantryError {
  constructor(message: string) {
    super('config_invalid', message);
  }
}
