import { createApiServer, isLoopback } from './http/server.ts';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../lib/clock.ts';
import { startWith, type ProgramState } from '../lib/lifecycle.ts';
import { newId, type IdSource } from '../lib/ids.ts';
import type { Logger } from '../lib/logger.ts';
import type { ControlPlaneConfig } from './config.ts';
import { Dispatcher } from './dispatch/dispatcher.ts';
import { RunnerHub } from './dispatch/hub.ts';
import { startGateway } from './grpc/gateway.ts';
import type { RunnerSession } from './grpc/session.ts';
import { createApp } from './http/app.ts';
import { acceptUpgrades } from './http/log-socket.ts';
import { LogFeed } from './live/log-feed.ts';
import { Deliverer } from './outbox/deliverer.ts';
import { answerClientErrors, answerOtherProtocolErrors } from './http/client-error.ts';
import { ControlPlaneMetrics } from './metrics.ts';
import { startMetricsServer } from './http/metrics-endpoint.ts';
import { leaseSweeperJob } from './scheduler/lease-sweeper.ts';
import { promotionJob, scheduleJob } from './scheduler/schedule-loop.ts';
import { slotReconcilerJob } from './scheduler/slot-reconciler.ts';
import { retentionJob } from './scheduler/retention.ts';
import { queueLoadJob } from './scheduler/queue-load.ts';
import { StatsRecorder } from './series/recorder.ts';
import { rollupJob } from './series/rollup.ts';
import { openStore, type Store } from './store/index.ts';
import { createCoordinator } from './coord/index.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { checkTuning, createAutoscaler, type Autoscaler } from '../autoscaler/index.ts';
import { runLeaderWork, type LeaderJob } from './coord/leader.ts';
import { watchDatabaseForLeadership } from './coord/db-watch.ts';
import type { Coordinator } from './coord/types.ts';
import { presentTask } from './http/present.ts';

export interface ControlPlane {
  /** Base URL of the REST API, e.g. http://127.0.0.1:8080 (the API is under /2/). */
  readonly url: string;
  readonly store: Store;
  /** The runner gateway's gRPC port. */
  readonly grpcPort: number;
  readonly dispatcher: Dispatcher<RunnerSession>;
  /** The one door to dispatch (queueing, cancels, instance changes). */
  readonly hub: RunnerHub<RunnerSession>;
  readonly coord: Coordinator;
  /** Live logs' followers on this replica. */
  readonly feed: LogFeed;
  /** The autoscaler, with its providers (the host's local runner processes, EC2). */
  readonly autoscaler: Autoscaler;
  readonly metrics: ControlPlaneMetrics;
  /** This replica's buffer of recorded machine stats (flush() writes it now). */
  readonly stats: StatsRecorder;
  /** Base URL of the separate `/metrics` listener (GANTRY_METRICS_PORT), if there is one. */
  readonly metricsUrl: string | undefined;
  /** `running` once started; `draining` from the first moment of stop; then `stopped` (or `failed` if a release failed). */
  readonly state: ProgramState;
  /** Stops everything start acquired, by `deadline` (ms since the epoch) if given; a second call waits for the first. */
  stop(deadline?: number): Promise<void>;
}

