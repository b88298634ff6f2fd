/**
 * The recorded queue load across leader failovers: replicas on one PostgreSQL, real etcd
 * leadership. The leader is a real `gantry start` process killed with SIGKILL; the replica
 * that takes over is later stopped gracefully. The series the leaders wrote has no gap
 * longer than one etcd TTL plus one interval, and never two sets of rows for one instant.
 */
import t, { type Test } from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import { openStore, type Store } from '../../../control-plane/store/index.ts';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { etcdPrefix } from '../../helpers/etcd.ts';
import { kill9, startGantryProcess } from '../../helpers/process.ts';
import { until } from '../../helpers/runner.ts';
import { etcdEndpoint } from '../../helpers/services.ts';

const TTL_S = 2;
const INTERVAL_S = 2;
const BOUND_MS = (TTL_S + INTERVAL_S) * 1000;

async function ticks(store: Store): Promise<number[]> {
  return (await store.db.query<{ at: Date }>('SELECT at FROM queue_load_ticks ORDER BY at')).rows.map((r) => r.at.getTime());
}

async function rig(t: Test) {
  const dbUrl = await freshPgDatabase(t);
  const prefix = etcdPrefix(t);
  const env = {
    DATABASE_URL: dbUrl,
    ETCD_ENDPOINTS: etcdEndpoint(),
    GANTRY_ETCD_PREFIX: prefix,
    GANTRY_COORD_TTL_S: String(TTL_S),
    GANTRY_QUEUE_LOAD_INTERVAL_S: String(INTERVAL_S),
    GANTRY_PG_POOL_MAX: '4',
    GANTRY_SECRET_KEYS: `k1:${Buffer.alloc(32, 7).toString('base64')}`,
  };
  const open = () =>
    openStore({ databaseUrl: dbUrl, dataDir: tempDir(t), pgPoolMax: 4, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 }, silentLogger(), systemClock, newId);
  const setup = await open();
  t.teardown(() => setup.close());
  const inProcess = async (name: string) => {
    const store = await open();
    const cp = await startControlPlane(loadConfig({ GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent', GANTRY_SERVER_ID: name, ...env }), silentLogger(), { store });
    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      await cp.stop();
      await store.close();
    };
    t.teardown(stop);
    return { cp, stop };
  };
  return { env, setup, inProcess };
}

t.test('leader killed, then stopped: the series has no gap over TTL + interval and no instant twice', async (t) => {
  const r = await rig(t);
  // A queue that does not change: three series (two priorities of one package, one delayed).
  const u = await r.setup.accounts.createUser('ql@example.com');
  const p = await r.setup.accounts.createProject(u.id, 'ql');
  const code = await r.setup.codes.upload(p.id, 'steady', { image: 'busybox' });
  const task = (priority: number, delay: number) => ({
    projectId: p.id, codeId: code.id, codeName: code.name, revisionId: code.latestRevisionId, rev: code.rev,
    retries: 0, retriesDelay: 0, payload: '', priority, cluster: 'default', timeout: 60, delay, label: null,
  });
  await r.setup.tasks.queue([task(0, 0), task(0, 0), task(2, 0), task(1, 86_400)]);

  const a = await startGantryProcess(t, { ...r.env, GANTRY_SERVER_ID: 'a', GANTRY_DATA_DIR: tempDir(t) });
  await until('a records as leader', async () => (await ticks(r.setup)).length >= 3, 30_000, 100);
  const b = await r.inProcess('b');
  await until('b knows a leads', async () => b.cp.coord.status().leader === 'a', 10_000);
  await until('a records two more', async () => (await ticks(r.setup)).length >= 5, 15_000, 100);
  const beforeKill = (await ticks(r.setup)).length;
  await kill9(a);
  await until('b leads', async () => b.cp.coord.status().isLeader, 15_000);
  await until('b records three', async () => (await ticks(r.setup)).length >= beforeKill + 3, 15_000, 100);

  const c = await r.inProcess('c');
  await until('c knows b leads', async () => c.cp.coord.status().leader === 'b', 10_000);
  const beforeStop = (await ticks(r.setup)).length;
  await b.stop();
  await until('c leads', async () => c.cp.coord.status().isLeader, 10_000);
  await until('c records three', async () => (await ticks(r.setup)).length >= beforeStop + 3, 15_000, 100);
  await c.stop();

  const at = await ticks(r.setup);
  const gaps = at.slice(1).map((x, i) => x - at[i]!);
  t.comment(`instants ${at.length}, gaps (ms) ${gaps.join(' ')}`);
  t.ok(gaps.every((g) => g % (INTERVAL_S * 1000) === 0 && g > 0), 'every instant starts an interval, each once');
  t.ok(Math.max(...gaps) <= BOUND_MS, `no gap longer than TTL + interval (${BOUND_MS} ms): the longest is ${Math.max(...gaps)} ms`);
  const perInstant = await r.setup.db.query<{ at: Date; n: number }>('SELECT at, count(*)::int AS n FROM queue_load GROUP BY at ORDER BY at');
  t.same(perInstant.rows.map((x) => x.at.getTime()), at, 'every instant has its series');
  t.ok(perInstant.rows.every((x) => Number(x.n) === 3), 'and exactly the three series of the queue, never a double set');
  const sums = await r.setup.db.query<{ pending: number; queued: number; running: number }>(
    'SELECT sum(pending)::int AS pending, sum(queued)::int AS queued, sum(running)::int AS running FROM queue_load GROUP BY at',
  );
  t.ok(sums.rows.every((x) => x.pending === 1 && x.queued === 3 && x.running === 0), 'with the same counts from every leader');
});
