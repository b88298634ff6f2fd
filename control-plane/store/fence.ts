import type { Queryable } from './db.ts';
import { GantryError } from '../../lib/errors.ts';

/** What a leader presents with each of its writes: its election term and its name. */
export interface Fence {
  /** Grows with every election (etcd: the create revision of the leader's key). */
  readonly term: number;
  readonly holder: string;
}

/** A leader's write refused because a newer leader has written since. */
export class FencedError extends GantryError {
  constructor(
    readonly term: number,
    readonly current: number | undefined,
  ) {
    super('fenced', `leader term ${term} is stale${current === undefined ? '' : ` (term ${current} has written since)`}; leader work refused`, { kind: 'conflict' });
  }
}

/**
 * Checks the fence inside the caller's transaction, first thing: the row stays locked
 * until the transaction ends, so leader transactions are ordered by term. Without a fence
 * (single-replica callers and tests) it does nothing.
 */
export async function checkFence(q: Queryable, fence: Fence | undefined, name = 'leader'): Promise<void> {
  if (!fence) return;
  const r = await q.query<{ term: string }>(
    `INSERT INTO leader_fence (name, term, holder, updated_at) VALUES ($1, $2, $3, now())
     ON CONFLICT (name) DO UPDATE SET term = EXCLUDED.term, holder = EXCLUDED.holder, updated_at = EXCLUDED.updated_at
       WHERE leader_fence.term <= EXCLUDED.term
     RETURNING term`,
    [name, fence.term, fence.holder],
  );
  if (r.rows.length === 0) {
    const cur = await q.query<{ term: string }>('SELECT term FROM leader_fence WHERE name = $1', [name]);
    throw new FencedError(fence.term, cur.rows[0] ? Number(cur.rows[0].term) : undefined);
  }
}
