/**
 * The no-op executor: no container, no files. Each task "runs" on the next microtask,
 * echoing its payload to stdout and succeeding, so benchmarks measure the dispatch path
 * (thousands of tasks a second) and not Docker. A payload that is a JSON object with
 * `noop_sleep_ms` runs that long instead (cancellable): tests of concurrency limits and
 * failover need tasks that overlap.
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
      if (sleepMs > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, sleepMs);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        if (stopped) return cancelled();
      }
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

/** `{"noop_sleep_ms": N}` in the payload: how long the task "runs" (at most an hour). */
function sleepOf(payload: string | undefined): number {
  if (!payload || payload[0] !== '{' || !payload.includes('noop_sleep_ms')) return 0;
  try {
    const v = (JSON.parse(payload) as { noop_sleep_ms?: unknown }).noop_sleep_ms;
    return typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.min(v, 3_600_000) : 0;
  } catch {
    return 0;
  }
}
