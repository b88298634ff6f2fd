import fs from 'node:fs';
import pg from 'pg';
import { PGlite } from '@electric-sql/pglite';
import { GantryError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import { InvalidTextError, StoreUnavailableError, TxConflictError } from '../errors.ts';

/** Rows of one statement, the same shape from both engines. */
export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

export interface QueryOptions {
  /**
   * Keep the statement prepared on each connection under this name (PostgreSQL): parsed
   * and planned once, with a generic plan (the pool sets plan_cache_mode). For the
   * statement files of store/sql/ (store/statements.ts `run`), whose text never varies and
   * whose plans do not depend on their parameters' values.
   */
  name?: string;
}

/** Anything SQL can be sent to: the pool, a transaction, or a migration session. */
export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: unknown[], o?: QueryOptions): Promise<QueryResult<T>>;
  /** Several statements, no parameters (migrations). */
  exec(sql: string): Promise<void>;
}

/**
 * The database behind the store: PostgreSQL through `pg`, or PGlite in-process. The same
 * SQL runs on both. Connection failures surface as StoreUnavailableError (HTTP 503).
 */
export interface Db extends Queryable {
  readonly engine: 'postgres' | 'pglite';
  /** Runs `fn` in one transaction; commits when it resolves, rolls back when it throws. */
  tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T>;
  /** Runs `fn` on one dedicated connection (advisory locks live per session). */
  session<T>(fn: (q: Queryable) => Promise<T>): Promise<T>;
  /** True when a trivial query succeeds now. */
  ping(): Promise<boolean>;
  /**
   * LISTEN on `channel`: `fn` gets each notification's payload until the returned stop. On
   * PostgreSQL one connection of its own listens, and is made again when lost; `resync` is
   * called once it listens again, since notifications sent meanwhile are gone.
   */
  listen(channel: string, fn: (payload: string) => void, resync: () => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** SQLSTATE classes and codes meaning "the server is not reachable or not serving now". */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '08000', '08003', '08006', '08001', '08004']);
/** Transactions that fail with these did nothing and can simply run again. */
const RETRYABLE_SQLSTATES = new Set(['40P01', '40001']);
const UNAVAILABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN']);

/** Whether a failed transaction did nothing and should simply run again. */
function mustRetry(err: unknown): boolean {
  if (err instanceof TxConflictError) return true;
  const code = (err as { code?: string }).code;
  return code !== undefined && RETRYABLE_SQLSTATES.has(code);
}

/** Translates pg's connection failures into StoreUnavailableError; other errors pass through. */
export function translatePgError(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const e = err as Error & { code?: string };
  const msg = e.message ?? '';
  if (
    (e.code && (UNAVAILABLE_SQLSTATES.has(e.code) || UNAVAILABLE_ERRNOS.has(e.code))) ||
    /Connection terminated|timeout exceeded when trying to connect|Query read timeout|connection timeout|Client has encountered a connection error|Connection ended/i.test(
      msg,
    )
  ) {
    return new StoreUnavailableError(`database unavailable: ${msg || e.code}`, err);
  }
  // Text PostgreSQL cannot store. The API refuses it before any query (http/text.ts); this
  // is the backstop for any other path, so such a value is a client error, never a 500.
  if (e.code === '22P05' || e.code === '22021') return new InvalidTextError(msg, err);
  return err;
}

function pgQueryable(client: pg.Pool | pg.PoolClient): Queryable {
  return {
    async query<T>(sql: string, params?: unknown[], o?: QueryOptions) {
      try {
        const r = o?.name
          ? await client.query({ name: o.name, text: sql, values: params as unknown[] })
          : await client.query(sql, params as unknown[]);
        return { rows: r.rows as T[], rowCount: r.rowCount ?? 0 };
      } catch (err) {
        throw translatePgError(err);
      }
    },
    async exec(sql: string) {
      try {
        await client.query(sql);
      } catch (err) {
        throw translatePgError(err);
      }
    },
  };
}

export interface PgOptions {
  url: string;
  poolMax: number;
  connectTimeoutMs: number;
  queryTimeoutMs: number;
  log: Logger;
}

