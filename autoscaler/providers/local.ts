/**
 * The `local` provider: an "instance" is a runner agent process on this host: `runner/main.ts`
 * through tsx in a checkout, `runner/main.js` with plain node in a build (dist/, where this
 * module is JavaScript too). It is what the embedded start (`gantry start`) scales its default cluster
 * with, and replaces control-plane/local-runners.ts there.
 *
 * State. `<dataDir>/instances/state.json` records every instance (id, cluster, intent, pid,
 * state, times), rewritten whole and atomically (temp file, fsync, rename) on every change, so
 * a new control-plane process knows what the last one launched. Each instance works in
 * `<dataDir>/instances/<instanceId>/` (its runner id, code cache and log spool live there)
 * and logs to `runner.log` in it.
 *
 * Processes outlive the control plane. Runners are spawned detached (their own session and
 * process group), unref'd, with stdout and stderr going to their log file rather than to us:
 * - a pipe to us would break when we exit (the runner's next log line fails with EPIPE), and
 *   an inherited terminal would hang up; a file outlives us;
 * - their own process group keeps the terminal's Ctrl-C (SIGINT to the foreground group) away
 *   from them: only this provider decides when a runner stops (`stopAll` on Ctrl-C). A runner
 *   takes a second signal as "hand running tasks back", so a terminal SIGINT followed by our
 *   SIGTERM would have cut short the drain we asked for;
 * - so `close()` leaves them running, and the next provider on the same dataDir adopts them:
 *   their tasks survive a control-plane restart, as on EC2.
 * Not covered: a supervisor that kills the whole cgroup (systemd's default
 * `KillMode=control-group`, or a container) kills the runners with the control plane. A unit
 * that wants them to survive a restart sets `KillMode=process`.
 *
 * Pid safety. A pid recorded before a restart is only trusted after checking that the process
 * is still that runner: alive, its command line runs `runner/main.ts` (or `.js`), and its environment
 * holds `GANTRY_INSTANCE_ID=<that instance>` (/proc on Linux, `ps -E` elsewhere). Anything
 * else is "terminated" and is never signalled. Children of this process are signalled through
 * their ChildProcess handle, which Node never lets reach a reaped pid.
 *
 * Not restarted. A runner that exits on its own (crash, bad config) lists as `terminated`; the
 * autoscaler's reconciler calls it gone and the policy replaces it (local-runners.ts instead
 * restarted it in place, which hid crash loops from the autoscaler).
 *
 * Launch order for crash safety: records are written (`pending`, no pid) before any spawn and
 * completed with pids after, so a crash in between leaves records that the next provider
 * resolves by scanning /proc for processes with those instance ids, never an untracked runner.
 *
 * `LaunchSpec.userData` is ignored: user data configures a fresh machine (disks, Docker, the
 * runner unit) and this host is already set up; the runner's settings come from the
 * environment built here instead.
 *
 * One provider per dataDir at a time (enforced within a process; two control-plane processes
 * sharing one dataDir are not supported, as for the PGlite data beside it).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { systemClock, type Clock } from '../../lib/clock.ts';
import { ConfigError } from '../../lib/errors.ts';
import { silentLogger, type Logger } from '../../lib/logger.ts';
import {
  ProviderError,
  QuotaError,
  TAG_CLUSTER,
  TAG_INTENT,
  TAG_MANAGED,
  shortfallReason,
  type InstanceState,
  type LaunchOutcome,
  type LaunchSpec,
  type Listing,
  type Provider,
  type ProviderHealth,
  type ProviderInstance,
} from './types.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** Built (dist/, plain node) when this module is JavaScript; otherwise the sources through tsx. */
const BUILT = import.meta.url.endsWith('.js');
const RUNNER_MAIN = path.join(ROOT, 'runner', BUILT ? 'main.js' : 'main.ts');
const RUNNER_ARGS: readonly string[] = BUILT ? [RUNNER_MAIN] : ['--import', 'tsx', RUNNER_MAIN];
/** How a runner's command line is recognised (any checkout or install: the path may have moved). */
const isRunnerMain = (arg: string): boolean => /(^|[\\/])runner[\\/]main\.[jt]s$/.test(arg);

