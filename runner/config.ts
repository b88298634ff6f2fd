import path from 'node:path';
import { EnvReader } from '../lib/env.ts';
import { ConfigError } from '../lib/errors.ts';
import { DEFAULT_ZIP_LIMITS, type ZipLimits } from '../lib/zip.ts';
import { putOwn } from '../lib/record.ts';
import { isValidNetwork } from '../lib/container-policy.ts';

/** The runner agent's configuration: read once from the environment, then frozen. */
export interface RunnerConfig {
  /**
   * The control plane's gRPC addresses, host:port: one, or several replicas (comma
   * separated) tried in turn; the runner moves to the next one whenever its stream is lost
   * or a replica asks it to reconnect.
   */
  readonly controlPlanes: readonly string[];
  /** The first of controlPlanes (for logs). */
  readonly controlPlane: string;
  readonly clusterId: string;
  readonly clusterToken: string;
  /** Concurrent tasks; 0 derives them from the host's CPUs and memory (runner/slots.ts). */
  readonly slots: number;
  /** Slots per CPU when slots are derived. */
  readonly slotsPerCpu: number;
  /**
   * Memory of one task, when set: for deriving slots and for offers that name none.
   * Unset, the cluster's memory per task is used, as the control plane sends it.
   */
  readonly taskMemoryMb: number | undefined;
  readonly workDir: string;
  /**
   * The network every task container joins, whatever its cluster says (GANTRY_RUNNER_NETWORK:
   * none, bridge, host or a network's name); unset, each task joins its cluster's.
   */
  readonly networkOverride: string | undefined;
  readonly executor: 'docker' | 'noop';
  /** Local HTTP port for /healthz and /metrics (0: any free port; -1: off). */
  readonly healthPort: number;
  readonly healthHost: string;
  readonly tls: boolean;
  readonly tlsCaFile: string | undefined;
  /** How long a drain (SIGTERM) lets running tasks finish before handing them back. */
  readonly drainTimeoutS: number;
  readonly instanceId: string;
  readonly logLevel: string;
  /** GANTRY_LOG_FORMAT: json, pretty, or auto (pretty on a terminal, JSON otherwise). */
  readonly logFormat: 'auto' | 'json' | 'pretty';
  /** Extra labels on every container (e.g. a test run id), "k=v,k2=v2". */
  readonly containerLabels: Readonly<Record<string, string>>;
  /**
   * How long a pull that failed through the image's own fault (not found, unauthorised, an
   * invalid reference) is remembered per image and registry credentials: tasks of the same
   * bad image meanwhile fail at once without another pull. 0 turns it off.
   */
  readonly pullFailureTtlMs: number;
  /** What a zip code package may hold once unpacked on this runner's disk. */
  readonly zipLimits: Readonly<ZipLimits>;
  /** Fault injection for tests (GANTRY_RUNNER_FAULT_DROP_LOG_EVERY: drop every Nth log frame; 0 never). */
  readonly faults: Readonly<{ dropLogFrameEvery: number }>;
}

function network(v: string | undefined): string | undefined {
  if (v !== undefined && !isValidNetwork(v)) {
    throw new ConfigError(`GANTRY_RUNNER_NETWORK must be none, bridge, host or a Docker network's name (letters, digits, "_", "." or "-"), got ${JSON.stringify(v)}`);
  }
  return v;
}

export function loadRunnerConfig(env: Record<string, string | undefined>): RunnerConfig {
  const e = new EnvReader(env);
  const need = (name: string) => {
    const v = e.str(name);
    if (!v) throw new ConfigError(`${name} is required (see README.md, "Runners")`);
    return v;
  };
  const labels: Record<string, string> = {};
  for (const kv of (e.str('GANTRY_RUNNER_LABELS') ?? '').split(',').filter(Boolean)) {
    const [k, v] = kv.split('=');
    if (!k || v === undefined) throw new ConfigError(`GANTRY_RUNNER_LABELS entries must be key=value, got ${JSON.stringify(kv)}`);
    putOwn(labels, k, v);
  }
  const controlPlanes = need('GANTRY_CONTROL_PLANE')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const cp of controlPlanes) {
    if (!/^[^\s:/]+:\d+$/.test(cp) && !/^\[[0-9a-f:]+\]:\d+$/i.test(cp)) {
      throw new ConfigError(
        `GANTRY_CONTROL_PLANE must be host:port of the control plane's gRPC port (several comma separated), got ${JSON.stringify(cp)}`,
      );
    }
  }
  if (controlPlanes.length === 0) throw new ConfigError('GANTRY_CONTROL_PLANE is required (see README.md, "Runners")');
  return Object.freeze({
    controlPlanes: Object.freeze(controlPlanes),
    controlPlane: controlPlanes[0]!,
    clusterId: need('GANTRY_CLUSTER_ID'),
    clusterToken: need('GANTRY_CLUSTER_TOKEN'),
    slots: e.int('GANTRY_RUNNER_SLOTS', 0, { min: 0, max: 1024 }),
    slotsPerCpu: e.int('GANTRY_RUNNER_SLOTS_PER_CPU', 1, { min: 1, max: 64 }),
    taskMemoryMb: e.str('GANTRY_RUNNER_TASK_MEMORY_MB') ? e.int('GANTRY_RUNNER_TASK_MEMORY_MB', 512, { min: 16 }) : undefined,
    workDir: path.resolve(e.str('GANTRY_RUNNER_WORK_DIR', './data/runner')),
    networkOverride: network(e.str('GANTRY_RUNNER_NETWORK')),
    executor: e.oneOf('GANTRY_RUNNER_EXECUTOR', 'docker', ['docker', 'noop'] as const),
    healthPort: e.int('GANTRY_RUNNER_HEALTH_PORT', 9190, { min: -1, max: 65535 }),
    healthHost: e.str('GANTRY_RUNNER_HEALTH_HOST', '127.0.0.1'),
    tls: e.bool('GANTRY_RUNNER_TLS', false),
    tlsCaFile: e.str('GANTRY_RUNNER_TLS_CA'),
    drainTimeoutS: e.int('GANTRY_RUNNER_DRAIN_TIMEOUT_S', 3600, { min: 0 }),
    instanceId: e.str('GANTRY_INSTANCE_ID', ''),
    logLevel: e.oneOf('LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    logFormat: e.oneOf('GANTRY_LOG_FORMAT', 'auto', ['auto', 'json', 'pretty'] as const),
    containerLabels: Object.freeze(labels),
    pullFailureTtlMs: e.int('GANTRY_RUNNER_PULL_FAILURE_TTL_S', 30, { min: 0, max: 86400 }) * 1000,
    faults: Object.freeze({ dropLogFrameEvery: e.int('GANTRY_RUNNER_FAULT_DROP_LOG_EVERY', 0, { min: 0 }) }),
    zipLimits: Object.freeze({
      maxEntries: e.int('GANTRY_RUNNER_ZIP_MAX_ENTRIES', DEFAULT_ZIP_LIMITS.maxEntries, { min: 1, max: 10_000_000 }),
      maxUnpackedBytes:
        e.int('GANTRY_RUNNER_ZIP_MAX_UNPACKED_MB', DEFAULT_ZIP_LIMITS.maxUnpackedBytes / 1048576, { min: 1, max: 1024 * 1024 }) * 1048576,
    }),
  });
}