// int8 (counts, sizes) as JS numbers, as PGlite returns them; our values stay below 2^53.
const pgTypes = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** PostgreSQL through a `pg` pool that never hangs a request on a dead server. */
export function openPostgres(o: PgOptions): Db {
  const pool = new pg.Pool({
    connectionString: o.url,
    max: o.poolMax,
    connectionTimeoutMillis: o.connectTimeoutMs,
    query_timeout: o.queryTimeoutMs,
    idleTimeoutMillis: 30000,
    keepAlive: true,
    types: pgTypes,
    // Statements kept prepared (QueryOptions.name: the statement files of store/sql/, written
    // to plan well without their parameters' values) are planned once per connection, not at
    // every run: planning was most of a claim's time. Other statements are unnamed and
    // planned each time as usual.
    // A transaction whose client went silent (this process partitioned from the database,
    // or frozen) would keep its row locks until the server noticed the dead connection,
    // minutes later, and every other replica's writes to those rows would wait: the server
    // ends such a transaction once it has been idle as long as a query may take.
    options: `-c plan_cache_mode=force_generic_plan -c idle_in_transaction_session_timeout=${Math.max(1000, o.queryTimeoutMs)}`,
  });
  // An idle client whose server went away emits here; without a listener the process dies.
  pool.on('error', (err) => o.log.warn({ err: err.message }, 'idle database connection lost'));
  const base = pgQueryable(pool);

  async function withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      throw translatePgError(err);
    }
    let broken: Error | undefined;
    // A connection that ends while checked out emits 'error' on its client even when a query
    // in flight fails with it too (the pool listens only while a client is idle): without a
    // listener here, a database that goes away in the middle of a transaction ends the process.
    const lost = (err: Error) => {
      broken ??= err;
    };
    client.on('error', lost);
    try {
      return await fn(client);
    } catch (err) {
      const t = translatePgError(err);
      if (t instanceof StoreUnavailableError) broken = t;
      throw t;
    } finally {
      client.off('error', lost);
      // A client whose connection failed is destroyed rather than returned to the pool.
      client.release(broken);
    }
  }

  const once = <T>(fn: (q: Queryable) => Promise<T>) =>
    withClient(async (client) => {
      const q = pgQueryable(client);
      await q.exec('BEGIN');
      try {
        const out = await fn(q);
        await q.exec('COMMIT');
        return out;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });

  return {
    engine: 'postgres',
    query: base.query,
    exec: base.exec,
    // A transaction that lost a deadlock or a serialization conflict did nothing: run it
    // again (graphile-worker keeps the same table of retryable SQLSTATEs).
    tx: async (fn) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await once(fn);
        } catch (err) {
          if (!mustRetry(err) || attempt >= 5) throw err;
          await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
        }
      }
    },
    session: (fn) => withClient((client) => fn(pgQueryable(client))),
    ping: async () => {
      try {
        await base.query('SELECT 1');
        return true;
      } catch {
        return false;
      }
    },
    listen: (channel, fn, resync) => listenPg(o, channel, fn, resync),
    close: () => pool.end(),
  };
}

/** How long a lost listening connection waits before it is made again (doubling to the cap). */
const LISTEN_RETRY_MS = [100, 5000] as const;

/**
 * One connection outside the pool, LISTENing on `channel`, made again whenever it fails
 * (a restarted server, a dropped network) until stopped. The first connection must
 * succeed: a control plane that cannot listen says so at start.
 */