export interface LocalProviderOptions {
  /** State file and per-instance work dirs live under `<dataDir>/instances`. */
  dataDir: string;
  /** host:port of the control plane's gRPC gateway; several comma separated (GANTRY_CONTROL_PLANE). */
  controlPlane: string;
  /** The cluster's runner token, asked for at each launch (it may have been rotated). */
  clusterToken: (clusterId: string) => Promise<string> | string;
  /** GANTRY_RUNNER_SLOTS of every instance, 0–1024 (0: the runner derives it from host memory). */
  slotsPerInstance: number;
  /** GANTRY_RUNNER_EXECUTOR; unset leaves the runner's default (docker) or extraEnv's. */
  executor?: 'docker' | 'noop';
  /**
   * More runner environment (LOG_LEVEL, GANTRY_RUNNER_NETWORK, GANTRY_RUNNER_LABELS,
   * GANTRY_RUNNER_HEALTH_PORT, GANTRY_RUNNER_TASK_MEMORY_MB, …). The variables that make an
   * instance what it is (control plane, cluster, token, slots, work dir, instance id,
   * executor when set above) are the provider's and cannot be overridden here.
   */
  extraEnv?: Record<string, string>;
  /** Host cap: the most live instances (pending or running, all clusters) at once. */
  maxInstances?: number;
  /** SIGTERM → SIGKILL grace for `terminate` and `stopAll`. Default 30 s. */
  graceMs?: number;
  /** How long a terminated instance stays listed (and its work dir kept). Default 1 h, as EC2. */
  retainTerminatedMs?: number;
  log?: Logger;
  clock?: Clock;
}

export const LOCAL_DEFAULTS = Object.freeze({
  // The autoscaler terminates only idle instances, whose drain takes well under a second.
  graceMs: 30_000,
  // EC2 shows a terminated instance for about an hour; the reconciler expects it to linger.
  retainTerminatedMs: 3_600_000,
});

/**
 * What a runner inherits from this process's environment; the rest (database URLs, secret
 * keys, AWS credentials, NODE_OPTIONS, proxies: the gateway is local) stays here.
 */
const INHERITED_ENV = [
  'PATH', 'HOME', 'USER', 'LOGNAME', 'TMPDIR', 'TZ', 'LANG', 'LC_ALL', 'LC_CTYPE',
  'DOCKER_HOST', 'DOCKER_TLS_VERIFY', 'DOCKER_CERT_PATH', 'DOCKER_CONFIG',
  'NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'SSL_CERT_DIR',
  // The operator's network override for every task container (a runner setting, over the
  // cluster's container.network): local runners get the control plane's.
  'GANTRY_RUNNER_NETWORK',
];

type RecordState = 'pending' | 'running' | 'shutting-down' | 'terminated';

/** One instance as state.json keeps it. */
interface InstanceRecord {
  instanceId: string;
  clusterId: string;
  intentId: string;
  /** Null between the record's creation and the spawn (see the module comment). */
  pid: number | null;
  launchedAt: string;
  state: RecordState;
  /** When SIGTERM was sent (at most once: a second signal means "hand tasks back"). */
  stopRequestedAt?: string;
  terminatedAt?: string;
  /** How it ended: `exit 0`, `signal SIGKILL`, `spawn failed: …`, `gone` (not our child). */
  exit?: string;
}

interface StateFile {
  version: 1;
  instances: InstanceRecord[];
}

/** dataDirs with an open provider in this process. */
const openDirs = new Set<string>();

/**
 * Whether `pid` is, right now, the runner process of `instanceId`: alive, running
 * `runner/main.ts` (or `.js`), and with `GANTRY_INSTANCE_ID=<instanceId>` in its environment. False on
 * any doubt (another user's process, a zombie, no /proc and no `ps`).
 */
export function isRunnerProcess(pid: number, instanceId: string): boolean {
  if (!Number.isInteger(pid) || pid <= 1) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const marker = `GANTRY_INSTANCE_ID=${instanceId}`;
  try {
    if (process.platform === 'linux') {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!argv.some(isRunnerMain)) return false;
      return fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(marker);
    }
    // BSD/macOS ps: -E appends the environment to the command (own processes only).
    const out = execFileSync('ps', ['-ww', '-E', '-o', 'command=', '-p', String(pid)], { encoding: 'utf8', timeout: 5000 });
    const words = out.split(/\s+/);
    return words.some(isRunnerMain) && words.includes(marker);
  } catch {
    return false;
  }
}

