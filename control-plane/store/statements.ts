import fs from 'node:fs';
import type { Queryable, QueryResult } from './db.ts';

/**
 * The store's runtime SQL of the hot path: each statement a whole file in `store/sql/`,
 * headed by a comment that says what it does and names its parameters
 * (`--   $1 cluster  text`, or a range `--   $4..$25 the task`). A file is read once, when
 * the module that uses it loads, and checked then: the parameters the header names must be
 * exactly those the statement uses, so a renumbering that misses one fails at start-up, not
 * in a query. Statements run prepared under their file's name (see QueryOptions.name).
 */
export interface Statement {
  /** The file's name without `.sql`: also the prepared statement's name. */
  readonly name: string;
  readonly text: string;
  /** How many parameters it takes ($1 to $params). */
  readonly params: number;
}

const DIR = new URL('./sql/', import.meta.url);
const loaded = new Map<string, Statement>();

/** The statement in `store/sql/<name>.sql`, read and checked once. */
export function statement(name: string): Statement {
  let s = loaded.get(name);
  if (!s) {
    s = parseStatement(name, fs.readFileSync(new URL(`${name}.sql`, DIR), 'utf8'));
    loaded.set(name, s);
  }
  return s;
}

/** Every statement file's name (for the test that loads them all). */
export function statementNames(): string[] {
  return fs
    .readdirSync(DIR)
    .filter((f) => f.endsWith('.sql'))
    .map((f) => f.slice(0, -4))
    .sort();
}

/** Parses and checks one statement file (exported for its tests). */
export function parseStatement(name: string, text: string): Statement {
  const lines = text.split('\n');
  const header: string[] = [];
  for (const l of lines) {
    if (!l.startsWith('--')) break;
    header.push(l);
  }
  if (header.length === 0) throw new Error(`store/sql/${name}.sql: starts with no header comment`);
  const declared = new Set<number>();
  for (const l of header) {
    const m = /^--\s+\$(\d+)(?:\.\.\$(\d+))?\s+\S/.exec(l);
    if (!m) continue;
    const from = Number(m[1]);
    const to = Number(m[2] ?? m[1]);
    for (let i = from; i <= to; i++) declared.add(i);
  }
  // Placeholders outside comments and string literals.
  const body = lines
    .slice(header.length)
    .map((l) => l.replace(/--.*$/, ''))
    .join('\n')
    .replace(/'(?:[^']|'')*'/g, "''");
  const used = new Set([...body.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
  const n = Math.max(0, ...declared, ...used);
  const missing: string[] = [];
  for (let i = 1; i <= n; i++) {
    if (!declared.has(i)) missing.push(`$${i} is not named in the header`);
    if (!used.has(i)) missing.push(`$${i} is named but not used`);
  }
  if (missing.length > 0) throw new Error(`store/sql/${name}.sql: ${missing.join('; ')}`);
  return { name, text: lines.slice(header.length).join('\n').trim(), params: n };
}

/** Runs a statement, prepared under its name; the parameters must be as many as it takes. */
export function run<T = Record<string, unknown>>(q: Queryable, s: Statement, params: readonly unknown[]): Promise<QueryResult<T>> {
  if (params.length !== s.params) throw new Error(`${s.name} takes ${s.params} parameters, given ${params.length}`);
  return q.query<T>(s.text, params as unknown[], { name: s.name });
}