export interface StartOptions {
  clock?: Clock;
  ids?: IdSource;
  /** An already open store (tests share one, the embedded start opens its own); otherwise opened from the config and closed at stop. */
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

/**
 * Starts the control plane: store, REST API, runner gateway, coordinator, dispatch,
 * autoscaler and leader loops. Each step registers its release; a step that fails releases
 * what the steps before it acquired. Stopping drains first — readiness and gRPC health turn
 * NOT_SERVING, runners are asked to reconnect to another replica (their tasks run on) and
 * leader work stops, so a successor is elected now — then releases the rest, last acquired
 * first: the autoscaler, the coordinator (its etcd lease revoked), the REST API, the store.
 */
export async function startControlPlane(config: ControlPlaneConfig, log: Logger, o: StartOptions = {}): Promise<ControlPlane> {
  const clock = o.clock ?? systemClock;
  // An unknown autoscaler tunable fails the start before anything is opened.
  checkTuning(config.autoscaleTuning);
  return startWith(async (releases) => {
    const ids = o.ids ?? newId;
    const store = o.store ?? (await openStore(config, log.child({ component: 'store' }), clock, ids));
    if (!o.store) releases.add('store', () => store.close());
    // The quotas this process enforces are its configuration's, whoever opened the store.
    store.quotas.useDefaults(config.quotas, config.quotaRetryAfterS);
    // Cluster secrets: keys from GANTRY_SECRET_KEYS, else a key file in the data directory;
    // a store handed in with its keys keeps them (they are loaded once per process).
    if ((!o.store || config.secretKeys) && !store.clusters.hasSecrets) {
      store.useSecrets(
        loadSecretBox({ keys: config.secretKeys, dataDir: config.dataDir, shared: Boolean(config.databaseUrl), warn: (m, f) => log.warn(f, m) }),
      );
    }
    // Machine stats recorded from beats (and third-party workers' reports): released just
    // before the store, after the gateway and the API, so the last samples are written.
    const stats = new StatsRecorder({ series: store.series, clock, intervalS: config.statsIntervalS, log: log.child({ component: 'stats' }) });
    stats.start();
    releases.add('stats recorder', () => stats.stop());
    const metrics = new ControlPlaneMetrics();
    const coord = o.coordinator ?? createCoordinator(config, log.child({ component: 'coord' }));
    const dispatcher = new Dispatcher<RunnerSession>(store, config, log.child({ component: 'dispatch' }), coord, clock, metrics);
    const hub = new RunnerHub(store, dispatcher, coord, log.child({ component: 'dispatch' }));
    const stopDispatch = () => {
      dispatcher.stop();
      hub.stop();
    };
    hub.start();
    releases.add('dispatch', stopDispatch);
    metrics.readFrom({
      readGauges: () => store.gauges.read(config.timers.sessionDeadAfterMs),
      databaseUp: () => store.db.ping(),
      freeSlots: () => dispatcher.creditSlots(),
    });
    let state: ProgramState = 'starting';

    coord.onHealth((healthy) => {
      metrics.coordinatorUp.set(healthy ? 1 : 0);
      log[healthy ? 'info' : 'warn']({ kind: coord.kind }, healthy ? 'coordinator healthy' : 'coordinator unreachable');
      if (healthy) dispatcher.slotsFreed();
    });
    coord.onLeadership(({ signal }) => {
      metrics.isLeader.set(1);
      signal.addEventListener('abort', () => metrics.isLeader.set(0), { once: true });
    });
    const feed = new LogFeed(store.db, config.liveLogs, log.child({ component: 'live-logs' }));
    await feed.start();
    // Outcome webhooks and e-mails, sent from every replica; the base URL is known once the API listens.
    let baseUrl: string | undefined;
    const deliverer = new Deliverer({ store, settings: config.deliveries, clock, log: log.child({ component: 'deliveries' }), metrics, baseUrl: () => baseUrl, present: (t) => presentTask(t) });
    await deliverer.start();
    releases.add('deliveries', () => deliverer.stop());
    const app = createApp({
      feed,
      store,
      config,
      clock,
      log: log.child({ component: 'http' }),
      metrics,
      coordStatus: () => coord.status(),
      coordPing: () => coord.ping(),
      draining: () => state !== 'running',
      hub,
      stats,
    });
    const api = createApiServer(app.callback(), {
      ...(config.tls ? { tls: config.tls } : {}),
      log: log.child({ component: 'http' }),
    });
    const server = api.server;
    server.keepAliveTimeout = 5000;
    answerClientErrors(server);
    answerOtherProtocolErrors(server);
    acceptUpgrades(server, app.callback());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    releases.add(
      'REST API',
      () =>
        new Promise<void>((resolve) => {
          api.close();
          server.close(() => resolve());
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), 2000).unref();
        }),
    );
    // Before the REST API closes: followers end, so their connections do not hold the close up.
    releases.add('live logs', () => feed.stop());
    let metricsUrl: string | undefined;
    if (config.metricsPort !== undefined) {
      const ms = await startMetricsServer(metrics, { host: config.metricsHost, port: config.metricsPort, token: config.metricsToken });
      releases.add('metrics listener', () => ms.close());
      metricsUrl = ms.url;
    }
    const gateway = await startGateway({ store, config, dispatcher, hub, clock, metrics, log, stats });
    let gatewayStopped: Promise<void> | undefined;
    const stopGateway = () => (gatewayStopped ??= gateway.stop());
    releases.add('runner gateway', stopGateway);
    await coord.start();
    releases.add('coordinator', () => coord.stop());
    if (coord.kind === 'etcd') {
      // A replica cut from PostgreSQL gives way to one that reaches it (coord/db-watch.ts).
      const watch = watchDatabaseForLeadership({
        coord,
        ping: () => store.db.ping(),
        everyMs: Math.max(250, Math.min(config.leaderDbGraceMs / 4, (config.coordTtlS * 1000) / 4)),
        graceMs: config.leaderDbGraceMs,
      });
      releases.add('database watch', () => watch.stop());
    }
    metrics.coordinatorUp.set(coord.status().healthy ? 1 : 0);
    dispatcher.start(config.dispatchTickMs);
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    const url = config.publicUrl ?? `${api.scheme}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${addr.port}`;
    baseUrl = url;
    const autoscaler = createAutoscaler({
      secrets: store.clusters,
      settings: config,
      local: {
        endpoint: `127.0.0.1:${gateway.port}`,
        ...(o.localToken ? { token: o.localToken } : {}),
        ...(o.localEnv ? { env: o.localEnv } : {}),
      },
      instancesChanged: () => hub.instancesChanged(),
      log: log.child({ component: 'autoscaler' }),
      clock,
    });
    releases.add('autoscaler', () => autoscaler.close());
    let stopLeaderWork: () => Promise<void> = async () => undefined;
    if (o.scheduler ?? true) {
      const onReady = (cluster: string) => hub.tasksReady(cluster);
      const jobs: LeaderJob[] = [
        scheduleJob({ store, clock, everyMs: config.schedulerTickMs, log: log.child({ component: 'scheduler' }) }),
        promotionJob({ store, clock, everyMs: config.dispatchTickMs, onReady }),
        leaseSweeperJob({ store, config, hub, metrics, log: log.child({ component: 'sweeper' }) }),
        slotReconcilerJob({
          store,
          coord,
          everyMs: Math.min(config.slotReconcileMs, Math.floor(config.timers.leaseTtlMs / 2)),
          metrics,
          log: log.child({ component: 'slots' }),
          onFreed: () => onReady('*'),
        }),
        retentionJob({ store, clock, settings: config.retention, metrics, log: log.child({ component: 'retention' }) }),
        ...(config.queueLoadIntervalS > 0
          ? [queueLoadJob({ store, clock, intervalS: config.queueLoadIntervalS, aliveMs: config.timers.sessionDeadAfterMs, log: log.child({ component: 'queue-load' }) })]
          : []),
        rollupJob({ store, clock, statsIntervalS: config.statsIntervalS, log: log.child({ component: 'stats' }) }),
        { name: 'autoscaler', everyMs: autoscaler.everyMs, tick: (fence, signal) => autoscaler.tick(store.autoscale.fleet(fence), signal) },
      ];
      const work = runLeaderWork(coord, jobs, log.child({ component: 'leader' }));
      let stopped: Promise<void> | undefined;
      stopLeaderWork = () => (stopped ??= work.stop());
      releases.add('leader work', stopLeaderWork);
    }
    state = 'running';
    log.info({ url, grpcPort: gateway.port, metricsUrl, engine: store.db.engine, coordinator: coord.kind }, 'control plane listening');
    if (!config.tls && !isLoopback(config.host)) {
      log.warn({ host: config.host }, 'the REST API listens beyond loopback without TLS: OAuth tokens cross the network in clear (set GANTRY_TLS_CERT and GANTRY_TLS_KEY, or serve it behind a TLS proxy)');
    }

    let stopping: Promise<void> | undefined;
    return {
      url,
      store,
      grpcPort: gateway.port,
      dispatcher,
      hub,
      coord,
      feed,
      autoscaler,
      metrics,
      stats,
      metricsUrl,
      get state() {
        return state;
      },
      stop(deadline?: number) {
        stopping ??= (async () => {
          // Drain: readiness fails at once (state), no new offers, gRPC health NOT_SERVING and
          // runners told to reconnect elsewhere, leader work stopped — together.
          state = 'draining';
          stopDispatch();
          await Promise.allSettled([stopGateway(), stopLeaderWork()]);
          try {
            await releases.releaseAll(deadline);
            state = 'stopped';
          } catch (err) {
            state = 'failed';
            log.warn({ err }, 'error while stopping');
          }
        })();
        return stopping;
      },
    };
  });
}
