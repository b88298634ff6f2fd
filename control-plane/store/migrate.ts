import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../lib/logger.ts';
import type { Db } from './db.ts';

const MIGRATIONS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations');
/** One advisory lock key for all Gantry migrations (any constant; "gantry" in ASCII). */
const MIGRATION_LOCK = 0x67616e747279;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** The numbered migrations on disk, `NNN_name.sql`, in order. */
export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((f) => ({ version: Number(f.slice(0, 3)), name: f, sql: fs.readFileSync(path.join(dir, f), 'utf8') }));
}

/**
 * Applies pending migrations, each in its own transaction, holding a session advisory lock
 * so that several replicas starting at once apply each migration exactly once
 * (graphile-worker's approach).
 */
export async function migrate(db: Db, log: Logger, migrations = loadMigrations()): Promise<number> {
  return db.session(async (s) => {
    await s.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    try {
      await s.exec(`CREATE TABLE IF NOT EXISTS gantry_migrations (
        version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
      const done = new Set(
        (await s.query<{ version: number }>('SELECT version FROM gantry_migrations')).rows.map((r) => r.version),
      );
      let applied = 0;
      for (const m of migrations) {
        if (done.has(m.version)) continue;
        await s.exec('BEGIN');
        try {
          await s.exec(m.sql);
          await s.query('INSERT INTO gantry_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
          await s.exec('COMMIT');
        } catch (err) {
          await s.exec('ROLLBACK').catch(() => undefined);
          throw err;
        }
        applied++;
        log.info({ version: m.version, migration: m.name }, 'migration applied');
      }
      return applied;
    } finally {
      await s.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    }
  });
}
