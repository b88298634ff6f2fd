import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { RunnerHub } from '../dispatch/hub.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';

/**
 * The lease sweeper (leader work): returns expired offers to the queue, reclaims leases of
 * runners silent past the lease TTL, and backstops task timeouts: a running task past its
 * timeout (plus the cancel grace) is cancelled through its runner — whichever replica holds
 * its stream — or timed out here when its runner is connected nowhere.
 */
export function leaseSweeperJob(o: {
  store: Store;
  config: ControlPlaneConfig;
  hub: RunnerHub;
  metrics: ControlPlaneMetrics;
  log: Logger;
}): LeaderJob {
  const { store, config, hub, metrics, log } = o;
  const cfg = { leaseTtlMs: config.timers.leaseTtlMs, runnerLossBudget: config.runnerLossBudget };
  return {
    name: 'lease-sweeper',
    everyMs: config.sweepIntervalMs,
    async tick(fence, signal) {
      const { ended, ...r } = await store.outcomes.sweep(cfg, 500, fence);
      hub.leasesEnded(ended);
      if (r.expiredOffers) metrics.offerResults.inc({ result: 'expired' }, r.expiredOffers);
      if (r.reclaimed) metrics.reclaimed.inc({ reason: 'runner_lost' }, r.reclaimed);
      if (r.killed) metrics.reclaimed.inc({ reason: 'runner_lost_final' }, r.killed);
      if (r.expiredOffers || r.reclaimed || r.killed) {
        log.info(r, 'leases swept');
        hub.tasksReady('*');
      }
      for (const l of await store.leases.overdue(config.timers.cancelGraceMs)) {
        if (signal.aborted) return;
        if (await hub.timeoutOverdue(l, () => store.runners.connectedRecently(l.runnerId, config.timers.sessionDeadAfterMs))) continue;
        if (await store.outcomes.timeOut(l.leaseId, l.attempt, fence)) {
          hub.leasesEnded([l.leaseId]);
          log.warn({ leaseId: l.leaseId }, 'task timed out while its runner was away');
          hub.capacity('*');
        }
      }
    },
  };
}