async function listenPg(o: PgOptions, channel: string, fn: (payload: string) => void, resync: () => void): Promise<() => Promise<void>> {
  let stopped = false;
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;
  let delay: number = LISTEN_RETRY_MS[0];
  const connect = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: o.url, connectionTimeoutMillis: o.connectTimeoutMs, keepAlive: true });
    c.on('notification', (m) => {
      if (m.channel === channel) fn(m.payload ?? '');
    });
    c.on('error', (err) => {
      if (stopped || client !== c) return;
      o.log.warn({ err: err.message, channel }, 'the listening database connection was lost; listening again');
      lost(c);
    });
    c.on('end', () => {
      if (!stopped && client === c) lost(c);
    });
    client = c;
    try {
      await c.connect();
      await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (err) {
      client = undefined;
      c.end().catch(() => undefined);
      throw translatePgError(err);
    }
  };
  const lost = (c: pg.Client) => {
    client = undefined;
    c.end().catch(() => undefined);
    clearTimeout(retry);
    retry = setTimeout(again, delay);
    retry.unref();
  };
  const again = () => {
    if (stopped) return;
    connect().then(
      () => {
        delay = LISTEN_RETRY_MS[0];
        resync();
      },
      (err) => {
        o.log.warn({ err: (err as Error).message, channel }, 'cannot listen for notifications yet; trying again');
        delay = Math.min(delay * 2, LISTEN_RETRY_MS[1]);
        retry = setTimeout(again, delay);
        retry.unref();
      },
    );
  };
  await connect();
  return async () => {
    stopped = true;
    clearTimeout(retry);
    await client?.end().catch(() => undefined);
  };
}

/**
 * Times on PGlite exactly as on `pg`. PGlite's own handling differs at the edges of the
 * calendar: it sends a Date as `toISOString()` (year 0 and earlier are not PostgreSQL
 * input, so a window reaching back past year 1 failed) and reads a time back with
 * `new Date(text)` (years 1-99 came back as 2001-2099). Here a Date is sent as `pg` sends
 * it (UTC, years before 1 as BC) and read with `pg`'s own parser.
 */
function pgTimeText(d: Date): string {
  const y = d.getUTCFullYear();
  const two = (n: number) => String(n).padStart(2, '0');
  const date = `${String(y < 1 ? 1 - y : y).padStart(4, '0')}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())}`;
  const time = `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}.${String(d.getUTCMilliseconds()).padStart(3, '0')}`;
  return `${date}T${time}+00:00${y < 1 ? ' BC' : ''}`;
}

const TIMESTAMP = 1114;
const TIMESTAMPTZ = 1184;
const sendTime = (v: unknown) => (v instanceof Date ? pgTimeText(v) : String(v));
const PGLITE_TIMES = {
  parsers: { [TIMESTAMP]: pg.types.getTypeParser(TIMESTAMP, 'text'), [TIMESTAMPTZ]: pg.types.getTypeParser(TIMESTAMPTZ, 'text') },
  serializers: { [TIMESTAMP]: sendTime, [TIMESTAMPTZ]: sendTime },
};

const UTF8_BOM = Buffer.from([0xef, 0xbb, 0xbf]);
const DATA_ROW = 0x44; // 'D'

/**
 * Puts back the leading U+FEFF that PGlite's protocol parser drops from a field. It decodes
 * each field with its own `TextDecoder('utf-8')`, which strips a byte order mark at the start
 * of every decode, so a text value beginning with one read back one character short; no
 * query option or type parser sees the bytes. `data` is the raw backend output of the same
 * exchange: its k-th DataRow is the k-th `dataRow` message, and a field whose bytes begin
 * with EF BB BF lost exactly that one character. This works for every column type, since the
 * wire bytes are the truth whatever the type's text form.
 */
function restoreLeadingBoms(messages: { name: string }[], data: Uint8Array): void {
  const raw = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (raw.indexOf(UTF8_BOM) < 0) return;
  const rows = messages.filter((m): m is { name: 'dataRow'; fields: (string | null)[] } => m.name === 'dataRow');
  let row = 0;
  // Every backend message: a type byte, then an int32 length that counts itself and the body.
  for (let at = 0; at + 5 <= raw.length; at += 1 + raw.readInt32BE(at + 1)) {
    if (raw[at] !== DATA_ROW) continue;
    const msg = rows[row++];
    let p = at + 5;
    const n = raw.readInt16BE(p);
    p += 2;
    for (let i = 0; i < n; i++) {
      const len = raw.readInt32BE(p);
      p += 4;
      if (len < 0) continue;
      const field = msg?.fields[i];
      if (len >= 3 && typeof field === 'string' && raw[p] === 0xef && raw[p + 1] === 0xbb && raw[p + 2] === 0xbf) {
        msg!.fields[i] = `\uFEFF${field}`;
      }
      p += len;
    }
  }
}

