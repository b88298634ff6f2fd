import { clusterEndpoints } from './clusters.ts';
import { codeEndpoints } from './codes.ts';
import { deliveryEndpoints } from './deliveries.ts';
import type { Endpoint } from './endpoint.ts';
import { executionEndpoints } from './executions.ts';
import { queueEndpoints } from './queue.ts';
import { scheduleEndpoints } from './schedules.ts';
import { projectEndpoints, systemEndpoints } from './system.ts';
import { taskEndpoints } from './tasks.ts';
import { workerEndpoints } from './workers.ts';

/** Every endpoint the control plane serves, in the document's order. */
export const ENDPOINTS: readonly Endpoint[] = [
  ...systemEndpoints,
  ...codeEndpoints,
  ...taskEndpoints,
  ...executionEndpoints,
  ...deliveryEndpoints,
  ...scheduleEndpoints,
  ...queueEndpoints,
  ...clusterEndpoints,
  ...workerEndpoints,
  ...projectEndpoints,
];

/** The endpoint with this operationId (throws for an unknown one: a typo in a router). */
export function ep(id: string): Endpoint {
  const e = ENDPOINTS.find((x) => x.id === id);
  if (!e) throw new Error(`no endpoint ${id} in the API schema`);
  return e;
}
