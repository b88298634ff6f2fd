import type { Logger } from '../../lib/logger.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { Coordinator } from '../coord/types.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';

/**
 * Keeps the coordinator's concurrency slots equal to PostgreSQL's live leases (leader
 * work): a slot whose lease has ended is removed (its holder finished on another replica,
 * or released it while etcd was away), and a live lease of a limited package without a
 * slot gets one back (its replica died and the slot went with its etcd lease, while its
 * runner runs on). Running it at least twice per lease TTL bounds how long a slot can
 * outlive its holder.
 */
export function slotReconcilerJob(o: {
  store: Store;
  coord: Coordinator;
  everyMs: number;
  metrics: ControlPlaneMetrics;
  log: Logger;
  onFreed: () => void;
}): LeaderJob {
  const { store, coord, metrics, log } = o;
  return {
    name: 'slot-reconciler',
    everyMs: o.everyMs,
    async tick(_fence, signal) {
      if (!coord.status().healthy) return;
      const slots = await coord.slots();
      const live = await store.leases.liveAmong(slots.map((s) => s.holder));
      let dropped = 0;
      for (const s of slots) {
        if (signal.aborted) return;
        if (live.has(s.holder)) continue;
        await coord.dropSlot(s);
        dropped++;
      }
      const have = new Set(slots.map((s) => `${s.scope}\n${s.holder}`));
      let restored = 0;
      for (const l of await store.leases.liveLimited()) {
        if (signal.aborted) return;
        if (have.has(`${l.scope}\n${l.leaseId}`)) continue;
        if (await coord.acquire(l.scope, l.limit, l.leaseId)) restored++;
        else {
          metrics.slotConflicts.inc();
          log.error({ leaseId: l.leaseId, scope: l.scope, limit: l.limit }, 'a live lease has no free concurrency slot');
        }
      }
      if (dropped) metrics.slotsReconciled.inc({ action: 'dropped' }, dropped);
      if (restored) metrics.slotsReconciled.inc({ action: 'restored' }, restored);
      if (dropped || restored) log.info({ dropped, restored }, 'concurrency slots reconciled');
      if (dropped) o.onFreed();
    },
  };
}
