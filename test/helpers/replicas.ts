import type { Test } from 'tap';
import { systemClock, type Clock } from '../../lib/clock.ts';
import { newId } from '../../lib/ids.ts';
import { silentLogger, type Logger } from '../../lib/logger.ts';
import { loadConfig } from '../../control-plane/config.ts';
import { startControlPlane, type ControlPlane } from '../../control-plane/start.ts';
import { openStore, type Store } from '../../control-plane/store/index.ts';
import { freshPgDatabase, tempDir } from './db.ts';
import { etcdPrefix } from './etcd.ts';
import { etcdEndpoint } from './services.ts';

/**
 * Replicas of one installation in this process: a fresh PostgreSQL database, etcd (the
 * shared one under a prefix of the test's own, unless `o` names another), one clock. `setup` is a store for the test's own
 * reads and writes; each replica opens its own and is stopped at teardown.
 */
export async function replicaRig(t: Test, clock: Clock = systemClock, o: { etcd?: string; prefix?: string } = {}) {
  const dbUrl = await freshPgDatabase(t);
  const etcd = o.etcd ?? etcdEndpoint();
  const prefix = o.prefix ?? etcdPrefix(t);
  const open = (): Promise<Store> =>
    openStore({ databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 }, silentLogger(), clock, newId);
  const setup = await open();
  t.teardown(() => setup.close());
  /** A replica named `name` (GANTRY_SERVER_ID), with `env` on top of the rig's own settings. */
  const replica = async (name: string, env: Record<string, string> = {}, log: Logger = silentLogger()): Promise<ControlPlane> => {
    const store = await open();
    const config = loadConfig({
      GANTRY_PORT: '0',
      GANTRY_GRPC_PORT: '0',
      GANTRY_LOCAL_RUNNERS: '0',
      DATABASE_URL: dbUrl,
      ETCD_ENDPOINTS: etcd,
      GANTRY_ETCD_PREFIX: prefix,
      GANTRY_SERVER_ID: name,
      ...env,
    });
    const cp = await startControlPlane(config, log, { store, clock });
    t.teardown(async () => {
      await cp.stop();
      await store.close();
    });
    return cp;
  };
  return { dbUrl, setup, replica };
}