/** The parent pid of `pid` (Linux), or undefined. */
function parentOf(pid: number): number | undefined {
  try {
    const m = /^PPid:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Pids of this user's processes that are the runner of `instanceId` (Linux; empty elsewhere).
 * A child the runner is forking at that moment (its stats sampler runs commands) looks like
 * the runner until it execs: same command line, same environment. Such a child's parent is
 * itself a match, so it is left out.
 */
function findRunnerPids(instanceId: string): number[] {
  if (process.platform !== 'linux') return [];
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return [];
  }
  const pids = entries.filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => pid !== process.pid && isRunnerProcess(pid, instanceId));
  if (pids.length < 2) return pids;
  const set = new Set(pids);
  return pids.filter((pid) => !set.has(parentOf(pid) ?? -1));
}

function validate(o: LocalProviderOptions): void {
  if (!o.dataDir) throw new ConfigError('local provider: dataDir is required');
  const cps = o.controlPlane.split(',').map((s) => s.trim()).filter(Boolean);
  if (cps.length === 0 || cps.some((cp) => !/^[^\s:/]+:\d+$/.test(cp) && !/^\[[0-9a-f:]+\]:\d+$/i.test(cp))) {
    throw new ConfigError(`local provider: controlPlane must be host:port of the gRPC gateway (several comma separated), got ${JSON.stringify(o.controlPlane)}`);
  }
  if (!Number.isInteger(o.slotsPerInstance) || o.slotsPerInstance < 0 || o.slotsPerInstance > 1024) {
    throw new ConfigError(`local provider: slotsPerInstance must be an integer from 0 to 1024, got ${o.slotsPerInstance}`);
  }
  if (o.maxInstances !== undefined && (!Number.isInteger(o.maxInstances) || o.maxInstances < 0)) {
    throw new ConfigError(`local provider: maxInstances must be a non-negative integer, got ${o.maxInstances}`);
  }
  for (const k of ['graceMs', 'retainTerminatedMs'] as const) {
    const v = o[k];
    if (v !== undefined && (!Number.isFinite(v) || v < 0)) throw new ConfigError(`local provider: ${k} must be ≥ 0 ms, got ${v}`);
  }
}

