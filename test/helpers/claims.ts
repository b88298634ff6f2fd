import { newId } from '../../lib/ids.ts';
import { ClaimsStore, type Offer } from '../../control-plane/store/claims.ts';
import type { Db } from '../../control-plane/store/db.ts';
import type { Store } from '../../control-plane/store/index.ts';

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
