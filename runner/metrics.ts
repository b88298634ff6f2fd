import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

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
  readonly reconnects = new Counter({ name: 'gantry_runner_reconnects_total', help: 'Control stream reconnects', registers: [this.registry] });
  readonly frames = new Counter({
    name: 'gantry_runner_frames_total',
    help: 'Runner protocol frames',
    labelNames: ['type', 'dir'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'gantry_runner_' });
  }
}
