import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { Store } from '../store/index.ts';
import type { RunnerHub } from '../dispatch/hub.ts';
import type { CoordStatus } from '../coord/types.ts';
import type { StatsRecorder } from '../series/recorder.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { LogFeed } from '../live/log-feed.ts';

/** What the API asks of dispatch. */
export type ApiHub = Pick<RunnerHub, 'enqueue' | 'tasksReady' | 'cancelRequested' | 'instancesChanged'>;

/** What request handlers need, shared by every request. */
export interface ApiDeps {
  readonly store: Store;
  readonly config: ControlPlaneConfig;
  readonly clock: Clock;
  readonly log: Logger;
  /** Dispatch: tasks queued, cancels requested, instances changed (dispatch/hub.ts). */
  readonly hub: ApiHub;
  /** The coordinator's view (etcd or local), for /readyz. */
  readonly coordStatus?: () => CoordStatus;
  /** Asks the coordinator's backend now (etcd), for /healthcheck. */
  readonly coordPing?: () => Promise<boolean>;
  /** True while this replica drains (graceful stop): /readyz fails so balancers move on. */
  readonly draining?: () => boolean;
  /** Live logs: followers of task and execution logs (live/log-feed.ts). */
  readonly feed: LogFeed;
  /** Prometheus metrics: served at /metrics, and counting requests. */
  readonly metrics?: ControlPlaneMetrics;
  /** Records third-party workers' machine stats (workers.status_report) with the runners'. */
  readonly stats?: StatsRecorder;
}

export interface ApiState {
  deps: ApiDeps;
  reqId: string;
  log: Logger;
  userId?: string;
  /** The cluster whose runner token authenticated the request (third-party workers). */
  clusterId?: string;
  projectId?: string;
  /** The query string, validated and normalized against the endpoint's schema (schema/endpoint.ts). */
  query?: Record<string, unknown>;
  /** The JSON body, validated and normalized against the endpoint's schema. */
  body?: Record<string, unknown>;
}

/**
 * Every router's options: paths match case-sensitively, as the OpenAPI document writes them
 * (`/2/Clusters` is no route). A trailing slash still matches (`strict` off).
 */
export const ROUTER_OPTIONS = { sensitive: true } as const;
