import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Test } from 'tap';
import {
  LeaseState,
  RunnerFrame,
  RunnerGatewayClient,
  type Offer,
  type ServerFrame,
  type Welcome,
} from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { TestApi } from './api.ts';

type AnyServerFrame = NonNullable<ServerFrame['frame']>;
type ServerKind = AnyServerFrame['$case'];
type ServerValue<K extends ServerKind> = Extract<AnyServerFrame, { $case: K }>['value'];
type AnyRunnerFrame = NonNullable<RunnerFrame['frame']>;
type RunnerKind = AnyRunnerFrame['$case'];
/** A runner frame with any fields left out (they take their protobuf defaults). */
export type PartialRunnerFrame = { [K in RunnerKind]: { $case: K; value: Partial<Extract<AnyRunnerFrame, { $case: K }>['value']> } }[RunnerKind];

/**
 * A hand-driven runner for protocol fault tests: it speaks RunnerGateway.Connect frame by
 * frame, so a test can stop at any step (no Accept, no reading, reject everything).
 */
export interface ProtocolClient {
  readonly runnerId: string;
  readonly call: grpc.ClientDuplexStream<RunnerFrame, ServerFrame>;
  /** Every server frame received so far, in order. */
  readonly received: ServerFrame[];
  /** Resolves when the stream ended or failed (with the reason). */
  readonly closed: Promise<string>;
  welcome: Welcome;
  send(frame: PartialRunnerFrame): void;
  /** The next frame of `kind` not yet taken by an earlier call (waits for it). */
  next<K extends ServerKind>(kind: K, timeoutMs?: number): Promise<ServerValue<K>>;
  /** Absolute credit, as a runner sends it. */
  credit(freeSlots: number, accepting?: boolean): void;
  /** Offers received so far. */
  offers(): Offer[];
  /** Cancels the stream (RST_STREAM), as a dying connection would. */
  cancel(): void;
}

/**
 * Connects a ProtocolClient to `api`'s gateway, sends Hello and waits for Welcome. With
 * `read: false` the client stops consuming server frames right after Welcome (a runner
 * whose event loop or socket is stuck): grpc-js then stops reading from HTTP/2 and the
 * server's flow-control window fills.
 */
export async function connectProtocolClient(
  t: Test,
  api: TestApi,
  cluster: { id: string; token: string },
  o: { runnerId?: string; slots?: number; read?: boolean; inFlight?: Partial<LeaseState>[] } = {},
): Promise<ProtocolClient> {
  const runnerId = o.runnerId ?? `raw-${randomUUID().slice(0, 8)}`;
  const client = new RunnerGatewayClient(`127.0.0.1:${api.cp.grpcPort}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('x-gantry-cluster-id', cluster.id);
  md.set('authorization', `Bearer ${cluster.token}`);
  md.set('x-gantry-runner-id', runnerId);
  const call = client.connect(md);
  t.teardown(() => {
    call.cancel();
    client.close();
  });
  const received: ServerFrame[] = [];
  const consumed = new Set<number>();
  const waiters: (() => void)[] = [];
  const notify = () => {
    for (const w of waiters.splice(0)) w();
  };
  let closedWhy: string | undefined;
  const closed = new Promise<string>((resolve) => {
    call.on('error', (err: grpc.ServiceError) => {
      closedWhy ??= `error ${grpc.status[err.code]}: ${err.details}`;
      resolve(closedWhy);
      notify();
    });
    call.on('end', () => {
      closedWhy ??= 'end';
      resolve(closedWhy);
      notify();
    });
  });
  call.on('data', (f: ServerFrame) => {
    received.push(f);
    if (o.read === false && f.frame?.$case === 'welcome') call.pause();
    notify();
  });

  const next = async <K extends ServerKind>(kind: K, timeoutMs = 15000): Promise<ServerValue<K>> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < received.length; i++) {
        const f = received[i]!.frame;
        if (f?.$case === kind && !consumed.has(i)) {
          consumed.add(i);
          return f.value as ServerValue<K>;
        }
      }
      if (closedWhy) throw new Error(`stream closed (${closedWhy}) while waiting for ${kind}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${kind} frame within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  };

  const send: ProtocolClient['send'] = (frame) => {
    // fromPartial fills in the defaults; its Exact<> typing does not fit a generic wrapper.
    call.write(RunnerFrame.fromPartial({ frame } as Parameters<typeof RunnerFrame.fromPartial>[0] & object));
  };
  send({
    $case: 'hello',
    value: {
      runnerId,
      bootId: randomUUID(),
      clusterId: cluster.id,
      protocolVersion: 1,
      agentVersion: 'test',
      dockerVersion: 'none',
      hostname: 'protocol-client',
      capacity: { slots: o.slots ?? 1, memoryMb: 512 },
      inFlight: (o.inFlight ?? []).map((l) => LeaseState.fromPartial(l)),
    },
  });
  const welcome = await next('welcome');
  let creditSeq = 0;
  let offersSeen = 0;
  const pc: ProtocolClient = {
    runnerId,
    call,
    received,
    closed,
    welcome,
    send,
    next,
    credit(freeSlots, accepting = true) {
      for (const f of received) if (f.frame?.$case === 'offer') offersSeen = Math.max(offersSeen, Number(f.frame.value.offerSeq));
      send({ $case: 'credit', value: { seq: ++creditSeq, accepting, freeSlots, freeMemoryMb: 0, offersSeenThrough: offersSeen } });
    },
    offers() {
      return received.flatMap((f) => (f.frame?.$case === 'offer' ? [f.frame.value] : []));
    },
    cancel() {
      call.cancel();
    },
  };
  return pc;
}
