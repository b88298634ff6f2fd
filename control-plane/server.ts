import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../lib/clock.ts';
import { newId, type IdSource } from '../lib/ids.ts';
import type { Logger } from '../lib/logger.ts';
import type { ControlPlaneConfig } from './config.ts';
import { Dispatcher } from './dispatch/dispatcher.ts';
import { startGateway, type Gateway } from './grpc/gateway.ts';
import { createApp } from './http/app.ts';
import { answerClientErrors, answerOtherProtocolErrors } from './http/client-error.ts';
import { ControlPlaneMetrics } from './metrics.ts';
import { leaseSweeperJob } from './scheduler/lease-sweeper.ts';
import { promotionJob, scheduleJob } from './scheduler/schedule-loop.ts';
import { slotReconcilerJob } from './scheduler/slot-reconciler.ts';
import { openStore, type Store } from './store/index.ts';
import { createCoordinator } from './coord/index.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { autoscalerJob } from '../autoscaler/loop.ts';
import { Providers, checkTuning } from '../autoscaler/sources.ts';
import { runLeaderWork, type LeaderJob, type LeaderWork } from './coord/leader.ts';
import type { CoordEvent, Coordinator } from './coord/types.ts';

export interface ControlPlane {
  /** Base URL of the REST API, e.g. http://127.0.0.1:8080 (the API is under /2/). */
  readonly url: string;
  readonly store: Store;
  /** The runner gateway's gRPC port. */
  readonly grpcPort: number;
  readonly dispatcher: Dispatcher;
  readonly coord: Coordinator;
  /** The autoscaler's providers (the host's local runner processes, EC2). */
  readonly providers: Providers;
  readonly metrics: ControlPlaneMetrics;
  readonly state: 'running' | 'stopping' | 'stopped';
  stop(): Promise<void>;
}

export interface StartOptions {
  clock?: Clock;
  ids?: IdSource;
  /** An already open store (tests share one); otherwise opened from the config. */
  store?: Store;
  /** Stand for leadership and run the leader loops: schedules, the lease sweeper... (default true). */
  scheduler?: boolean;
  /** A coordinator to use instead of the one the config names (tests). */
  coordinator?: Coordinator;
  /** A local cluster's runner token when the store keeps none sealed (the embedded start). */
  localToken?: (clusterId: string) => string | undefined;
  /** Extra environment for runner processes the local provider launches (tests). */
  localEnv?: Record<string, string>;
}

