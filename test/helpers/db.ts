import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Test } from 'tap';
import { systemClock, type Clock } from '../../lib/clock.ts';
import { newId } from '../../lib/ids.ts';
import { silentLogger } from '../../lib/logger.ts';
import { openStore, type Store } from '../../control-plane/store/index.ts';
import { pgAdminUrl, RUN_ID } from './services.ts';

export type Engine = 'pglite' | 'postgres';
/** Every store-facing test runs against both engines. */
export const ENGINES: readonly Engine[] = ['pglite', 'postgres'];

/** A new, empty PostgreSQL database for one test, dropped when the test ends. Returns its URL. */
export async function freshPgDatabase(t: Test): Promise<string> {
  const admin = pgAdminUrl();
  const name = `gantry_t_${RUN_ID}_${randomBytes(4).toString('hex')}`;
  const c = new pg.Client({ connectionString: admin });
  try {
    await c.connect();
  } catch (err) {
    throw new Error(`PostgreSQL is not reachable at GANTRY_TEST_PG_URL: ${(err as Error).message}`);
  }
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  t.teardown(async () => {
    const d = new pg.Client({ connectionString: admin });
    await d.connect();
    await d.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await d.end();
  });
  const u = new URL(admin);
  u.pathname = `/${name}`;
  return u.toString();
}

/** A new, empty directory for one test, removed when the test ends. */
export function tempDir(t: Test, prefix = 'gantry-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Store options for a fresh database of the engine. */
export async function freshStoreOptions(t: Test, engine: Engine) {
  return {
    databaseUrl: engine === 'postgres' ? await freshPgDatabase(t) : undefined,
    dataDir: engine === 'pglite' ? tempDir(t, 'gantry-pglite-') : path.join(os.tmpdir(), 'unused'),
    pgPoolMax: 10,
    pgConnectTimeoutMs: 3000,
    pgQueryTimeoutMs: 15000,
  };
}

/** An open, migrated store on a fresh database of the engine, closed when the test ends. */
export async function freshStore(t: Test, engine: Engine, clock: Clock = systemClock): Promise<Store> {
  const store = await openStore(await freshStoreOptions(t, engine), silentLogger(), clock, newId);
  t.teardown(() => store.close());
  return store;
}
