import type { Logger } from '../lib/logger.ts';
import { RunnerAgent, loadRunnerId, type AgentFaults } from './agent.ts';
import type { RunnerConfig } from './config.ts';
import { DockerExecutor } from './executor/docker.ts';
import { NoopExecutor } from './executor/noop.ts';
import type { Executor } from './executor/types.ts';
import { startHealthServer } from './health.ts';
import { RunnerMetrics } from './metrics.ts';
import { StatsSampler } from './stats.ts';

export interface Runner {
  readonly agent: RunnerAgent;
  /** The local health/metrics port (undefined when off). */
  readonly healthPort: number | undefined;
  /** Drain (finish running tasks, or hand them back), then leave. */
  drain(mode: 'finish' | 'hand_back'): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a runner agent with its executor and health endpoint; separate from main.ts so tests compose it. */
export async function startRunner(config: RunnerConfig, log: Logger, faults: AgentFaults = {}): Promise<Runner> {
  const runnerId = loadRunnerId(config.workDir);
  const metrics = new RunnerMetrics();
  const executor: Executor =
    config.executor === 'noop'
      ? new NoopExecutor()
      : new DockerExecutor({
          runnerId,
          workDir: config.workDir,
          networkMode: config.networkMode,
          labels: config.containerLabels,
          log: log.child({ component: 'docker' }),
          pullFailureTtlMs: config.pullFailureTtlMs,
          onPull: (result) => metrics.imagePulls.inc({ result }),
        });
  const slots = config.slots > 0 ? config.slots : Math.max(1, Math.floor((await StatsSampler.totalMemoryMb()) / config.taskMemoryMb));
  const agent = new RunnerAgent(config, slots, executor, log, metrics, faults);
  const health = config.healthPort >= 0 ? await startHealthServer(agent, metrics, config.healthHost, config.healthPort) : undefined;
  await agent.start();
  log.info({ runnerId, slots, executor: executor.kind, controlPlane: config.controlPlane, healthPort: health?.port }, 'runner started');
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await agent.stop();
      await health?.close();
    })());
  return {
    agent,
    healthPort: health?.port,
    async drain(mode) {
      await agent.drain(mode);
      await stop();
    },
    stop,
  };
}
