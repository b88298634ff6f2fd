import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { Store } from '../store/index.ts';

/** What request handlers need, shared by every request. */
export interface ApiDeps {
  readonly store: Store;
  readonly config: ControlPlaneConfig;
  readonly clock: Clock;
  readonly log: Logger;
  /** Called after tasks were queued, so dispatch can offer them at once. */
  readonly onTasksQueued?: (cluster: string) => void;
}

export interface ApiState {
  deps: ApiDeps;
  reqId: string;
  log: Logger;
  userId?: string;
  projectId?: string;
}
