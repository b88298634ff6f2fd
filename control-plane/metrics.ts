import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The control plane's Prometheus metrics (proto/README.md, 9 Metrics), one registry per instance. */
export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly offers = new Counter({ name: 'gantry_offers_total', help: 'Offers sent to runners', registers: [this.registry] });
  readonly offerResults = new Counter({
    name: 'gantry_offer_results_total',
    help: 'What became of offers',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly completions = new Counter({
    name: 'gantry_completions_total',
    help: 'Task results reported by runners',
    labelNames: ['outcome', 'disposition'] as const,
    registers: [this.registry],
  });
  readonly reclaimed = new Counter({
    name: 'gantry_leases_reclaimed_total',
    help: 'Leases taken back from runners',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly sessions = new Gauge({ name: 'gantry_runner_sessions', help: 'Connected runner sessions', registers: [this.registry] });
  readonly creditSlots = new Gauge({ name: 'gantry_runner_credit_slots', help: 'Free slots runners report', registers: [this.registry] });
  readonly frames = new Counter({
    name: 'gantry_stream_frames_total',
    help: 'Runner protocol frames',
    labelNames: ['type', 'dir'] as const,
    registers: [this.registry],
  });
  readonly handOffs = new Counter({
    name: 'gantry_task_handoffs_total',
    help: 'New tasks granted to an idle runner in the same statement that queued them',
    registers: [this.registry],
  });
  readonly logBytes = new Counter({ name: 'gantry_log_bytes_total', help: 'Task log bytes stored', registers: [this.registry] });
  readonly dispatchLatency = new Histogram({
    name: 'gantry_dispatch_latency_seconds',
    help: 'Time from a task being offered to its container starting',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  readonly coordinatorUp = new Gauge({
    name: 'gantry_coordinator_up',
    help: '1 when the coordinator (etcd, or local) is reachable and this replica holds a live session',
    registers: [this.registry],
  });
  readonly isLeader = new Gauge({ name: 'gantry_leader', help: '1 while this replica leads the singleton loops', registers: [this.registry] });
  readonly slotsReconciled = new Counter({
    name: 'gantry_concurrency_slots_reconciled_total',
    help: 'Concurrency slots the leader removed (holder ended) or restored (holder alive, slot lost)',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly slotConflicts = new Counter({
    name: 'gantry_concurrency_slot_conflicts_total',
    help: 'Live leases the reconciler found no free slot for (more live leases than the limit)',
    registers: [this.registry],
  });
  readonly slotRefusals = new Counter({
    name: 'gantry_concurrency_slot_refusals_total',
    help: 'Claimed tasks returned to the queue because no concurrency slot could be taken',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'gantry_cp_' });
  }
}
