/**
 * The Docker executor: one container per task, through dockerode (docs/architecture.md, 9,
 * "Every task gets its own container"). dockerode's errors are translated here and nowhere
 * else, and classified by whose fault they are: an image that cannot be pulled (not found,
 * unauthorised, an invalid reference) or a command the engine cannot execute is the task's
 * (`task_fault`); an unreachable engine, a full disk or anything unexplained is the
 * runner's (`runner_error`, or a DockerUnavailableError). No promise made here ever
 * rejects unhandled.
 */
import Dockerode from 'dockerode';
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, mkdir, open, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { resolveContainerPolicy, type ContainerPolicy } from '../../lib/container-policy.ts';
import { GantryError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import type { ExecHooks, ExecResult, Execution, Executor, Outcome, TaskSpec } from './types.ts';
import { settledWithin } from '../../lib/deadline.ts';

export interface DockerExecutorOptions {
  /** The engine; default: dockerode's own default (DOCKER_HOST or /var/run/docker.sock). */
  docker?: Dockerode;
  runnerId: string;
  /** Host directory for per-task files; must be visible to the engine (same host). */
  workDir: string;
  /** The network of every container, instead of each cluster's (container.network). */
  networkOverride?: string;
  /** Between SIGTERM and SIGKILL when a task times out. Default 10000. */
  killGraceMs?: number;
  /** Extra labels on every container (e.g. a test run id). */
  labels?: Record<string, string>;
  log: Logger;
  /** How often the progress file is read while a task runs. Default 250. */
  progressPollMs?: number;
  /** A pull taking longer than this fails the task as runner_error. Default 600000. */
  pullTimeoutMs?: number;
  /** Bound on create, attach, start, inspect and remove calls. Default 60000. */
  apiTimeoutMs?: number;
  /**
   * How long a pull that failed through the image's fault is remembered, per image and
   * registry credentials: tasks of that image meanwhile fail at once, without a pull.
   * 0: not remembered. Default 30000.
   */
  pullFailureTtlMs?: number;
  /**
   * Told of every image a task needed that was not present: `pulled`, `failed` (the pull
   * failed), `shared` (a pull of the same image already under way was waited for) or
   * `remembered` (failed at once from a recent failure). For metrics.
   */
  onPull?: (result: PullResult) => void;
}

export type PullResult = 'pulled' | 'failed' | 'shared' | 'remembered';

/** The Docker engine cannot be reached; the runner should not lease tasks until it can. */
export class DockerUnavailableError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('docker_unavailable', message, { cause, retryable: true });
  }
}

/** Labels, shared with leftovers(): a restarted runner finds its containers by these. */
export const LABEL = {
  runner: 'gantry.runner',
  task: 'gantry.task',
  lease: 'gantry.lease',
  attempt: 'gantry.attempt',
} as const;

/** Where the task sees its files (the env vars point here). */
const IN_DIR = '/gantry/in';
const OUT_DIR = '/gantry/out';
const CODE_DIR = '/mnt/code';
/** After the container exited, how long its output stream may take to end. */
const OUTPUT_DRAIN_MS = 10_000;
const PING_TIMEOUT_MS = 5_000;
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A progress file is a line of JSON; anything bigger is not one. */
const PROGRESS_MAX_BYTES = 64 * 1024;
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** The parts of DockerExecutor an execution uses. */
interface Ctx {
  docker: Dockerode;
  runnerId: string;
  workDir: string;
  networkOverride: string | undefined;
  killGraceMs: number;
  labels: Record<string, string>;
  log: Logger;
  progressPollMs: number;
  pullTimeoutMs: number;
  apiTimeoutMs: number;
  live: Set<DockerExecution>;
  closed: boolean;
  pullFailureTtlMs: number;
  onPull: (result: PullResult) => void;
  /** Pulls under way, by pullKey(): tasks needing the same image wait for one pull. */
  pulls: Map<string, Promise<void>>;
  /** Recent pulls that failed through the image's fault, by pullKey(). */
  pullFailures: Map<string, { until: number; msg: string }>;
  /** Stops the pulls under way when the executor closes. */
  pullAborts: Set<AbortController>;
  /** Whether an image (by id) has a /bin/sh to join stderr to stdout with (TaskSpec.mergeStderr). */
  shells: Map<string, boolean>;
}

export class DockerExecutor implements Executor {
  readonly kind = 'docker' as const;
  readonly #ctx: Ctx;

