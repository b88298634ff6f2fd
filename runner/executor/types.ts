/**
 * What runs one task: the Docker executor (one container per task) or the no-op executor
 * (for benchmarks of the dispatch path). The agent owns leases, logs and the protocol; an
 * executor only turns a TaskSpec into an exit, streaming output on the way.
 */

import type { ContainerPolicyInput } from '../../lib/container-policy.ts';

/** Everything needed to run one task, as the control plane offered it. */
export interface TaskSpec {
  taskId: string;
  leaseId: string;
  attempt: number;
  projectId: string;
  codeId: string;
  codeName: string;
  image: string;
  /** Run with `/bin/sh -c command`; empty: the image's own entrypoint and command. */
  command: string;
  /**
   * Join stderr to stdout inside the container, so the output keeps the order it was written
   * in (everything then arrives as stdout). Needs the image's /bin/sh; an image without one
   * has its streams read apart.
   */
  mergeStderr?: boolean;
  /** The code's env_vars. */
  env: Record<string, string>;
  payload: string;
  config: string;
  timeoutS: number;
  memoryMb: number;
  /** Unpacked zip code package, mounted read-only as the working directory, if any. */
  codeDir?: string;
  /** Registry credentials, base64 "user:password", for pulling the image. */
  dockerAuth?: string;
  /** The cluster's container policy as offered; the executor bounds it, and absent means the defaults. */
  container?: ContainerPolicyInput;
}

/**
 * `task_fault`: the task could not run through its own fault (its image cannot be pulled or
 * is not a valid reference, its command cannot be executed, its zip package is unusable):
 * it ends `error` like a failed run, and its runner is not to blame. `runner_error`: the
 * runner could not run it through no fault of the task (the engine is unreachable, the disk
 * is full): the task is retried elsewhere and the runner is penalised.
 */
export type Outcome = 'succeeded' | 'failed' | 'timed_out' | 'cancelled' | 'task_fault' | 'runner_error';

export interface ExecResult {
  outcome: Outcome;
  exitCode: number;
  oomKilled: boolean;
  /** Human-readable: "exit code 3", "out of memory (limit 64 MB)", "timed out after 5 s". */
  msg: string;
  startedAt: number;
  finishedAt: number;
}

export interface ExecHooks {
  /** Output as it comes, stdout and stderr apart, in order within each stream. */
  onOutput(stream: 'stdout' | 'stderr', data: Buffer): void;
  /** The container started (the task is now running). */
  onStarted(info: { containerId: string; startedAt: number; imagePullMs: number; createMs: number }): void;
  /** The task wrote its progress file (PROGRESS_FILE). */
  onProgress?(p: { percent?: number; msg?: string }): void;
}

/** A task in flight: its result, and a way to stop it early. */
export interface Execution {
  readonly result: Promise<ExecResult>;
  /** SIGTERM, then SIGKILL after `graceMs`; the result's outcome becomes `cancelled`. */
  cancel(graceMs: number): void;
  /** Kill at once and report nothing that matters (a revoked lease); resolves when gone. */
  kill(): Promise<void>;
}

export interface Executor {
  readonly kind: 'docker' | 'noop';
  /** Checks the engine answers; throws an error saying what is wrong otherwise. */
  ping(): Promise<void>;
  /**
   * Starts a task. A failure to prepare it resolves as `task_fault` when the task's image or
   * command is to blame, as `runner_error` when the runner or its engine is.
   */
  start(spec: TaskSpec, hooks: ExecHooks): Execution;
  /** Containers this runner left behind (from their labels): re-adopt or remove them. */
  leftovers(): Promise<{ containerId: string; taskId: string; leaseId: string; attempt: number; running: boolean }[]>;
  /** Removes a leftover container. */
  remove(containerId: string): Promise<void>;
  close(): Promise<void>;
}
