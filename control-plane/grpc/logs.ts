import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { Logger } from '../../lib/logger.ts';
import type { LogAck, LogFrame } from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import type { RunnerSerial } from './serial.ts';

/** Frames applied in one transaction at most. */
const MAX_BATCH = 500;

/**
 * A runner's log stream: frames carry byte offsets of each lease's combined log; every
 * frame is answered with the committed offset, so the runner resends exactly what is
 * missing after a drop or a reconnect. The final frame's length and CRC-32 close the log.
 * Frames that arrive while a batch is being stored are stored together, in order.
 */
export function handleLogStream(
  call: ServerDuplexStream<LogFrame, LogAck>,
  runnerId: () => Promise<string | undefined>,
  deps: { store: Store; metrics: ControlPlaneMetrics; serial: RunnerSerial; log: Logger },
): void {
  const inbox: LogFrame[] = [];
  let busy = false;
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

  const drain = async () => {
    busy = true;
    try {
      while (inbox.length > 0 && !closed) {
        const batch = inbox.splice(0, MAX_BATCH);
        const rid = await runnerId();
        if (!rid) {
          for (const f of batch) call.write({ leaseId: f.leaseId, attempt: f.attempt, committedOffset: 0, complete: false, stop: true, frameOffset: f.offset });
          continue;
        }
        const results = await deps.serial.run(rid, () => deps.store.logs.appendMany(
          rid,
          batch.map((f) => ({
            leaseId: f.leaseId,
            attempt: f.attempt,
            offset: Number(f.offset),
            stream: f.stream,
            data: f.data,
            ...(f.final ? { final: { totalBytes: Number(f.totalBytes), crc: f.crc32 } } : {}),
          })),
        ));
        let bytes = 0;
        batch.forEach((f, i) => {
          const r = results[i]!;
          if (!r.stop && r.committed >= Number(f.offset) + f.data.length) bytes += f.data.length;
          if (!closed) {
            call.write({ leaseId: f.leaseId, attempt: f.attempt, committedOffset: r.committed, complete: r.complete, stop: r.stop, frameOffset: f.offset });
          }
        });
        deps.metrics.logBytes.inc(bytes);
      }
    } catch (err) {
      // Unanswered frames are resent by the runner from its acknowledged offset.
      deps.log.warn({ err: (err as Error).message }, 'log frames not stored');
      inbox.length = 0;
    } finally {
      busy = false;
    }
  };

  call.on('data', (f: LogFrame) => {
    inbox.push(f);
    if (!busy) void drain();
  });
}