/** The `local` provider; see the module comment. */
export class LocalProvider implements Provider {
  readonly kind = 'local' as const;
  readonly #o: LocalProviderOptions;
  readonly #dir: string;
  readonly #stateFile: string;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #graceMs: number;
  readonly #retainMs: number;
  #records: InstanceRecord[];
  /** Processes spawned by this provider, until they exit. */
  readonly #children = new Map<string, ChildProcess>();
  readonly #killTimers = new Map<string, NodeJS.Timeout>();
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(opts: LocalProviderOptions) {
    validate(opts);
    this.#o = opts;
    this.#dir = path.resolve(opts.dataDir, 'instances');
    this.#stateFile = path.join(this.#dir, 'state.json');
    this.#log = opts.log ?? silentLogger();
    this.#clock = opts.clock ?? systemClock;
    this.#graceMs = opts.graceMs ?? LOCAL_DEFAULTS.graceMs;
    this.#retainMs = opts.retainTerminatedMs ?? LOCAL_DEFAULTS.retainTerminatedMs;
    if (openDirs.has(this.#dir)) throw new ProviderError('StateInUse', `another local provider in this process already uses ${this.#dir}; close it first`);
    try {
      fs.mkdirSync(this.#dir, { recursive: true });
    } catch (cause) {
      throw new ProviderError('StateUnreadable', `could not create ${this.#dir}: ${(cause as Error).message}`, { cause });
    }
    this.#records = this.#load();
    this.#adopt();
    openDirs.add(this.#dir);
  }

  /** The runner's log file of an instance (for operators and tests). */
  logFile(instanceId: string): string {
    return path.join(this.#workDir(instanceId), 'runner.log');
  }

  // ---- launch -----------------------------------------------------------------------------

  launch(spec: LaunchSpec): Promise<LaunchOutcome> {
    return this.#locked(async () => {
      this.#open();
      this.#refresh();
      const known = this.#records.filter((r) => r.intentId === spec.intentId && r.clusterId === spec.clusterId);
      if (known.length > 0) return this.#settled(spec, known);
      if (!Number.isInteger(spec.count) || spec.count < 1) {
        throw new ProviderError('InvalidParameterValue', `launch count must be an integer ≥ 1, got ${spec.count}`);
      }
      let token: string;
      try {
        token = await this.#o.clusterToken(spec.clusterId);
      } catch (cause) {
        throw new ProviderError('ClusterTokenUnavailable', `could not get the runner token of cluster ${spec.clusterId}`, { cause, retryable: true });
      }
      const cap = this.#o.maxInstances;
      const fit = cap === undefined ? spec.count : Math.max(0, Math.min(spec.count, cap - this.#liveCount()));
      if (fit === 0) throw this.#quotaError(cap!);
      const now = this.#clock.now().toISOString();
      const recs: InstanceRecord[] = [];
      for (let i = 0; i < fit; i++) {
        recs.push({ instanceId: this.#newId(), clusterId: spec.clusterId, intentId: spec.intentId, pid: null, launchedAt: now, state: 'pending' });
      }
      this.#records.push(...recs);
      this.#save();
      let spawnError: ProviderError | undefined;
      for (const r of recs) {
        try {
          this.#spawn(r, token);
        } catch (e) {
          spawnError = e as ProviderError;
          this.#markTerminated(r, `spawn failed: ${spawnError.message}`);
        }
      }
      this.#save();
      const instances = recs.filter((r) => r.state !== 'terminated').map((r) => this.#toInstance(r));
      if (instances.length === 0) throw spawnError!;
      const out: LaunchOutcome = { instances };
      if (instances.length < spec.count) {
        const error = fit < spec.count ? this.#quotaError(cap!) : spawnError!;
        out.shortfall = { count: spec.count - instances.length, reason: shortfallReason(error), error };
      }
      return out;
    });
  }

  /** A launch of an intent that already has instances: no new ones (idempotency). */
  #settled(spec: LaunchSpec, known: InstanceRecord[]): LaunchOutcome {
    const out: LaunchOutcome = { instances: known.map((r) => this.#toInstance(r)) };
    if (known.length < spec.count) {
      const error =
        this.#o.maxInstances !== undefined && this.#liveCount() >= this.#o.maxInstances
          ? this.#quotaError(this.#o.maxInstances)
          : new ProviderError('IntentSettled', `launch intent ${spec.intentId} already made ${known.length} instances; it launches no more`);
      out.shortfall = { count: spec.count - known.length, reason: shortfallReason(error), error };
    }
    return out;
  }

  #quotaError(cap: number): QuotaError {
    return new QuotaError('HostInstanceLimit', `this host runs at most ${cap} local runner instances (maxInstances)`, { cap });
  }

  #spawn(r: InstanceRecord, token: string): void {
    const workDir = this.#workDir(r.instanceId);
    let fd: number;
    try {
      fs.mkdirSync(workDir, { recursive: true });
      fd = fs.openSync(this.logFile(r.instanceId), 'a');
    } catch (cause) {
      throw new ProviderError('SpawnFailed', `could not prepare ${workDir}: ${(cause as Error).message}`, { cause, retryable: true });
    }
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, RUNNER_ARGS, {
        cwd: ROOT,
        env: this.#env(r, token),
        detached: true,
        stdio: ['ignore', fd, fd],
      });
    } catch (cause) {
      throw new ProviderError('SpawnFailed', `could not start a runner process: ${(cause as Error).message}`, { cause, retryable: true });
    } finally {
      fs.closeSync(fd);
    }
    // Spawn failures (EAGAIN, ENOENT) also arrive as an 'error' event; the missing pid says it now.
    child.on('error', (err) => this.#log.warn({ instanceId: r.instanceId, err: err.message }, 'local runner process error'));
    if (child.pid === undefined) throw new ProviderError('SpawnFailed', 'could not start a runner process (no pid)', { retryable: true });
    child.unref();
    r.pid = child.pid;
    r.state = 'running';
    this.#children.set(r.instanceId, child);
    child.on('exit', (code, signal) => this.#onExit(r.instanceId, code !== null ? `exit ${code}` : `signal ${signal}`));
    this.#log.info({ clusterId: r.clusterId, intentId: r.intentId, instanceId: r.instanceId, runnerPid: r.pid, logFile: this.logFile(r.instanceId) }, 'local runner instance launched');
  }

  #env(r: InstanceRecord, token: string): Record<string, string> {
    const env: Record<string, string> = {};
    for (const k of INHERITED_ENV) {
      const v = process.env[k];
      if (v !== undefined) env[k] = v;
    }
    Object.assign(env, { GANTRY_RUNNER_HEALTH_PORT: '-1' }, this.#o.extraEnv, {
      GANTRY_CONTROL_PLANE: this.#o.controlPlane,
      GANTRY_CLUSTER_ID: r.clusterId,
      GANTRY_CLUSTER_TOKEN: token,
      GANTRY_RUNNER_SLOTS: String(this.#o.slotsPerInstance),
      GANTRY_RUNNER_WORK_DIR: this.#workDir(r.instanceId),
      GANTRY_INSTANCE_ID: r.instanceId,
    });
    if (this.#o.executor) env.GANTRY_RUNNER_EXECUTOR = this.#o.executor;
    return env;
  }

  #onExit(instanceId: string, how: string): void {
    this.#children.delete(instanceId);
    clearTimeout(this.#killTimers.get(instanceId));
    this.#killTimers.delete(instanceId);
    // A closed provider no longer owns the state file (a successor may).
    if (this.#closed) return;
    const r = this.#records.find((x) => x.instanceId === instanceId);
    if (!r || r.state === 'terminated') return;
    const asked = r.state === 'shutting-down';
    this.#markTerminated(r, how);
    try {
      this.#save();
    } catch (e) {
      // The next save writes it; listing meanwhile still sees the process gone.
      this.#log.error({ err: (e as Error).message }, 'could not record a local runner exit');
    }
    const fields = { clusterId: r.clusterId, instanceId, runnerPid: r.pid, exit: how, logFile: this.logFile(instanceId) };
    if (asked) this.#log.info(fields, 'local runner instance exited');
    else this.#log.warn(fields, 'local runner instance exited on its own; not restarted (the autoscaler replaces it)');
  }

  // ---- terminate --------------------------------------------------------------------------

  terminate(clusterId: string, instanceIds: readonly string[]): Promise<string[]> {
    return this.#locked(async () => {
      this.#open();
      const done: string[] = [];
      for (const id of new Set(instanceIds)) {
        const r = this.#records.find((x) => x.instanceId === id);
        if (!r || r.clusterId !== clusterId) {
          this.#log.warn({ clusterId, instanceId: id }, 'refusing to terminate an instance this cluster does not own');
          continue;
        }
        if (r.state !== 'terminated' && !this.#alive(r)) this.#markTerminated(r, 'gone');
        if (r.state === 'running' || r.state === 'pending') this.#stop(r);
        done.push(id);
      }
      this.#save();
      return done;
    });
  }

  /** SIGTERM (the runner drains and exits), then SIGKILL if it is still there after the grace. */
  #stop(r: InstanceRecord): void {
    this.#signal(r, 'SIGTERM');
    r.state = 'shutting-down';
    r.stopRequestedAt = this.#clock.now().toISOString();
    this.#armKill(r, this.#graceMs);
    this.#log.info({ clusterId: r.clusterId, instanceId: r.instanceId, runnerPid: r.pid }, 'local runner instance draining (SIGTERM)');
  }

  #armKill(r: InstanceRecord, delayMs: number): void {
    clearTimeout(this.#killTimers.get(r.instanceId));
    const timer = setTimeout(() => {
      this.#killTimers.delete(r.instanceId);
      if (this.#closed || r.state !== 'shutting-down' || !this.#alive(r)) return;
      this.#log.warn({ clusterId: r.clusterId, instanceId: r.instanceId, runnerPid: r.pid, graceMs: this.#graceMs }, 'local runner instance did not exit after SIGTERM; sending SIGKILL');
      this.#signal(r, 'SIGKILL');
    }, delayMs);
    timer.unref();
    this.#killTimers.set(r.instanceId, timer);
  }

  /** Signals the instance's process only if it is verifiably still that runner. */
  #signal(r: InstanceRecord, sig: NodeJS.Signals): boolean {
    const child = this.#children.get(r.instanceId);
    try {
      if (child) return child.exitCode === null && child.signalCode === null && child.kill(sig);
      if (r.pid === null || !isRunnerProcess(r.pid, r.instanceId)) return false;
      process.kill(r.pid, sig);
      return true;
    } catch {
      return false;
    }
  }

  // ---- list, health -----------------------------------------------------------------------

  list(clusterId: string): Promise<Listing> {
    return this.#locked(async () => {
      this.#open();
      const asOf = this.#clock.now();
      this.#refresh();
      return { instances: this.#records.filter((r) => r.clusterId === clusterId).map((r) => this.#toInstance(r)), asOf };
    });
  }

  health(): ProviderHealth {
    return {
      capacityUnavailable: false,
      unavailablePools: [],
      instanceQuota: this.#o.maxInstances ?? null,
      throttledUntil: null,
      breakers: [],
      quota: null,
      alerts: [],
    };
  }

  // ---- stop, close ------------------------------------------------------------------------

  /**
   * Drains every live instance of every cluster this provider knows (SIGTERM once; SIGKILL
   * after `graceMs`) and resolves when all have exited, with their ids. For the embedded
   * start's Ctrl-C and for tests.
   */
  stopAll(opts: { graceMs?: number } = {}): Promise<string[]> {
    return this.#locked(async () => {
      this.#open();
      this.#refresh();
      const live = this.#records.filter((r) => r.state !== 'terminated');
      for (const r of live) if (r.state !== 'shutting-down') this.#stop(r);
      this.#save();
      const grace = opts.graceMs ?? this.#graceMs;
      const gone = () => live.every((r) => r.state === 'terminated' || !this.#alive(r));
      if (!(await waitUntil(gone, grace))) {
        for (const r of live) if (r.state !== 'terminated' && this.#alive(r)) this.#signal(r, 'SIGKILL');
        await waitUntil(gone, 10_000);
      }
      for (const r of live) if (r.state !== 'terminated' && !this.#alive(r)) this.#markTerminated(r, 'gone');
      this.#save();
      return live.map((r) => r.instanceId);
    });
  }

  /**
   * Leaves the runners running (the next provider on this dataDir adopts them) unless
   * `stopInstances`, which drains them first (`stopAll`).
   */
  async close(opts: { stopInstances?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    try {
      if (opts.stopInstances) await this.stopAll();
    } finally {
      await this.#locked(async () => {
        this.#closed = true;
        for (const t of this.#killTimers.values()) clearTimeout(t);
        this.#killTimers.clear();
        openDirs.delete(this.#dir);
      });
    }
  }

  // ---- state ------------------------------------------------------------------------------

  /** Takes over what the state file lists: live runners are adopted, the rest are terminated. */
  #adopt(): void {
    const now = this.#clock.now().getTime();
    let adopted = 0;
    for (const r of this.#records) {
      if (r.state === 'terminated') continue;
      if (r.pid === null) {
        // Written before a spawn whose pid never reached the file: find the process by its id.
        const pids = findRunnerPids(r.instanceId);
        if (pids.length === 1) {
          r.pid = pids[0]!;
          r.state = r.stopRequestedAt ? 'shutting-down' : 'running';
        }
      }
      if (!this.#alive(r)) {
        this.#markTerminated(r, 'gone');
        continue;
      }
      adopted++;
      if (r.state === 'pending') r.state = 'running';
      if (r.state === 'shutting-down') {
        const since = r.stopRequestedAt ? Date.parse(r.stopRequestedAt) : now;
        this.#armKill(r, Math.max(0, since + this.#graceMs - now));
      }
    }
    this.#prune();
    this.#save();
    if (adopted > 0) this.#log.info({ adopted, stateFile: this.#stateFile }, 'adopted local runner instances left by an earlier process');
  }

  /** Notices instances that are gone (crashed adopted runners, or exits not yet handled). */
  #refresh(): void {
    let changed = this.#prune();
    for (const r of this.#records) {
      if (r.state !== 'terminated' && r.pid !== null && !this.#alive(r)) {
        const asked = r.state === 'shutting-down';
        this.#markTerminated(r, 'gone');
        const fields = { clusterId: r.clusterId, instanceId: r.instanceId, runnerPid: r.pid, logFile: this.logFile(r.instanceId) };
        if (asked) this.#log.info(fields, 'local runner instance exited');
        else this.#log.warn(fields, 'local runner instance is gone; not restarted (the autoscaler replaces it)');
        changed = true;
      }
    }
    if (changed) this.#save();
  }

  #alive(r: InstanceRecord): boolean {
    const child = this.#children.get(r.instanceId);
    if (child) return child.exitCode === null && child.signalCode === null;
    return r.pid !== null && isRunnerProcess(r.pid, r.instanceId);
  }

  #liveCount(): number {
    return this.#records.filter((r) => r.state === 'running' || r.state === 'pending').length;
  }

  #markTerminated(r: InstanceRecord, how: string): void {
    r.state = 'terminated';
    r.terminatedAt = this.#clock.now().toISOString();
    r.exit ??= how;
    this.#children.delete(r.instanceId);
  }

  /** Forgets terminated instances past the retention, with their work dirs. */
  #prune(): boolean {
    const cutoff = this.#clock.now().getTime() - this.#retainMs;
    const old = this.#records.filter((r) => r.state === 'terminated' && Date.parse(r.terminatedAt ?? '') < cutoff);
    if (old.length === 0) return false;
    for (const r of old) {
      try {
        fs.rmSync(this.#workDir(r.instanceId), { recursive: true, force: true });
      } catch (e) {
        // Files a container left owned by another user: harmless, reported once.
        this.#log.warn({ instanceId: r.instanceId, err: (e as Error).message }, 'could not remove a terminated instance work dir');
      }
    }
    this.#records = this.#records.filter((r) => !old.includes(r));
    return true;
  }

  #load(): InstanceRecord[] {
    let text: string;
    try {
      text = fs.readFileSync(this.#stateFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new ProviderError('StateUnreadable', `could not read ${this.#stateFile}: ${(e as Error).message}`, { cause: e });
    }
    try {
      const s = JSON.parse(text) as StateFile;
      if (s.version !== 1 || !Array.isArray(s.instances)) throw new Error(`unknown version ${String(s.version)}`);
      return s.instances;
    } catch (e) {
      throw new ProviderError(
        'StateUnreadable',
        `${this.#stateFile} is not a local provider state file (${(e as Error).message}); move it away to start afresh (runners it lists keep running untracked)`,
        { cause: e },
      );
    }
  }

  /** Rewrites the state file atomically: a reader (or a crash) sees the old or the new file whole. */
  #save(): void {
    const tmp = `${this.#stateFile}.${process.pid}.tmp`;
    const body = JSON.stringify({ version: 1, instances: this.#records } satisfies StateFile, null, 1);
    try {
      const fd = fs.openSync(tmp, 'w', 0o600);
      try {
        fs.writeSync(fd, body);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.#stateFile);
    } catch (cause) {
      throw new ProviderError('StateWriteFailed', `could not write ${this.#stateFile}: ${(cause as Error).message}`, { cause, retryable: true });
    }
  }

  #toInstance(r: InstanceRecord): ProviderInstance {
    const state: InstanceState = r.state;
    const tags: Record<string, string> = { [TAG_CLUSTER]: r.clusterId, [TAG_MANAGED]: 'true', [TAG_INTENT]: r.intentId };
    if (r.pid !== null) tags['gantry:pid'] = String(r.pid);
    return { instanceId: r.instanceId, state, launchedAt: new Date(r.launchedAt), tags, intentId: r.intentId, instanceType: 'local' };
  }

  #workDir(instanceId: string): string {
    return path.join(this.#dir, instanceId);
  }

  #newId(): string {
    for (;;) {
      const id = `local-${randomBytes(6).toString('hex')}`;
      if (!this.#records.some((r) => r.instanceId === id)) return id;
    }
  }

  #open(): void {
    if (this.#closed) throw new ProviderError('ProviderClosed', 'the local provider is closed');
  }

  /** Runs `fn` after every earlier call: a launch awaiting its token must not interleave. */
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

/** Polls `cond` every 50 ms until true (→ true) or `ms` passed (→ false). */
async function waitUntil(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
