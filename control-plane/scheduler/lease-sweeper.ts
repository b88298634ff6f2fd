import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { Dispatcher } from '../dispatch/dispatcher.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import { startLoop, type Loop } from './schedule-loop.ts';

/**
 * The lease sweeper (leader work): returns expired offers to the queue, reclaims leases of
 * runners silent past the lease TTL, and backstops task timeouts: a running task past its
 * timeout (plus the cancel grace) is cancelled through its runner, or timed out here when
 * its runner is gone.
 */
export function startLeaseSweeper(o: {
  store: Store;
  config: ControlPlaneConfig;
  dispatcher: Dispatcher;
  metrics: ControlPlaneMetrics;
  log: Logger;
}): Loop {
  const { store, config, dispatcher, metrics, log } = o;
  const cfg = { leaseTtlMs: config.timers.leaseTtlMs, runnerLossBudget: config.runnerLossBudget };
  return startLoop('lease-sweeper', config.sweepIntervalMs, log, async () => {
    const r = await store.leases.sweep(cfg);
    if (r.expiredOffers) metrics.offerResults.inc({ result: 'expired' }, r.expiredOffers);
    if (r.reclaimed) metrics.reclaimed.inc({ reason: 'runner_lost' }, r.reclaimed);
    if (r.killed) metrics.reclaimed.inc({ reason: 'runner_lost_final' }, r.killed);
    if (r.expiredOffers || r.reclaimed || r.killed) {
      log.info(r, 'leases swept');
      dispatcher.wake('*');
    }
    for (const l of await store.leases.overdue(config.timers.cancelGraceMs)) {
      const s = dispatcher.session(l.runner_id);
      if (s && s.state !== 'closed') {
        s.cancelForTimeout(l.lease_id, l.attempt);
        await store.leases.markCancelSent(l.lease_id);
      } else if (await store.leases.timeOut(l.lease_id, l.attempt)) {
        log.warn({ leaseId: l.lease_id }, 'task timed out while its runner was away');
        dispatcher.wake('*');
      }
    }
  });
}