/** Starts the control plane: store, REST API and leader loops. `stop()` undoes all of it. */
export async function startControlPlane(config: ControlPlaneConfig, log: Logger, o: StartOptions = {}): Promise<ControlPlane> {
  const clock = o.clock ?? systemClock;
  const tuning = { tickMs: config.autoscaleTickMs, ...checkTuning(config.autoscaleTuning) };
  const ids = o.ids ?? newId;
  const waitMs = config.dbStartWaitSeconds === 0 ? Number.MAX_SAFE_INTEGER : config.dbStartWaitSeconds * 1000;
  const store = o.store ?? (await openStore(config, log.child({ component: 'store' }), clock, ids, waitMs));
  // The quotas this process enforces are its configuration's, whoever opened the store.
  store.quotas.useDefaults(config.quotas, config.quotaRetryAfterS);
  // Cluster secrets: keys from GANTRY_SECRET_KEYS, else a key file in the data directory.
  // A store handed in (main.ts, tests) keeps the keys its opener gave it.
  if (!o.store || config.secretKeys) {
    store.clusters.useSecrets(
      loadSecretBox({
        keys: config.secretKeys,
        dataDir: config.dataDir,
        shared: Boolean(config.databaseUrl),
        warn: (m, f) => log.warn(f, m),
      }),
    );
  }
  const metrics = new ControlPlaneMetrics();
  const coord = o.coordinator ?? createCoordinator(config, log.child({ component: 'coord' }));
  const dispatcher = new Dispatcher(store, config, log.child({ component: 'dispatch' }), coord, metrics);
  let state: ControlPlane['state'] = 'running';

  // What other replicas tell this one: work to offer, cancels and drains for runners whose
  // streams it holds.
  coord.onEvent((e: CoordEvent) => {
    if (e.type === 'ready') {
      if (e.cluster === '*') dispatcher.slotsFreed();
      else dispatcher.wake(e.cluster);
      return;
    }
    if (e.type === 'instances') {
      void dispatcher.refreshHeld();
      return;
    }
    const s = dispatcher.session(e.runnerId);
    if (!s || s.state === 'closed') return;
    if (e.type === 'cancel') void s.sendPendingCancels().catch((err) => log.warn({ err: (err as Error).message }, 'could not send cancel'));
    else if (e.type === 'timeout') {
      s.cancelForTimeout(e.leaseId, e.attempt);
      void store.leases.markCancelSent(e.leaseId).catch(() => undefined);
    }
  });
  coord.onHealth((healthy) => {
    metrics.coordinatorUp.set(healthy ? 1 : 0);
    log[healthy ? 'info' : 'warn']({ kind: coord.kind }, healthy ? 'coordinator healthy' : 'coordinator unreachable');
    if (healthy) dispatcher.slotsFreed();
  });
  coord.onLeadership(({ signal }) => {
    metrics.isLeader.set(1);
    signal.addEventListener('abort', () => metrics.isLeader.set(0), { once: true });
  });
  // A lease that ended frees its concurrency slot at once (the reconciler is the backstop).
  const unsubscribe = store.leases.onEnded((ids) => {
    void coord.release(ids).then(
      (freed) => {
        if (freed === 0) return;
        dispatcher.slotsFreed();
        coord.publish({ type: 'ready', cluster: '*' });
      },
      (err) => log.warn({ err: (err as Error).message }, 'could not free concurrency slots'),
    );
  });

  const app = createApp({
    store,
    config,
    clock,
    log: log.child({ component: 'http' }),
    metrics,
    coordStatus: () => coord.status(),
    draining: () => state !== 'running',
    handOff: (task) => dispatcher.handOff(task),
    onTasksQueued: (cluster) => {
      dispatcher.wake(cluster);
      coord.publish({ type: 'ready', cluster });
    },
    onInstancesChanged: () => {
      void dispatcher.refreshHeld();
      coord.publish({ type: 'instances' });
    },
    onCancelRequested: (runnerId) => {
      const s = dispatcher.session(runnerId);
      if (!s) {
        coord.publish({ type: 'cancel', runnerId });
        return;
      }
      void s.sendPendingCancels().catch((err) => log.warn({ err: (err as Error).message }, 'could not send cancel'));
    },
  });
  // Host-less HTTP/1.1 requests reach the app, which refuses them as JSON (Node's own 400 has no body).
  const server = http.createServer({ requireHostHeader: false }, app.callback());
  server.keepAliveTimeout = 5000;
  answerClientErrors(server);
  answerOtherProtocolErrors(server);
  let gateway: Gateway | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    gateway = await startGateway({ store, config, dispatcher, metrics, log: log.child({ component: 'gateway' }) });
    await coord.start();
    metrics.coordinatorUp.set(coord.status().healthy ? 1 : 0);
  } catch (err) {
    unsubscribe();
    server.close();
    await gateway?.stop().catch(() => undefined);
    await coord.stop().catch(() => undefined);
    if (!o.store) await store.close().catch(() => undefined);
    throw err;
  }
  dispatcher.start(config.dispatchTickMs);
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = config.publicUrl ?? `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`;
  const providers = new Providers({
    store,
    config,
    log: log.child({ component: 'autoscaler' }),
    localEndpoint: `127.0.0.1:${gateway.port}`,
    ...(o.localToken ? { localToken: o.localToken } : {}),
    ...(o.localEnv ? { localEnv: o.localEnv } : {}),
  });
  let leaderWork: LeaderWork | undefined;
  if (o.scheduler ?? true) {
    const onReady = (cluster: string) => {
      dispatcher.wake(cluster);
      coord.publish({ type: 'ready', cluster });
    };
    const jobs: LeaderJob[] = [
      scheduleJob({ store, clock, everyMs: config.schedulerTickMs, log: log.child({ component: 'scheduler' }) }),
      promotionJob({ store, clock, everyMs: config.dispatchTickMs, onReady }),
      leaseSweeperJob({ store, config, dispatcher, coord, metrics, log: log.child({ component: 'sweeper' }) }),
      slotReconcilerJob({
        store,
        coord,
        everyMs: Math.min(config.slotReconcileMs, Math.floor(config.timers.leaseTtlMs / 2)),
        metrics,
        log: log.child({ component: 'slots' }),
        onFreed: () => onReady('*'),
      }),
      autoscalerJob({
        store,
        providers,
        clock,
        log: log.child({ component: 'autoscaler' }),
        everyMs: config.autoscaleTickMs,
        tuning,
        onInstancesChanged: () => {
          void dispatcher.refreshHeld();
          coord.publish({ type: 'instances' });
        },
      }),
    ];
    leaderWork = runLeaderWork(coord, jobs, log.child({ component: 'leader' }));
  }
  log.info({ url, grpcPort: gateway.port, engine: store.db.engine, coordinator: coord.kind }, 'control plane listening');
  const gw = gateway;

  let stopping: Promise<void> | undefined;
  return {
    url,
    store,
    grpcPort: gw.port,
    dispatcher,
    coord,
    providers,
    metrics,
    get state() {
      return state;
    },
    stop() {
      stopping ??= (async () => {
        // Health flips first (readyz and grpc.health NOT_SERVING); runners are asked to
        // reconnect to another replica, their tasks running on; leader work stops and the
        // etcd lease is revoked so a successor is elected now; the API server stops last.
        state = 'stopping';
        dispatcher.stop();
        unsubscribe();
        const results = await Promise.allSettled([gw.stop(), leaderWork?.stop()]);
        results.push(...(await Promise.allSettled([providers.close()])));
        results.push(...(await Promise.allSettled([coord.stop()])));
        results.push(
          ...(await Promise.allSettled([
            new Promise<void>((resolve) => {
              server.close(() => resolve());
              server.closeIdleConnections();
              setTimeout(() => server.closeAllConnections(), 2000).unref();
            }),
          ])),
        );
        if (!o.store) results.push(...(await Promise.allSettled([store.close()])));
        state = 'stopped';
        for (const r of results) if (r.status === 'rejected') log.warn({ err: r.reason }, 'error while stopping');
      })();
      return stopping;
    },
  };
}

