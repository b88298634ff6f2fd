import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { Logger } from '../../lib/logger.ts';
import type { LogAck, LogFrame } from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';

/**
 * A runner's log stream: frames carry byte offsets of each lease's combined log; every
 * frame is answered with the committed offset, so the runner resends exactly what is
 * missing after a drop or a reconnect. The final frame's length and CRC-32 close the log.
 */
export function handleLogStream(
  call: ServerDuplexStream<LogFrame, LogAck>,
  runnerId: () => Promise<string | undefined>,
  deps: { store: Store; metrics: ControlPlaneMetrics; log: Logger },
): void {
  let chain = Promise.resolve();
  let closed = false;
  const end = () => {
    closed = true;
  };
  call.on('end', () => {
    end();
    call.end();
  });
  call.on('error', end);
  call.on('cancelled', end);
  call.on('data', (f: LogFrame) => {
    chain = chain
      .then(async () => {
        if (closed) return;
        const rid = await runnerId();
        if (!rid) {
          call.write({ leaseId: f.leaseId, attempt: f.attempt, committedOffset: 0, complete: false, stop: true, frameOffset: Number(f.offset) });
          return;
        }
        const offset = Number(f.offset);
        // An empty frame asks where the server is; a data frame appends at its offset.
        const r = await deps.store.logs.append(f.leaseId, f.attempt, rid, offset, f.stream, f.data);
        if (!r.stop && f.data.length > 0 && r.committed === offset + f.data.length) deps.metrics.logBytes.inc(f.data.length);
        let ack: LogAck = { leaseId: f.leaseId, attempt: f.attempt, committedOffset: r.committed, complete: false, stop: r.stop, frameOffset: offset };
        if (f.final && !r.stop) {
          const fin = await deps.store.logs.finish(f.leaseId, f.attempt, rid, Number(f.totalBytes), f.crc32);
          ack = { leaseId: f.leaseId, attempt: f.attempt, committedOffset: fin.committed, complete: fin.complete, stop: fin.stop, frameOffset: offset };
        }
        if (!closed) call.write(ack);
      })
      .catch((err) => {
        deps.log.warn({ err: (err as Error).message, leaseId: f.leaseId }, 'log frame failed');
      });
  });
}
