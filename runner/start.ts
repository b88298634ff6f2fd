import os from 'node:os';
import { Releases, startWith, type ProgramState } from '../lib/lifecycle.ts';
import type { Logger } from '../lib/logger.ts';
import { RunnerAgent, loadRunnerId, type AgentFaults } from './agent.ts';
import type { RunnerConfig } from './config.ts';
import { DockerExecutor } from './executor/docker.ts';
import { NoopExecutor } from './executor/noop.ts';
import type { Executor } from './executor/types.ts';
import { startHealthServer } from './health.ts';
import { RunnerMetrics } from './metrics.ts';
import { DEFAULT_TASK_MEMORY_MB, deriveSlots } from './slots.ts';
import { StatsSampler } from './stats.ts';

export interface Runner {
  readonly agent: RunnerAgent;
  /** The local health/metrics port (undefined when off). */
  readonly healthPort: number | undefined;
  /** `running` until a drain or stop; `stopped` once everything is released (`failed` if a release failed). */
  readonly state: ProgramState;
  /** Drain (finish running tasks, or hand them back, by `deadline` if given), then stop. */
  drain(mode: 'finish' | 'hand_back', deadline?: number): Promise<void>;
  /** Resolves once the runner stopped, whoever asked: a signal, a caller, or the control plane's Drain. */
  readonly stopped: Promise<void>;
  /** Leaves the control plane and releases everything, by `deadline` (ms since the epoch) if given. */
  stop(deadline?: number): Promise<void>;
}

/**
 * Starts a runner agent with its executor and health endpoint; separate from main.ts so
 * tests compose it. The health endpoint starts first and is released last, so a probe
 * sees the runner until it is gone.
 */
export async function startRunner(config: RunnerConfig, log: Logger, faults: AgentFaults = config.faults.dropLogFrameEvery ? config.faults : {}): Promise<Runner> {
  return startWith(async (releases: Releases) => {
    const runnerId = loadRunnerId(config.workDir);
    const metrics = new RunnerMetrics();
    const executor: Executor =
      config.executor === 'noop'
        ? new NoopExecutor()
        : new DockerExecutor({
            runnerId,
            workDir: config.workDir,
            ...(config.networkOverride ? { networkOverride: config.networkOverride } : {}),
            labels: config.containerLabels,
            log: log.child({ component: 'docker' }),
            pullFailureTtlMs: config.pullFailureTtlMs,
            onPull: (result) => metrics.imagePulls.inc({ result }),
          });
    const agent = new RunnerAgent(config, await slotPlan(config), executor, log, metrics, faults);
    const slots = agent.slots;
    const health = config.healthPort >= 0 ? await startHealthServer(agent, metrics, config.healthHost, config.healthPort) : undefined;
    if (health) releases.add('health server', () => health.close());
    await agent.start();
    releases.add('agent', () => agent.stop());
    log.info({ runnerId, slots, executor: executor.kind, controlPlane: config.controlPlane, healthPort: health?.port }, 'runner started');
    let state: ProgramState = 'running';
    let stopping: Promise<void> | undefined;
    let markStopped!: () => void;
    const stopped = new Promise<void>((resolve) => (markStopped = resolve));
    const stop = (deadline?: number) =>
      (stopping ??= releases.releaseAll(deadline).then(
        () => {
          state = 'stopped';
          markStopped();
        },
        (err: unknown) => {
          state = 'failed';
          markStopped();
          throw err;
        },
      ));
    const drain = async (mode: 'finish' | 'hand_back', deadline?: number) => {
      state = 'draining';
      await agent.drain(mode, deadline);
      await stop();
    };
    // An operator's drain, sent by the control plane: drain, then leave as after SIGTERM.
    agent.onServerDrain = (mode, deadline) => {
      log.info({ mode }, 'the control plane asked this runner to drain');
      drain(mode, deadline).catch((err: unknown) => log.error({ err }, 'drain failed'));
    };
    return {
      agent,
      healthPort: health?.port,
      get state() {
        return state;
      },
      drain,
      stop,
      stopped,
    };
  });
}

/**
 * The configured slots, or slots derived from the host's CPUs and memory; derived ones are
 * derived again when the control plane names the cluster's memory per task, unless the
 * task memory is configured.
 */
async function slotPlan(config: RunnerConfig): Promise<{ slots: number; rederive?: (taskMemoryMb: number) => number }> {
  if (config.slots > 0) return { slots: config.slots };
  const basis = { cpus: os.availableParallelism(), memoryMb: await StatsSampler.totalMemoryMb(), slotsPerCpu: config.slotsPerCpu };
  const slots = (taskMemoryMb: number) => deriveSlots({ ...basis, taskMemoryMb }).slots;
  return config.taskMemoryMb !== undefined ? { slots: slots(config.taskMemoryMb) } : { slots: slots(DEFAULT_TASK_MEMORY_MB), rederive: slots };
}
