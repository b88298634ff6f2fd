import { textProblem } from '../../lib/text.ts';
import { badRequest } from '../errors.ts';

/**
 * The one check of request text before anything reaches SQL: every string of a decoded
 * request (JSON bodies, the upload's `data` part, query parameters), keys included, must be
 * text PostgreSQL stores exactly. NUL cannot be stored in `text` or `jsonb`; an unpaired
 * UTF-16 surrogate (JSON allows `"\ud800"`) would be refused by `jsonb` and silently turned
 * into U+FFFD in `text`. Both are refused with a 400 naming the field, so no such string
 * ever fails a query (a 500) or is stored changed.
 */

/** Deepest nesting of arrays and objects a request may have. */
export const MAX_DEPTH = 64;

const child = (path: string, key: string | number) =>
  typeof key === 'number' ? `${path}[${key}]` : path === '' ? key : /^[A-Za-z_][\w-]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;

/**
 * Throws a 400 for the first string in `value` (walked iteratively, keys and values) that
 * cannot be stored as text, or for nesting deeper than MAX_DEPTH. `root` prefixes the
 * field names in messages (`''` for a body whose fields are named as the client wrote them).
 */
export function checkRequestText(value: unknown, root = ''): void {
  const stack: { v: unknown; path: string; depth: number }[] = [{ v: value, path: root, depth: 0 }];
  while (stack.length > 0) {
    const { v, path, depth } = stack.pop()!;
    if (typeof v === 'string') {
      const p = textProblem(v);
      if (p) throw badRequest(`${path || 'the request body'} ${p}`);
      continue;
    }
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= MAX_DEPTH) throw badRequest(`${path || 'the request body'} is nested deeper than ${MAX_DEPTH} levels`);
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], path: child(path, i), depth: depth + 1 });
      continue;
    }
    const keys = Object.keys(v);
    for (let i = keys.length - 1; i >= 0; i--) {
      const k = keys[i]!;
      const p = textProblem(k);
      if (p) throw badRequest(`${path || 'the request body'}: a key ${p}`);
      stack.push({ v: (v as Record<string, unknown>)[k], path: child(path, k), depth: depth + 1 });
    }
  }
}