  constructor(opts: DockerExecutorOptions) {
    this.#ctx = {
      docker: opts.docker ?? new Dockerode(),
      runnerId: opts.runnerId,
      workDir: path.resolve(opts.workDir),
      networkOverride: opts.networkOverride,
      killGraceMs: opts.killGraceMs ?? 10_000,
      labels: { ...(opts.labels ?? {}) },
      log: opts.log,
      progressPollMs: opts.progressPollMs ?? 250,
      pullTimeoutMs: opts.pullTimeoutMs ?? 600_000,
      apiTimeoutMs: opts.apiTimeoutMs ?? 60_000,
      live: new Set(),
      closed: false,
      pullFailureTtlMs: opts.pullFailureTtlMs ?? 30_000,
      onPull: opts.onPull ?? (() => undefined),
      pulls: new Map(),
      pullFailures: new Map(),
      pullAborts: new Set(),
      shells: new Map(),
    };
  }

  /** Throws DockerUnavailableError naming the socket (or host) when the engine does not answer. */
  async ping(): Promise<void> {
    try {
      await withTimeout(this.#ctx.docker.ping(), PING_TIMEOUT_MS, 'ping');
    } catch (err) {
      throw new DockerUnavailableError(
        `Docker engine unreachable at ${engineAddress(this.#ctx.docker)}: ${describe(err)}`,
        err,
      );
    }
  }

  start(spec: TaskSpec, hooks: ExecHooks): Execution {
    const ex = new DockerExecution(this.#ctx, spec, hooks);
    this.#ctx.live.add(ex);
    void ex.result.then(() => this.#ctx.live.delete(ex));
    return ex;
  }

  async leftovers(): Promise<{ containerId: string; taskId: string; leaseId: string; attempt: number; running: boolean }[]> {
    let list: Dockerode.ContainerInfo[];
    try {
      list = await withTimeout(
        this.#ctx.docker.listContainers({ all: true, filters: { label: [`${LABEL.runner}=${this.#ctx.runnerId}`] } }),
        this.#ctx.apiTimeoutMs,
        'list containers',
      );
    } catch (err) {
      throw translate(err, 'could not list containers', this.#ctx.docker);
    }
    return list.map((c) => ({
      containerId: c.Id,
      taskId: c.Labels[LABEL.task] ?? '',
      leaseId: c.Labels[LABEL.lease] ?? '',
      attempt: Number(c.Labels[LABEL.attempt] ?? 0) || 0,
      running: c.State === 'running',
    }));
  }

  /** Force-removes a container (gone already is fine) and its task files, if labelled. */
  async remove(containerId: string): Promise<void> {
    const c = this.#ctx.docker.getContainer(containerId);
    let leaseId: string | undefined;
    try {
      const info = await withTimeout(c.inspect(), this.#ctx.apiTimeoutMs, 'inspect');
      leaseId = info.Config.Labels?.[LABEL.lease];
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw translate(err, `could not inspect container ${containerId}`, this.#ctx.docker);
    }
    try {
      await withTimeout(c.remove({ force: true, v: true }), this.#ctx.apiTimeoutMs, 'remove');
    } catch (err) {
      if (statusOf(err) !== 404) throw translate(err, `could not remove container ${containerId}`, this.#ctx.docker);
    }
    if (leaseId && SAFE_ID.test(leaseId)) {
      await rm(taskDir(this.#ctx.workDir, leaseId), { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** Stops progress polling; running containers are left to the caller (cancel or kill them first). */
  async close(): Promise<void> {
    this.#ctx.closed = true;
    for (const ex of this.#ctx.live) ex.stopPolling();
    for (const a of this.#ctx.pullAborts) a.abort();
  }
}

type StopReason = 'timeout' | 'cancel' | 'kill';
/** A container's Entrypoint and Cmd; neither: the image's own. */
type Argv = Pick<Dockerode.ContainerCreateOptions, 'Entrypoint' | 'Cmd'>;

class DockerExecution implements Execution {
  readonly result: Promise<ExecResult>;
  readonly #ctx: Ctx;
  readonly #spec: TaskSpec;
  readonly #hooks: ExecHooks;
  readonly #log: Logger;
  readonly #abort = new AbortController();
  readonly #timers = new Set<NodeJS.Timeout>();
  #stop: StopReason | null = null;
  #cancelGraceMs = 0;
  #container: Dockerode.Container | null = null;
  #removal: Promise<void> | null = null;
  /** Started and not yet seen to exit: signals are only sent in this window. */
  #running = false;
  #progressTimer: NodeJS.Timeout | null = null;
  #progressRead: Promise<void> | null = null;
  #progressRaw = '';
  #progressSent = '';
  /** What the container may do: the offer's policy, bounded (lib/container-policy.ts). */
  readonly #policy: ContainerPolicy;
  readonly #policyError: string | undefined;

  constructor(ctx: Ctx, spec: TaskSpec, hooks: ExecHooks) {
    this.#ctx = ctx;
    this.#spec = spec;
    this.#hooks = hooks;
    this.#log = ctx.log.child({ taskId: spec.taskId, leaseId: spec.leaseId });
    const policy = resolveContainerPolicy(spec.container);
    this.#policy = policy.policy;
    this.#policyError = policy.error;
    if (policy.ignored.length > 0) this.#log.warn({ ignored: policy.ignored }, 'container policy: left out what this runner does not allow');
    const t0 = Date.now();
    const run = ctx.closed ? Promise.resolve(this.#early('runner_error', 'executor is closed', t0)) : this.#run(t0);
    this.result = run.catch((err: unknown) => {
      this.#log.error({ err }, 'executor bug: task pipeline threw');
      return this.#early('runner_error', `runner error: ${describe(err)}`, t0);
    });
  }

  cancel(graceMs: number): void {
    if (this.#stop) return;
    this.#stop = 'cancel';
    this.#cancelGraceMs = Math.max(0, graceMs);
    this.#abort.abort();
    if (this.#running) this.#terminate(this.#cancelGraceMs);
  }

  async kill(): Promise<void> {
    if (this.#stop !== 'kill') {
      this.#stop = 'kill';
      this.#abort.abort();
      if (this.#container) await this.#forceRemove();
    }
    await this.result;
  }

  /** Read through a method: TypeScript would otherwise keep narrowings across awaits. */
  #stopped(): StopReason | null {
    return this.#stop;
  }

  stopPolling(): void {
    if (this.#progressTimer) clearInterval(this.#progressTimer);
    this.#progressTimer = null;
  }

  async #run(t0: number): Promise<ExecResult> {
    const spec = this.#spec;
    if (!SAFE_ID.test(spec.leaseId)) return this.#early('runner_error', `invalid lease id ${JSON.stringify(spec.leaseId)}`, t0);
    if (this.#policyError) return this.#early('failed', `not run: ${this.#policyError}`, t0);
    const dir = taskDir(this.#ctx.workDir, spec.leaseId);
    try {
      await this.#writeFiles(dir);
    } catch (err) {
      await this.#removeDir(dir);
      return this.#early('runner_error', `could not write task files in ${dir}: ${describe(err)}`, t0);
    }
    try {
      return await this.#runContainer(dir, t0);
    } finally {
      this.#clearTimers();
      await this.#removeDir(dir);
    }
  }

  async #runContainer(dir: string, t0: number): Promise<ExecResult> {
    const launched = await this.#launch(dir, t0);
    if ('outcome' in launched) return launched;
    const { container, stream, outputEnded, startedAt } = launched;

    if (this.#stopped() === 'cancel') this.#terminate(this.#cancelGraceMs);
    else if (this.#stopped() === 'kill') void this.#forceRemove();
    if (this.#spec.timeoutS > 0) {
      this.#timer(() => {
        if (this.#stopped()) return;
        this.#stop = 'timeout';
        this.#terminate(this.#ctx.killGraceMs);
      }, this.#spec.timeoutS * 1000);
    }
    this.#startPolling(dir);

    let exitCode = -1;
    let waitError: unknown = null;
    try {
      const w = (await container.wait()) as { StatusCode?: number };
      exitCode = typeof w.StatusCode === 'number' ? w.StatusCode : -1;
    } catch (err) {
      waitError = err;
    }
    const finishedAt = Date.now();
    this.#running = false;
    this.#clearTimers();
    this.stopPolling();

    let oomKilled = false;
    try {
      const info = await this.#api(container.inspect(), 'inspect');
      oomKilled = info.State.OOMKilled === true;
      if (typeof info.State.ExitCode === 'number') exitCode = info.State.ExitCode;
      if (!info.State.Running) waitError = null;
    } catch {
      // Gone (killed) or the engine is down; the wait result or error decides.
    }
    // The engine learns of an OOM kill from a separate event that can land just after the
    // exit: a SIGKILL exit we did not cause is looked at again before it is called plain.
    for (let i = 0; i < 5 && !oomKilled && exitCode === 137 && !this.#stopped(); i++) {
      await new Promise((r) => setTimeout(r, 100));
      try {
        oomKilled = (await this.#api(container.inspect(), 'inspect')).State.OOMKilled === true;
      } catch {
        break;
      }
    }

    // Removal waits for the output to end, so that nothing printed last is lost.
    if (!(await within(outputEnded, OUTPUT_DRAIN_MS))) {
      this.#log.warn({ containerId: container.id }, 'output stream did not end after the container exited');
      destroy(stream);
    }
    await this.#readProgress(dir); // may be a poll that began before the exit
    await this.#readProgress(dir); // so read once more: the last value counts
    await this.#forceRemove();
    return this.#outcome({ exitCode, oomKilled, startedAt, finishedAt }, waitError);
  }

  /**
   * Image, create, attach, start: the container running with its output attached, or the
   * result when it never got that far (pull and create failures are `runner_error`).
   */
  async #launch(
    dir: string,
    t0: number,
  ): Promise<
    | ExecResult
    | { container: Dockerode.Container; stream: NodeJS.ReadableStream; outputEnded: Promise<void>; startedAt: number }
  > {
    const { docker } = this.#ctx;
    const spec = this.#spec;
    const pullStart = Date.now();
    try {
      await this.#ensureImage();
    } catch (err) {
      if (this.#stopped()) return this.#stoppedEarly(t0);
      if (err instanceof TaskFaultError) return this.#early('task_fault', err.message, t0);
      return this.#early('runner_error', failure(`could not pull image ${spec.image}`, err, docker), t0);
    }
    const imagePullMs = Date.now() - pullStart;
    if (this.#stopped()) return this.#stoppedEarly(t0);

    const createStart = Date.now();
    let container: Dockerode.Container;
    try {
      const argv = await this.#argv();
      container = await this.#api(docker.createContainer(this.#createOptions(dir, argv.merged ?? argv.plain)), 'create');
      this.#container = container;
      // An image without /bin/sh cannot have its stderr joined to stdout: its two streams
      // are read apart instead, as when the package asks for that.
      if (argv.merged && !(await this.#hasShell(container, argv.imageId))) {
        this.#container = null;
        await this.#removeNow(container);
        if (this.#stopped()) return this.#stoppedEarly(t0);
        container = await this.#api(docker.createContainer(this.#createOptions(dir, argv.plain)), 'create');
        this.#container = container;
      }
    } catch (err) {
      await this.#forceRemove(); // the container made before a failed look for /bin/sh
      if (isBadReference(err)) return this.#early('task_fault', badReference(spec.image, err), t0);
      if (this.#missingNetwork(err)) return this.#early('failed', this.#missingNetwork(err)!, t0);
      return this.#early('runner_error', failure(`could not create container for image ${spec.image}`, err, docker), t0);
    }
    const createMs = Date.now() - createStart;
    if (this.#stopped()) {
      await this.#forceRemove();
      return this.#stoppedEarly(t0);
    }

    // Attach before start: output written before an attach is not replayed by it.
    let stream: NodeJS.ReadableStream;
    const attaching = container.attach({ stream: true, stdout: true, stderr: true }) as Promise<NodeJS.ReadableStream>;
    try {
      stream = await this.#api(attaching, 'attach');
    } catch (err) {
      // An attach that answers after its timeout gets a stream nobody reads: close it, and
      // give it a listener, since an 'error' on a stream without one ends the process.
      void attaching.then(
        (s) => {
          s.on('error', () => undefined);
          destroy(s);
        },
        () => undefined,
      );
      await this.#forceRemove();
      return this.#early('runner_error', failure('could not attach to container', err, docker), t0);
    }
    const outputEnded = this.#pipeOutput(stream);
    if (this.#stopped()) {
      destroy(stream);
      await this.#forceRemove();
      return this.#stoppedEarly(t0);
    }

    try {
      await this.#api(container.start(), 'start');
    } catch (err) {
      destroy(stream);
      await this.#forceRemove();
      if (this.#stopped()) return this.#stoppedEarly(t0);
      if (this.#missingNetwork(err)) return this.#early('failed', this.#missingNetwork(err)!, t0);
      // The cluster's container.user names a user or group the image does not have.
      if (this.#policy.user && /unable to find (user|group)/i.test(describe(err))) {
        return this.#early('task_fault', `the container could not start as the cluster's container.user ${this.#policy.user}: ${describe(err)}`, t0, 127);
      }
      // The engine could not exec the command (no shell, a bad entrypoint, an environment it
      // refuses): the image's or the code package's fault, not the runner's.
      if (isUnstartable(err)) {
        return this.#early('task_fault', `the container could not start: ${describe(err)}; check the code package's command and image`, t0, 127);
      }
      return this.#early('runner_error', failure('could not start container', err, docker), t0);
    }
    const startedAt = Date.now();
    this.#running = true;
    this.#safeHook(() => this.#hooks.onStarted({ containerId: container.id, startedAt, imagePullMs, createMs }));
    return { container, stream, outputEnded, startedAt };
  }

  /** A stop we asked for decides first; then the exit code; OOM explains a failure. */
  #outcome(base: Omit<ExecResult, 'outcome' | 'msg'>, waitError: unknown): ExecResult {
    switch (this.#stopped()) {
      case 'kill':
        return { ...base, outcome: 'cancelled', msg: 'killed' };
      case 'cancel':
        return { ...base, outcome: 'cancelled', msg: 'cancelled' };
      case 'timeout':
        return { ...base, outcome: 'timed_out', msg: `timed out after ${this.#spec.timeoutS} s` };
    }
    if (waitError) {
      return { ...base, outcome: 'runner_error', msg: `lost track of the container: ${describe(waitError)}` };
    }
    const mem = `out of memory (limit ${this.#spec.memoryMb} MB)`;
    if (base.exitCode === 0) {
      // cgroup v1 sets OOMKilled when any process of the container was OOM-killed, even if
      // the task itself survived and exited 0: its exit code is the verdict then.
      return { ...base, outcome: 'succeeded', msg: base.oomKilled ? `exit code 0; a process ran ${mem}` : 'exit code 0' };
    }
    if (base.oomKilled) return { ...base, outcome: 'failed', msg: `ran ${mem}, exit code ${base.exitCode}` };
    if (base.exitCode === 137) {
      // SIGKILL from outside the task, not from Gantry: on a container that is almost always
      // the kernel's OOM killer, even when the engine did not report it.
      return { ...base, outcome: 'failed', msg: `exit code 137: killed by SIGKILL, most likely ${mem}` };
    }
    // docker-init (and any shell) exits 127 when the command is not found, 126 when it cannot be executed.
    if (base.exitCode === 127) return { ...base, outcome: 'failed', msg: "exit code 127: command not found; check the code package's command and image" };
    if (base.exitCode === 126) return { ...base, outcome: 'failed', msg: "exit code 126: command not executable; check the code package's command and image" };
    return { ...base, outcome: 'failed', msg: `exit code ${base.exitCode}` };
  }

  /**
   * What the container runs: `/bin/sh -c command`, or the image's own entrypoint and command
   * when the package gives none (`plain`). With mergeStderr, `merged` is the same run with
   * stderr joined to stdout by the shell before anything else is written, so the one pipe
   * keeps the order of every line (two pipes do not: the engine reads them apart). For the
   * image's own command that takes its entrypoint and command from the image, and the
   * image's /bin/sh, which `imageId` names for #hasShell.
   */
  async #argv(): Promise<{ plain: Argv; merged?: Argv; imageId?: string }> {
    const spec = this.#spec;
    if (spec.command.trim()) {
      const plain: Argv = { Entrypoint: [], Cmd: ['/bin/sh', '-c', spec.command] };
      return spec.mergeStderr ? { plain, merged: { Entrypoint: [], Cmd: ['/bin/sh', '-c', `exec 2>&1\n${spec.command}`] } } : { plain };
    }
    if (!spec.mergeStderr) return { plain: {} };
    const image = await this.#api(this.#ctx.docker.getImage(spec.image).inspect(), 'image inspect');
    const own = [...(image.Config?.Entrypoint ?? []), ...(image.Config?.Cmd ?? [])];
    // No command at all: the engine says so at create, as without merging.
    if (own.length === 0) return { plain: {} };
    return { plain: {}, merged: { Entrypoint: ['/bin/sh', '-c', 'exec "$@" 2>&1', 'sh'], Cmd: own }, imageId: image.Id };
  }

  /** Whether the created container's filesystem has /bin/sh; remembered per image (a command package always needs one). */
  async #hasShell(container: Dockerode.Container, imageId: string | undefined): Promise<boolean> {
    if (!imageId) return true;
    const shells = this.#ctx.shells;
    const known = shells.get(imageId);
    if (known !== undefined) return known;
    let found: boolean;
    try {
      destroy((await this.#api(container.infoArchive({ path: '/bin/sh' }), 'archive stat')) as NodeJS.ReadableStream);
      found = true;
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      found = false;
    }
    if (shells.size >= MAX_REMEMBERED_SHELLS) shells.delete(shells.keys().next().value!);
    shells.set(imageId, found);
    if (!found) this.#log.info({ image: this.#spec.image }, 'image has no /bin/sh: its stdout and stderr are read apart');
    return found;
  }

  #createOptions(dir: string, argv: Argv): Dockerode.ContainerCreateOptions {
    const spec = this.#spec;
    const env = new Map<string, string>();
    for (const [k, v] of Object.entries(spec.env ?? {})) if (k && !k.includes('=')) env.set(k, v);
    // Ours last: the task's env_vars cannot move the files it is told about.
    env.set('PAYLOAD_FILE', `${IN_DIR}/payload`);
    env.set('CONFIG_FILE', `${IN_DIR}/config`);
    env.set('PROGRESS_FILE', `${OUT_DIR}/progress`);
    env.set('TASK_ID', spec.taskId);
    env.set('PROJECT_ID', spec.projectId);
    env.set('CODE_NAME', spec.codeName);
    const binds = [`${path.join(dir, 'in')}:${IN_DIR}:ro`, `${path.join(dir, 'out')}:${OUT_DIR}`];
    if (spec.codeDir) binds.push(`${path.resolve(spec.codeDir)}:${CODE_DIR}:ro`);
    const memory = spec.memoryMb > 0 ? Math.round(spec.memoryMb * 1024 * 1024) : 0;
    const policy = this.#policy;
    return {
      name: `gantry-${spec.leaseId}`,
      Image: spec.image,
      ...argv,
      ...(spec.codeDir ? { WorkingDir: CODE_DIR } : {}),
      ...(policy.user ? { User: policy.user } : {}),
      Env: [...env].map(([k, v]) => `${k}=${v}`),
      Labels: {
        ...this.#ctx.labels,
        [LABEL.runner]: this.#ctx.runnerId,
        [LABEL.task]: spec.taskId,
        [LABEL.lease]: spec.leaseId,
        [LABEL.attempt]: String(spec.attempt),
      },
      Tty: false,
      OpenStdin: false,
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      HostConfig: {
        Binds: binds,
        NetworkMode: this.#network(),
        Memory: memory,
        MemorySwap: memory, // equal to Memory: no swap on top
        Privileged: false,
        SecurityOpt: ['no-new-privileges'],
        // Docker's default capability set lets a task mknod devices, chown anything and send
        // raw packets; a task gets none of it unless its cluster adds some back.
        CapDrop: ['ALL'],
        CapAdd: policy.capAdd.map((c) => `CAP_${c}`),
        PidsLimit: policy.pidsLimit,
        Ulimits: [{ Name: 'nofile', Soft: policy.nofile, Hard: policy.nofile }],
        ReadonlyRootfs: policy.readOnlyRootfs,
        // Programs expect a writable /tmp. Where the image has a /tmp, runc gives the tmpfs
        // that directory's mode (normally 1777), whatever `mode=` says.
        ...(policy.readOnlyRootfs ? { Tmpfs: { '/tmp': `rw,exec,nosuid,nodev,size=${policy.tmpSizeMb}m,mode=1777` } } : {}),
        // A tiny init (docker-init) as PID 1 forwards SIGTERM to the task, so a cancel's
        // grace period means something; a shell as PID 1 would ignore it.
        Init: true,
        AutoRemove: false, // removed by us once its output is drained
      },
    };
  }

  /**
   * A network the container should join that this runner's engine does not have (the engine
   * says so at create or at start): the operator's setting, neither the task's fault nor the
   * runner's.
   */
  #missingNetwork(err: unknown): string | undefined {
    const network = this.#network();
    if (!describe(err).includes(`network ${network} not found`)) return undefined;
    return `not run: the container network ${JSON.stringify(network)} does not exist on this runner's Docker engine (create it there with docker network create, or change the cluster's container.network)`;
  }

  /** The runner's override (GANTRY_RUNNER_NETWORK), else the cluster's container.network. */
  #network(): string {
    return this.#ctx.networkOverride ?? this.#policy.network;
  }

  async #writeFiles(dir: string): Promise<void> {
    await mkdir(path.join(dir, 'in'), { recursive: true });
    await mkdir(path.join(dir, 'out'), { recursive: true });
    // The task may run as any user, without CAP_DAC_OVERRIDE even as root: it must read the
    // inputs and write its progress. chmod, not only a create mode, which the umask narrows.
    await chmod(path.join(dir, 'in'), 0o755);
    await chmod(path.join(dir, 'out'), 0o777);
    await writeFile(path.join(dir, 'in', 'payload'), this.#spec.payload ?? '', { mode: 0o644 });
    await writeFile(path.join(dir, 'in', 'config'), this.#spec.config ?? '', { mode: 0o644 });
    await chmod(path.join(dir, 'in', 'payload'), 0o644);
    await chmod(path.join(dir, 'in', 'config'), 0o644);
  }

  async #removeDir(dir: string): Promise<void> {
    try {
      await rm(dir, { recursive: true, force: true });
    } catch (err) {
      this.#log.warn({ err, dir }, 'could not remove task directory');
    }
  }

  /**
   * Uses the local image if present; pulls it otherwise. Tasks needing an image that is
   * being pulled wait for that pull instead of starting another; a pull that failed through
   * the image's fault is remembered for pullFailureTtlMs, and tasks of that image meanwhile
   * fail at once. The image's fault throws TaskFaultError. A cancel ends this task's wait,
   * not a pull other tasks may share (pullTimeoutMs bounds that).
   */
  async #ensureImage(): Promise<void> {
    const ctx = this.#ctx;
    const image = this.#spec.image;
    if (!IMAGE_REF.test(image)) {
      throw new TaskFaultError(`image ${JSON.stringify(image)} is not a valid image reference; check the code package's image`);
    }
    try {
      await this.#api(ctx.docker.getImage(image).inspect(), 'image inspect');
      return;
    } catch (err) {
      if (isBadReference(err)) throw new TaskFaultError(badReference(image, err));
      if (statusOf(err) !== 404) throw err;
    }
    const key = pullKey(image, this.#spec.dockerAuth);
    const failed = ctx.pullFailures.get(key);
    if (failed && failed.until > Date.now()) {
      ctx.onPull('remembered');
      throw new TaskFaultError(failed.msg);
    }
    let pull = ctx.pulls.get(key);
    if (pull) {
      ctx.onPull('shared');
    } else {
      const p = pullImage(ctx, image, this.#spec.dockerAuth, key);
      pull = p;
      ctx.pulls.set(key, p);
      const done = () => {
        if (ctx.pulls.get(key) === p) ctx.pulls.delete(key);
      };
      void p.then(done, done);
    }
    await untilAborted(pull, this.#abort.signal);
  }

  /** Demuxes the attach stream into onOutput calls; resolves when the stream ends (never rejects). */
  #pipeOutput(stream: NodeJS.ReadableStream): Promise<void> {
    const sink = (name: 'stdout' | 'stderr') => ({
      write: (chunk: Buffer): boolean => {
        this.#safeHook(() => this.#hooks.onOutput(name, chunk));
        return true;
      },
    });
    return new Promise<void>((resolve) => {
      stream.once('end', () => resolve());
      stream.once('close', () => resolve());
      stream.on('error', (err: unknown) => {
        this.#log.warn({ err }, 'output stream failed');
        resolve();
      });
      // demuxStream only ever calls write() on its sinks.
      const out = sink('stdout') as unknown as NodeJS.WritableStream;
      const err = sink('stderr') as unknown as NodeJS.WritableStream;
      this.#ctx.docker.modem.demuxStream(stream, out, err);
    });
  }

  #startPolling(dir: string): void {
    if (!this.#hooks.onProgress || this.#ctx.closed) return;
    this.#progressTimer = setInterval(() => void this.#readProgress(dir), this.#ctx.progressPollMs);
    this.#progressTimer.unref();
  }

  /** Reads the progress file (one read at a time; a caller during a read shares it). */
  #readProgress(dir: string): Promise<void> {
    if (!this.#hooks.onProgress) return Promise.resolve();
    this.#progressRead ??= this.#readProgressNow(dir).finally(() => {
      this.#progressRead = null;
    });
    return this.#progressRead;
  }

  /**
   * Reports each new well-formed value once and ignores the rest. The task owns the out dir:
   * the file may be a symlink to a host path, a FIFO, or huge, so it is opened without
   * following links, must be a regular file, and at most PROGRESS_MAX_BYTES long.
   */
  async #readProgressNow(dir: string): Promise<void> {
    let raw: string;
    try {
      const fh = await open(path.join(dir, 'out', 'progress'), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        const st = await fh.stat();
        if (!st.isFile() || st.size > PROGRESS_MAX_BYTES) return;
        const buf = Buffer.alloc(st.size);
        const { bytesRead } = await fh.read(buf, 0, st.size, 0);
        raw = buf.subarray(0, bytesRead).toString('utf8');
      } finally {
        await fh.close();
      }
    } catch {
      return; // not written yet, or not a plain file: the next poll looks again
    }
    if (raw === this.#progressRaw) return;
    this.#progressRaw = raw;
    const p = parseProgress(raw);
    if (!p) return;
    const key = JSON.stringify(p);
    if (key === this.#progressSent) return;
    this.#progressSent = key;
    this.#safeHook(() => this.#hooks.onProgress?.(p));
  }

  /** SIGTERM now, SIGKILL after graceMs (unless the container exited first). */
  #terminate(graceMs: number): void {
    void this.#signal('SIGTERM');
    this.#timer(() => void this.#signal('SIGKILL'), graceMs);
  }

  async #signal(signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
    if (!this.#container || !this.#running) return;
    try {
      await this.#api(this.#container.kill({ signal }), 'kill');
    } catch (err) {
      // 404 gone, 409 not running: it ended on its own meanwhile.
      const s = statusOf(err);
      if (s !== 404 && s !== 409) this.#log.warn({ err, signal }, 'could not signal container');
    }
  }

  /** Removes the container once, however many callers ask (kill() and the pipeline both do). */
  #forceRemove(): Promise<void> {
    const c = this.#container;
    if (!c) return Promise.resolve();
    this.#removal ??= this.#removeNow(c);
    return this.#removal;
  }

  async #removeNow(c: Dockerode.Container): Promise<void> {
    try {
      await this.#api(c.remove({ force: true, v: true }), 'remove');
      return;
    } catch (err) {
      const s = statusOf(err);
      if (s === 404) return;
      if (s !== 409) {
        this.#log.warn({ err, containerId: c.id }, 'could not remove container');
        return;
      }
    }
    // 409: someone else's removal is in progress; "gone" means inspect says 404.
    const deadline = Date.now() + this.#ctx.apiTimeoutMs;
    while (Date.now() < deadline) {
      try {
        await this.#api(c.inspect(), 'inspect');
      } catch (err) {
        if (statusOf(err) === 404) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    this.#log.warn({ containerId: c.id }, 'container removal did not finish');
  }

  #timer(fn: () => void, ms: number): NodeJS.Timeout {
    // setTimeout fires at once beyond 2^31-1 ms (24.8 days): clamp, firing late rather than now.
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, Math.min(ms, MAX_TIMER_MS));
    this.#timers.add(t);
    return t;
  }

  #clearTimers(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  #api<T>(p: Promise<T>, what: string): Promise<T> {
    return withTimeout(p, this.#ctx.apiTimeoutMs, what);
  }

  #safeHook(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.warn({ err }, 'executor hook threw');
    }
  }

  #stoppedEarly(t0: number): ExecResult {
    return this.#early('cancelled', this.#stop === 'kill' ? 'killed' : 'cancelled before start', t0);
  }

  #early(outcome: Outcome, msg: string, t0: number, exitCode = -1): ExecResult {
    if (outcome === 'runner_error') this.#log.warn({ reason: msg }, 'task not run');
    return { outcome, exitCode, oomKilled: false, msg, startedAt: t0, finishedAt: Date.now() };
  }
}

function taskDir(workDir: string, leaseId: string): string {
  return path.join(workDir, 'tasks', leaseId);
}

/** `{"percent": 50, "msg": "..."}`, either key optional; anything else is ignored. */
function parseProgress(raw: string): { percent?: number; msg?: string } | null {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const p: { percent?: number; msg?: string } = {};
  // The frame's percent is an int32 (a wider number fails the encoding and loses the frame): 0..100.
  if (typeof o.percent === 'number' && Number.isFinite(o.percent)) p.percent = Math.min(100, Math.max(0, Math.round(o.percent)));
  if (typeof o.msg === 'string') p.msg = o.msg;
  return p.percent === undefined && p.msg === undefined ? null : p;
}

/** Docker's pull answers 200 and reports failures inside the JSON-lines stream. */
function followPull(stream: NodeJS.ReadableStream): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let buf = '';
    let failure: string | null = null;
    let done = false;
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      if (err) reject(err);
      else resolve();
    };
    stream.on('data', (chunk: Buffer | string) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        try {
          const ev = JSON.parse(line) as { error?: string; errorDetail?: { message?: string } };
          if (ev.error || ev.errorDetail?.message) failure = ev.errorDetail?.message ?? ev.error ?? 'pull failed';
        } catch {
          // A progress line we cannot read does not decide anything.
        }
      }
    });
    stream.on('error', (err: Error) => finish(err));
    stream.on('end', () => finish(failure ? new PullReportedError(failure) : null));
    stream.on('close', () => finish(failure ? new PullReportedError(failure) : new Error('pull stream closed early')));
  });
}

/** A failure the engine reported inside the pull's progress stream (it answered 200 first). */
class PullReportedError extends Error {}

/** The task's own fault, worded for its owner: the task ends `task_fault` with this message. */
class TaskFaultError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('task_fault', message, { cause });
  }
}

/**
 * Pulls `image` once for every task waiting on it (not tied to any one of them), bounded by
 * pullTimeoutMs and by close(). A failure through the image's fault is remembered and
 * thrown as TaskFaultError; any other is thrown as it is (the runner's fault).
 */
async function pullImage(ctx: Ctx, image: string, auth: string | undefined, key: string): Promise<void> {
  ctx.log.info({ image }, 'pulling image');
  const abort = new AbortController();
  ctx.pullAborts.add(abort);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    abort.abort();
  }, Math.min(ctx.pullTimeoutMs, MAX_TIMER_MS));
  timer.unref();
  try {
    const opts: Record<string, unknown> = { abortSignal: abort.signal };
    if (auth) opts.authconfig = authConfig(auth, image);
    const stream = (await ctx.docker.pull(image, opts)) as NodeJS.ReadableStream;
    await followPull(stream);
    ctx.onPull('pulled');
  } catch (err) {
    ctx.onPull('failed');
    if (timedOut) throw new Error(`pull took longer than ${ctx.pullTimeoutMs} ms`);
    if (abort.signal.aborted) throw new Error('pull stopped: the executor is closing');
    if (!isImageFault(err)) throw err;
    const msg = `image ${JSON.stringify(image)} could not be pulled: ${describe(err)}; check the code package's image`;
    ctx.log.warn({ image, reason: msg }, 'image cannot be pulled');
    remember(ctx, key, msg);
    throw new TaskFaultError(msg, err);
  } finally {
    clearTimeout(timer);
    ctx.pullAborts.delete(abort);
  }
}

/** The negative cache of pulls: bounded, expired entries dropped as new ones come. */
const MAX_REMEMBERED_PULLS = 1000;
const MAX_REMEMBERED_SHELLS = 1000;

function remember(ctx: Ctx, key: string, msg: string): void {
  if (ctx.pullFailureTtlMs <= 0) return;
  const now = Date.now();
  for (const [k, v] of ctx.pullFailures) if (v.until <= now) ctx.pullFailures.delete(k);
  if (ctx.pullFailures.size >= MAX_REMEMBERED_PULLS) ctx.pullFailures.delete(ctx.pullFailures.keys().next().value!);
  ctx.pullFailures.set(key, { until: now + ctx.pullFailureTtlMs, msg });
}

/** An image and the credentials it is pulled with (hashed: the key is no place for a secret). */
function pullKey(image: string, auth: string | undefined): string {
  return `${image}\n${auth ? createHash('sha256').update(auth).digest('hex').slice(0, 16) : ''}`;
}

/** Resolves or rejects as `p` does, or rejects as soon as `signal` aborts. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new Error('aborted'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** `spec.dockerAuth` (base64 "user:password") as dockerode's authconfig for the image's registry. */
function authConfig(b64: string, image: string): { username: string; password: string; serveraddress: string } {
  const plain = Buffer.from(b64, 'base64').toString('utf8');
  const i = plain.indexOf(':');
  const first = image.split('/')[0] ?? '';
  const hasRegistry = image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  return {
    username: i >= 0 ? plain.slice(0, i) : plain,
    password: i >= 0 ? plain.slice(i + 1) : '',
    serveraddress: hasRegistry ? first : 'https://index.docker.io/v1/',
  };
}

function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof s === 'number' ? s : undefined;
}

/** The engine's own message when it sent one, else the error's. */
function describe(err: unknown): string {
  const e = err as { json?: { message?: unknown }; message?: unknown; code?: unknown } | null;
  if (e && typeof e.json?.message === 'string') return e.json.message;
  if (e && typeof e.message === 'string') return e.message.replace(/^\(HTTP code \d+\) /, '').trim();
  return String(err);
}

const CONNECTION_ERRORS = new Set(['ECONNREFUSED', 'ENOENT', 'EACCES', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT']);

/**
 * A reference the engine's HTTP API can be asked about at all (no whitespace or control
 * characters, which would not even make a request); the engine judges the rest.
 */
const IMAGE_REF = /^[^\s\x00-\x1f\x7f]{1,1024}$/;

/**
 * Failures the engine reports that are about this host, not the image: its disk, its
 * storage driver, or the registry's rate limit on this host's address.
 */
const RUNNER_SIDE =
  /no space left on device|ENOSPC|disk quota exceeded|read-only file system|input\/output error|failed to register layer|error creating overlay mount|toomanyrequests|too many requests/i;

/**
 * Whether a failed pull is the image's fault: the engine answered (an HTTP status, or a
 * failure in its progress stream) and what it said is about the image or its registry (not
 * found, access denied, an invalid reference, a registry that cannot be reached from here)
 * rather than this host. Where no registry answers for a name, the name is what is wrong.
 */
function isImageFault(err: unknown): boolean {
  if (isUnreachable(err)) return false;
  if (RUNNER_SIDE.test(describe(err))) return false;
  return statusOf(err) !== undefined || err instanceof PullReportedError;
}

/** The engine refused the image reference itself. */
function isBadReference(err: unknown): boolean {
  return statusOf(err) === 400 && /invalid reference format/i.test(describe(err));
}

function badReference(image: string, err: unknown): string {
  return `image ${JSON.stringify(image)} is not a valid image reference (${describe(err)}); check the code package's image`;
}

/**
 * The engine could not start the task's process: 400 (the command or entrypoint cannot be
 * executed), or the runtime refusing the process itself (its executable, its environment).
 */
function isUnstartable(err: unknown): boolean {
  const s = statusOf(err);
  if (s === 400) return true;
  const msg = describe(err);
  return s !== undefined && !RUNNER_SIDE.test(msg) && /unable to start container process: (exec:|error during container init: environment variable)/.test(msg);
}

/** Socket-level failures (no HTTP status): the engine itself is unreachable. */
function isUnreachable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return statusOf(err) === undefined && typeof code === 'string' && CONNECTION_ERRORS.has(code);
}

/** A foreign error as ours: connection failures mean the engine is unreachable. */
function translate(err: unknown, what: string, docker: Dockerode): GantryError {
  if (isUnreachable(err)) {
    return new DockerUnavailableError(`Docker engine unreachable at ${engineAddress(docker)}: ${describe(err)}`, err);
  }
  return new GantryError('docker_error', `${what}: ${describe(err)}`, { cause: err });
}

/** The msg of a runner_error result. */
function failure(what: string, err: unknown, docker: Dockerode): string {
  if (isUnreachable(err)) return `${what}: Docker engine unreachable at ${engineAddress(docker)} (${describe(err)})`;
  return `${what}: ${describe(err)}`;
}

function engineAddress(docker: Dockerode): string {
  const m = docker.modem as { socketPath?: unknown; host?: unknown; port?: unknown; protocol?: unknown };
  if (typeof m.socketPath === 'string') return `unix://${m.socketPath}`;
  return `${String(m.protocol ?? 'http')}://${String(m.host ?? 'localhost')}:${String(m.port ?? '')}`;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/** Whether `p` settled within `ms`. */
async function within(p: Promise<void>, ms: number): Promise<boolean> {
  return (await settledWithin(p.then(() => true), ms)) ?? false;
}

function destroy(stream: NodeJS.ReadableStream): void {
  (stream as { destroy?: () => void }).destroy?.();
}
