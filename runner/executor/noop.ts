/**
 * The no-op executor: no container, no files. Each task "runs" on the next microtask,
 * echoing its payload to stdout and succeeding, so benchmarks measure the dispatch path
 * (thousands of tasks a second) and not Docker. A payload that is a JSON object with
 * `noop_sleep_ms` runs that long instead (cancellable): tests of concurrency limits and
 * failover need tasks that overlap. One with `noop_exit_code` (1 to 255) fails with it: tests
 * of what follows a failure (retries, outcome webhooks) without Docker.
 */
import type { ExecHooks, ExecResult, Execution, Executor, TaskSpec } from './types.ts';

export class NoopExecutor implements Executor {
  readonly kind = 'noop' as const;

  async ping(): Promise<void> {}

  /**
   * Hooks run one microtask after start() returns (never inside it, as with Docker), so the
   * caller has the Execution in hand first; a cancel() or kill() before then yields `cancelled`
   * without onStarted.
   */
  start(spec: TaskSpec, hooks: ExecHooks): Execution {
    let stopped = false;
    let wake: (() => void) | undefined;
    const startedAt = Date.now();
    const sleepMs = sleepOf(spec.payload);
    const cancelled = (): ExecResult => ({ outcome: 'cancelled', exitCode: -1, oomKilled: false, msg: 'cancelled', startedAt, finishedAt: Date.now() });
    const result = Promise.resolve().then(async (): Promise<ExecResult> => {
      if (stopped) return cancelled();
      try {
        hooks.onStarted({ containerId: `noop-${spec.leaseId}`, startedAt, imagePullMs: 0, createMs: 0 });
        if (spec.payload) hooks.onOutput('stdout', Buffer.from(spec.payload));
      } catch {
        // A throwing hook is the caller's bug; the task itself still succeeded.
      }
      // Its timeout holds as Docker's executor holds it: the run is stopped and ends timed_out.
      const limitMs = spec.timeoutS > 0 ? spec.timeoutS * 1000 : Infinity;
      if (sleepMs > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, Math.min(sleepMs, limitMs));
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        if (stopped) return cancelled();
        if (sleepMs > limitMs) {
          return { outcome: 'timed_out', exitCode: -1, oomKilled: false, msg: `timed out after ${spec.timeoutS} s`, startedAt, finishedAt: Date.now() };
        }
      }
      const exit = exitOf(spec.payload);
      if (exit > 0) return { outcome: 'failed', exitCode: exit, oomKilled: false, msg: `exit code ${exit}`, startedAt, finishedAt: Date.now() };
      return { outcome: 'succeeded', exitCode: 0, oomKilled: false, msg: 'exit code 0', startedAt, finishedAt: Date.now() };
    });
    return {
      result,
      cancel: () => {
        stopped = true;
        wake?.();
      },
      kill: async () => {
        stopped = true;
        wake?.();
        await result;
      },
    };
  }

  async leftovers(): Promise<{ containerId: string; taskId: string; leaseId: string; attempt: number; running: boolean }[]> {
    return [];
  }

  async remove(_containerId: string): Promise<void> {}

  async close(): Promise<void> {}
}

/** A number the payload's JSON object gives under `key`, or 0. */
function payloadNumber(payload: string | undefined, key: string): number {
  if (!payload || payload[0] !== '{' || !payload.includes(key)) return 0;
  try {
    const v = (JSON.parse(payload) as Record<string, unknown>)[key];
    return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0;
  } catch {
    return 0;
  }
}

/** `{"noop_sleep_ms": N}` in the payload: how long the task "runs" (at most an hour). */
const sleepOf = (payload: string | undefined) => Math.min(payloadNumber(payload, 'noop_sleep_ms'), 3_600_000);
/** `{"noop_exit_code": N}` in the payload: the exit code it fails with (0: it succeeds). */
const exitOf = (payload: string | undefined) => Math.min(Math.floor(payloadNumber(payload, 'noop_exit_code')), 255);
