import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import {
  ReconnectReason,
  RunnerGatewayService,
  type CodeChunk,
  type FetchCodeRequest,
  type LogAck,
  type LogFrame,
  type RunnerFrame,
  type ServerFrame,
} from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { Dispatcher } from '../dispatch/dispatcher.ts';
import type { RunnerHub } from '../dispatch/hub.ts';
import type { StatsRecorder } from '../series/recorder.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import { handleLogStream } from './logs.ts';
import { ClusterPolicyCache } from './policy-cache.ts';
import { RunnerSerial } from './serial.ts';
import { RunnerSession } from './session.ts';

export const GATEWAY_SERVICE = 'gantry.runner.v1.RunnerGateway';

export interface Gateway {
  readonly port: number;
  /** grpc.health.v1 status: NOT_SERVING while the replica drains. */
  setServing(serving: boolean): void;
  /** Asks every runner to reconnect elsewhere, then stops the server. */
  stop(): Promise<void>;
}

interface Deps {
  store: Store;
  config: ControlPlaneConfig;
  dispatcher: Dispatcher<RunnerSession>;
  hub: RunnerHub<RunnerSession>;
  metrics: ControlPlaneMetrics;
  clock: Clock;
  /** Where beats' machine stats are recorded. */
  stats: StatsRecorder;
  /** The program's logger, bound to no component (the gateway binds its parts'). */
  log: Logger;
}

function unauthenticated(details: string): Partial<grpc.StatusObject> {
  return { code: grpc.status.UNAUTHENTICATED, details };
}

/** The cluster a call's credentials (x-gantry-cluster-id, authorization: Bearer) name, or an error text. */
async function authenticate(store: Store, md: grpc.Metadata): Promise<{ clusterId: string } | { error: string }> {
  const clusterId = String(md.get('x-gantry-cluster-id')[0] ?? '');
  const auth = String(md.get('authorization')[0] ?? '');
  const m = /^Bearer\s+(\S+)$/.exec(auth);
  if (!clusterId || !m) return { error: 'send x-gantry-cluster-id and authorization: Bearer <cluster token> metadata' };
  const cluster = await store.clusters.authenticate(clusterId, m[1]!);
  return cluster ? { clusterId: cluster.id } : { error: 'invalid cluster id or token' };
}

/** Starts the RunnerGateway and grpc.health.v1 on the configured gRPC port. */
export async function startGateway(d: Deps): Promise<Gateway> {
  const { store, config, dispatcher, hub, clock, metrics } = d;
  // The program's logger, without a component: each part binds its own (a child's binding
  // of a key its parent has would write that key twice in one line).
  const log = d.log.child({ component: 'gateway' });
  const server = new grpc.Server({
    // Transport keepalive is connection hygiene only; liveness is the Beat frames.
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.http2.min_ping_interval_without_data_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': 4 * 1024 * 1024,
  });
  const health = new HealthImplementation({ '': 'SERVING', [GATEWAY_SERVICE]: 'SERVING' });
  health.addToServer(server);
  // One runner's result and log writes run one at a time (they update the same task rows).
  const serial = new RunnerSerial();
  const sessionDeps = {
    serial,
    policies: new ClusterPolicyCache((id) => store.clusters.containerPolicy(id), config.timers.beatIntervalMs),
    store,
    config,
    metrics,
    log: d.log.child({ component: 'session' }),
    clock,
    hub,
    stats: d.stats,
  };

  server.addService(RunnerGatewayService, {
    connect: (call: grpc.ServerDuplexStream<RunnerFrame, ServerFrame>) => {
      // Every path ends in a status: a rejection here would be unhandled and stop the process.
      authenticate(store, call.metadata)
        .then((a) => {
          if ('error' in a) return call.emit('error', unauthenticated(a.error));
          new RunnerSession(call, a.clusterId, sessionDeps);
        })
        .catch((err) => call.emit('error', { code: grpc.status.UNAVAILABLE, details: `control plane unavailable: ${(err as Error).message}` }));
    },
    logs: (call: grpc.ServerDuplexStream<LogFrame, LogAck>) => {
      // The runner is named in metadata and must belong to the authenticated cluster.
      const runnerId = String(call.metadata.get('x-gantry-runner-id')[0] ?? '');
      const who = authenticate(store, call.metadata).then(async (a) => {
        if ('error' in a) return undefined;
        const r = await store.runners.get(runnerId);
        return r && r.clusterId === a.clusterId ? r.id : undefined;
      });
      who
        .then((id) => {
          if (!id) call.emit('error', unauthenticated('invalid cluster credentials or unknown x-gantry-runner-id'));
        })
        .catch(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'control plane unavailable' }));
      handleLogStream(call, () => who.catch(() => undefined), { store, metrics, serial, log: d.log.child({ component: 'logs' }) });
    },
    fetchCode: (call: grpc.ServerWritableStream<FetchCodeRequest, CodeChunk>) => {
      void (async () => {
        const a = await authenticate(store, call.metadata);
        if ('error' in a) return call.emit('error', unauthenticated(a.error));
        const lease = await store.leases.codeOf(call.request.leaseId);
        const cluster = await store.clusters.byId(a.clusterId);
        if (!lease || !cluster || lease.cluster !== cluster.name || lease.codeRevisionId !== call.request.revisionId) {
          return call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'no lease of this cluster runs that code revision' });
        }
        const zip = await store.codes.archive(call.request.revisionId);
        if (!zip) return call.emit('error', { code: grpc.status.NOT_FOUND, details: 'that revision has no zip package' });
        for (let i = 0; i < zip.length; i += 1024 * 1024) call.write({ data: zip.subarray(i, i + 1024 * 1024) });
        call.end();
      })().catch((err) => call.emit('error', { code: grpc.status.UNAVAILABLE, details: (err as Error).message }));
    },
  });

  const creds =
    config.grpcTlsCert && config.grpcTlsKey
      ? grpc.ServerCredentials.createSsl(null, [
          { cert_chain: fs.readFileSync(config.grpcTlsCert), private_key: fs.readFileSync(config.grpcTlsKey) },
        ])
      : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${config.grpcHost}:${config.grpcPort}`, creds, (err, p) => (err ? reject(err) : resolve(p))),
  );
  log.info({ port, tls: Boolean(config.grpcTlsCert) }, 'runner gateway listening');

  return {
    port,
    setServing(serving) {
      const s = serving ? 'SERVING' : 'NOT_SERVING';
      health.setStatus('', s);
      health.setStatus(GATEWAY_SERVICE, s);
    },
    async stop() {
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(GATEWAY_SERVICE, 'NOT_SERVING');
      for (const s of dispatcher.all()) s.reconnect(ReconnectReason.RECONNECT_REASON_SERVER_SHUTDOWN, 500);
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
    },
  };
}
