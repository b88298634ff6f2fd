import { collectDefaultMetrics, type Registry } from 'prom-client';

/**
 * prom-client's gauges named like counters. Each is the sum over the `type` label of the
 * gauge of the same name without `_total` (nodejs_active_handles{type} and so on), which
 * stays; promtool's lint refuses a gauge ending in `_total`.
 */
const COUNTER_NAMED_GAUGES = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/**
 * The standard process_* and nodejs_* metrics, without a prefix, as Prometheus' own
 * dashboards and alerts name them; both programs register them this way.
 */
export function collectProcessMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of COUNTER_NAMED_GAUGES) registry.removeSingleMetric(name);
}