/**
 * Routes PGlite's own statements through `execProtocol`, which returns the parsed messages
 * (errors, notices and notifications handled by PGlite as before) together with the raw
 * output, so `restoreLeadingBoms` can mend the rows before PGlite turns them into values.
 * `query`, `exec` and transactions all reach the engine through `execProtocolStream`, so
 * every column read through the store is covered. The other ways in are closed: the decoder
 * is private to PGlite's protocol reader, a type parser is handed the decoded string, and a
 * global TextDecoder of our own would change decoding for the whole process. The price is
 * one more copy of each reply, and a walk through its messages when it holds EF BB BF.
 */
async function keepLeadingBoms(db: PGlite): Promise<void> {
  db.execProtocolStream = async (message, options = {}) => {
    const { messages, data } = await db.execProtocol(message, options);
    restoreLeadingBoms(messages, data);
    return messages;
  };
  // A PGlite that stopped reading its rows through execProtocolStream would drop the BOM
  // again, silently: refuse to run on it.
  let v: string | undefined;
  try {
    v = (await db.query<{ v: string }>(`SELECT convert_from(decode('efbbbf41', 'hex'), 'UTF8') AS v`)).rows[0]?.v;
  } finally {
    if (v !== '\uFEFFA') await db.close().catch(() => undefined);
  }
  if (v !== '\uFEFFA') throw new Error('this PGlite build drops a leading U+FEFF from text values and the store cannot restore it');
}

/** PGlite: PostgreSQL compiled to WASM, in this process, its data directory on disk. */
export async function openPglite(dataDir: string): Promise<Db> {
  fs.mkdirSync(dataDir, { recursive: true });
  const releaseLock = lockDataDir(dataDir);
  let db: PGlite;
  try {
    db = await PGlite.create(dataDir);
    await keepLeadingBoms(db);
  } catch (err) {
    releaseLock();
    throw err;
  }
  const wrap = (t: { query: PGlite['query']; exec: PGlite['exec'] }): Queryable => ({
    async query<T>(sql: string, params?: unknown[]) {
      try {
        const r = await t.query<T>(sql, params, PGLITE_TIMES);
        return { rows: r.rows, rowCount: r.affectedRows || r.rows.length };
      } catch (err) {
        const code = (err as { code?: string }).code;
        throw code === '22P05' || code === '22021' ? new InvalidTextError((err as Error).message, err) : err;
      }
    },
    async exec(sql: string) {
      await t.exec(sql);
    },
  });
  const base = wrap(db);
  return {
    engine: 'pglite',
    query: base.query,
    exec: base.exec,
    tx: async (fn) => {
      // One connection runs every transaction in turn, so none meets another; a conflict
      // seen anyway is retried as on PostgreSQL.
      for (let attempt = 1; ; attempt++) {
        try {
          return await db.transaction((t) => fn(wrap(t)));
        } catch (err) {
          if (!mustRetry(err) || attempt >= 5) throw err;
        }
      }
    },
    session: (fn) => fn(base),
    ping: async () => !db.closed,
    // One process: its notifications never get lost, so there is nothing to resync.
    listen: async (channel, fn) => {
      const unlisten = await db.listen(channel, fn);
      return async () => {
        if (!db.closed) await unlisten();
      };
    },
    close: async () => {
      try {
        await db.close();
      } finally {
        releaseLock();
      }
    },
  };
}

/** Thrown when another live process has the PGlite data directory open. */
export class DataDirInUseError extends GantryError {
  constructor(message: string) {
    super('data_dir_in_use', message, { kind: 'conflict' });
  }
}

/**
 * PGlite is single-process: two processes on one data directory corrupt it. A lock file
 * holding the owner's pid keeps a second one out; a lock left by a dead process (kill -9)
 * is taken over.
 */
function lockDataDir(dataDir: string): () => void {
  const file = `${dataDir}/gantry.lock`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(fs.readFileSync(file, 'utf8'));
      if (pid && pid !== process.pid && isAlive(pid)) {
        throw new DataDirInUseError(
          `the embedded database in ${dataDir} is in use by process ${pid}; stop that process first, or use PostgreSQL (DATABASE_URL) to run several`,
        );
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new DataDirInUseError(`could not lock ${dataDir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
