import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../lib/clock.ts';
import { newId, type IdSource } from '../lib/ids.ts';
import type { Logger } from '../lib/logger.ts';
import type { ControlPlaneConfig } from './config.ts';
import { Dispatcher } from './dispatch/dispatcher.ts';
import { startGateway, type Gateway } from './grpc/gateway.ts';
import { createApp } from './http/app.ts';
import { ControlPlaneMetrics } from './metrics.ts';
import { startLeaseSweeper } from './scheduler/lease-sweeper.ts';
import { startScheduleLoop, type Loop } from './scheduler/schedule-loop.ts';
import { openStore, type Store } from './store/index.ts';

export interface ControlPlane {
  /** Base URL of the REST API, e.g. http://127.0.0.1:8080 (the API is under /2/). */
  readonly url: string;
  readonly store: Store;
  /** The runner gateway's gRPC port. */
  readonly grpcPort: number;
  readonly dispatcher: Dispatcher;
  readonly metrics: ControlPlaneMetrics;
  readonly state: 'running' | 'stopping' | 'stopped';
  stop(): Promise<void>;
}

export interface StartOptions {
  clock?: Clock;
  ids?: IdSource;
  /** An already open store (tests share one); otherwise opened from the config. */
  store?: Store;
  /** Run the leader loops: schedules and the lease sweeper (default true). */
  scheduler?: boolean;
}

/** Starts the control plane: store, REST API and leader loops. `stop()` undoes all of it. */
export async function startControlPlane(config: ControlPlaneConfig, log: Logger, o: StartOptions = {}): Promise<ControlPlane> {
  const clock = o.clock ?? systemClock;
  const ids = o.ids ?? newId;
  const waitMs = config.dbStartWaitSeconds === 0 ? Number.MAX_SAFE_INTEGER : config.dbStartWaitSeconds * 1000;
  const store = o.store ?? (await openStore(config, log.child({ component: 'store' }), clock, ids, waitMs));
  const metrics = new ControlPlaneMetrics();
  const dispatcher = new Dispatcher(store, config, log.child({ component: 'dispatch' }));
  const app = createApp({
    store,
    config,
    clock,
    log: log.child({ component: 'http' }),
    metrics,
    onTasksQueued: (cluster) => dispatcher.wake(cluster),
    onCancelRequested: (runnerId) => {
      void dispatcher
        .session(runnerId)
        ?.sendPendingCancels()
        .catch((err) => log.warn({ err: (err as Error).message }, 'could not send cancel'));
    },
  });
  const server = http.createServer(app.callback());
  server.keepAliveTimeout = 5000;
  let gateway: Gateway | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    gateway = await startGateway({ store, config, dispatcher, metrics, log: log.child({ component: 'gateway' }) });
  } catch (err) {
    server.close();
    if (!o.store) await store.close().catch(() => undefined);
    throw err;
  }
  dispatcher.start(config.dispatchTickMs);
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = config.publicUrl ?? `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`;
  const loops: Loop[] = [];
  if (o.scheduler ?? true) {
    loops.push(startScheduleLoop({ store, clock, everyMs: config.schedulerTickMs, log: log.child({ component: 'scheduler' }) }));
    loops.push(startLeaseSweeper({ store, config, dispatcher, metrics, log: log.child({ component: 'sweeper' }) }));
  }
  log.info({ url, grpcPort: gateway.port, engine: store.db.engine }, 'control plane listening');
  const gw = gateway;

  let state: ControlPlane['state'] = 'running';
  let stopping: Promise<void> | undefined;
  return {
    url,
    store,
    grpcPort: gw.port,
    dispatcher,
    metrics,
    get state() {
      return state;
    },
    stop() {
      stopping ??= (async () => {
        state = 'stopping';
        dispatcher.stop();
        // Every cleanup runs even if one fails. Runners are asked to reconnect elsewhere;
        // their tasks keep running.
        const results = await Promise.allSettled([
          gw.stop(),
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeIdleConnections();
            setTimeout(() => server.closeAllConnections(), 2000).unref();
          }),
          ...loops.map((l) => l.stop()),
        ]);
        if (!o.store) results.push(...(await Promise.allSettled([store.close()])));
        state = 'stopped';
        for (const r of results) if (r.status === 'rejected') log.warn({ err: r.reason }, 'error while stopping');
      })();
      return stopping;
    },
  };
}
