import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../lib/clock.ts';
import { newId, type IdSource } from '../lib/ids.ts';
import type { Logger } from '../lib/logger.ts';
import type { ControlPlaneConfig } from './config.ts';
import { createApp } from './http/app.ts';
import { startScheduleLoop, type Loop } from './scheduler/schedule-loop.ts';
import { openStore, type Store } from './store/index.ts';

export interface ControlPlane {
  /** Base URL of the REST API, e.g. http://127.0.0.1:8080 (the API is under /2/). */
  readonly url: string;
  readonly store: Store;
  readonly state: 'running' | 'stopping' | 'stopped';
  stop(): Promise<void>;
}

export interface StartOptions {
  clock?: Clock;
  ids?: IdSource;
  /** An already open store (tests share one); otherwise opened from the config. */
  store?: Store;
  /** Run the schedule loop (default true). */
  scheduler?: boolean;
}

/** Starts the control plane: store, REST API and leader loops. `stop()` undoes all of it. */
export async function startControlPlane(config: ControlPlaneConfig, log: Logger, o: StartOptions = {}): Promise<ControlPlane> {
  const clock = o.clock ?? systemClock;
  const ids = o.ids ?? newId;
  const waitMs = config.dbStartWaitSeconds === 0 ? Number.MAX_SAFE_INTEGER : config.dbStartWaitSeconds * 1000;
  const store = o.store ?? (await openStore(config, log.child({ component: 'store' }), clock, ids, waitMs));
  const app = createApp({ store, config, clock, log: log.child({ component: 'http' }) });
  const server = http.createServer(app.callback());
  server.keepAliveTimeout = 5000;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
  } catch (err) {
    if (!o.store) await store.close().catch(() => undefined);
    throw err;
  }
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = config.publicUrl ?? `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`;
  const loops: Loop[] = [];
  if (o.scheduler ?? true) {
    loops.push(startScheduleLoop({ store, clock, everyMs: config.schedulerTickMs, log: log.child({ component: 'scheduler' }) }));
  }
  log.info({ url, engine: store.db.engine }, 'control plane listening');

  let state: ControlPlane['state'] = 'running';
  let stopping: Promise<void> | undefined;
  return {
    url,
    store,
    get state() {
      return state;
    },
    stop() {
      stopping ??= (async () => {
        state = 'stopping';
        // Every cleanup runs even if one fails.
        const results = await Promise.allSettled([
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
