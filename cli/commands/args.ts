/** Argument parsers for commander: a bad value is commander's usage error (exit 2), naming the flag. */
import fs from 'node:fs';
import { InvalidArgumentError } from 'commander';

/** A whole number from `min` to `max`. */
export function int(min: number, max: number) {
  return (raw: string): number => {
    if (!/^-?\d+$/.test(raw.trim())) throw new InvalidArgumentError(`must be a whole number from ${min} to ${max}`);
    const n = Number(raw);
    if (n < min || n > max) throw new InvalidArgumentError(`must be from ${min} to ${max}`);
    return n;
  };
}

/** KEY=VALUE, repeatable: collected into an object. */
export function keyValue(raw: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = raw.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`must be KEY=VALUE, got ${JSON.stringify(raw)}`);
  return { ...previous, [raw.slice(0, eq)]: raw.slice(eq + 1) };
}

/** A file's text (the name is checked now, so a missing file is a usage error). */
export function fileText(raw: string): string {
  try {
    return fs.readFileSync(raw, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`cannot read ${raw}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A time the API reads: RFC 3339 (e.g. 2026-01-02T15:04:05Z) or seconds since the epoch. */
export function time(raw: string): string {
  if (/^\d+$/.test(raw) || (/^\d{4}-\d{2}-\d{2}/.test(raw) && !Number.isNaN(Date.parse(raw)))) return raw;
  throw new InvalidArgumentError('must be an RFC 3339 time (e.g. 2026-01-02T15:04:05Z) or seconds since the epoch');
}
