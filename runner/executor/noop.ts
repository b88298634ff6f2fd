/**
 * The no-op executor: no container, no files. Each task "runs" on the next microtask,
 * echoing its payload to stdout and succeeding, so benchmarks measure the dispatch path
 * (thousands of tasks a second) and not Docker.
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
    const startedAt = Date.now();
    const result = Promise.resolve().then((): ExecResult => {
      if (stopped) {
        return { outcome: 'cancelled', exitCode: -1, oomKilled: false, msg: 'cancelled', startedAt, finishedAt: Date.now() };
      }
      try {
        hooks.onStarted({ containerId: `noop-${spec.leaseId}`, startedAt, imagePullMs: 0, createMs: 0 });
        if (spec.payload) hooks.onOutput('stdout', Buffer.from(spec.payload));
      } catch {
        // A throwing hook is the caller's bug; the task itself still succeeded.
      }
      return { outcome: 'succeeded', exitCode: 0, oomKilled: false, msg: 'exit code 0', startedAt, finishedAt: Date.now() };
    });
    return {
      result,
      cancel: () => {
        stopped = true;
      },
      kill: async () => {
        stopped = true;
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
