import { newId } from '../../lib/ids.ts';
import { ClaimsStore, type Offer } from '../../control-plane/store/claims.ts';
import type { Db } from '../../control-plane/store/db.ts';
import type { Store } from '../../control-plane/store/index.ts';
import type { LogWrite } from '../../control-plane/store/logs.ts';

const ROLLBACK = new Error('rolled back: a probe claim');

/**
 * What a claim for a runner of `cluster` would return now — the dispatch order itself —
 * without keeping it: the claim runs in a transaction that is rolled back.
 */
export async function probeClaim(store: Store, cluster: string, n = 100, o: { ageingS?: number } = {}): Promise<Offer[]> {
  let out: Offer[] = [];
  try {
    await store.db.tx(async (q) => {
      const db: Db = { engine: store.db.engine, query: (sql, p, qo) => q.query(sql, p, qo), exec: (sql) => q.exec(sql), tx: (fn) => fn(q), session: (fn) => fn(q), ping: async () => true, listen: (c, f, r) => store.db.listen(c, f, r), close: async () => {} };
      out = await new ClaimsStore({ db, clock: store.clock, ids: newId }, store.tasks).claim({ id: 'probe', epoch: 0, cluster }, n, {
        acceptDeadlineMs: 10_000,
        ageingS: o.ageingS ?? 3600,
      });
      throw ROLLBACK;
    });
  } catch (err) {
    if (err !== ROLLBACK) throw err;
  }
  return out;
}

/** The ids of the tasks a claim for `cluster` would take now, in offer order (see probeClaim). */
export async function claimableIds(store: Store, cluster: string, n = 100): Promise<string[]> {
  return (await probeClaim(store, cluster, n)).map((o) => o.taskId);
}

/**
 * A task of a new user on a new cluster `name`, claimed by a connected runner: the lease a
 * runner holds, to write its log through the store as the runner's log stream does.
 */
export async function leaseFor(store: Store, name: string): Promise<{ runnerId: string; taskId: string; leaseId: string; attempt: number; projectId: string; userId: string }> {
  const u = await store.accounts.createUser(`${name}@x`);
  const p = await store.accounts.createProject(u.id, 'p');
  const { cluster: c } = await store.clusters.create(name);
  const runner = (await store.runners.connect(
    { runnerId: `r-${name}`, clusterId: c.id, bootId: 'b', hostname: 'h', agentVersion: '1', dockerVersion: '1', instanceId: '', slots: 4, memoryMb: 2048 },
    's1',
    'server',
  ))!;
  const code = await store.codes.upload(p.id, 'logger', { image: 'busybox' });
  const [taskId] = await store.tasks.queue([
    {
      projectId: p.id, codeId: code.id, codeName: code.name, revisionId: code.latestRevisionId, rev: code.rev,
      retries: 0, retriesDelay: 0, payload: 'x', priority: 0, cluster: name, timeout: 60, delay: 0, label: null,
    },
  ]);
  const [offer] = await store.claims.claim({ id: runner.id, epoch: runner.sessionEpoch, cluster: name }, 1, { acceptDeadlineMs: 10_000, ageingS: 600 });
  return { runnerId: runner.id, taskId: taskId!, leaseId: offer!.leaseId, attempt: offer!.attempt, projectId: p.id, userId: u.id };
}

/** A log frame of the lease at `offset` (stdout unless `stream`), as a runner sends it. */
export const logFrame = (
  l: { leaseId: string; attempt: number },
  offset: number,
  text: string | Buffer,
  final?: { totalBytes: number; crc: number },
  stream = 1,
): LogWrite => ({
  leaseId: l.leaseId,
  attempt: l.attempt,
  offset,
  stream,
  data: Buffer.isBuffer(text) ? text : Buffer.from(text),
  ...(final ? { final } : {}),
});
