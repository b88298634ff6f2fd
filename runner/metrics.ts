import { Counter, Gauge, Registry } from 'prom-client';
import { collectProcessMetrics } from '../lib/process-metrics.ts';

/** The runner's Prometheus metrics. */
export class RunnerMetrics {
  readonly registry = new Registry();
  readonly running = new Gauge({ name: 'gantry_runner_tasks_running', help: 'Tasks running on this runner', registers: [this.registry] });
  readonly tasks = new Counter({
    name: 'gantry_runner_tasks_total',
    help: 'Tasks this runner finished, by outcome',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly imagePulls = new Counter({
    name: 'gantry_runner_image_pulls_total',
    help: 'Images tasks needed that were not present: pulled, failed, shared (waited for a pull under way), remembered (failed at once from a recent failure)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly reconnects = new Counter({ name: 'gantry_runner_reconnects_total', help: 'Control stream reconnects', registers: [this.registry] });
  readonly frames = new Counter({
    name: 'gantry_runner_frames_total',
    help: 'Runner protocol frames',
    labelNames: ['type', 'dir'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectProcessMetrics(this.registry);
  }
}
