import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../lib/logger.ts';
import {
  DrainMode,
  LeasePhase,
  Outcome,
  RejectReason,
  RunnerGatewayClient,
  type Cancel,
  type CodeChunk,
  type Completed,
  type LeaseState,
  type LogAck,
  type LogFrame,
  type Offer,
  type RunnerFrame,
  type ServerFrame,
  type Settings,
} from '../proto/gen/gantry/runner/v1/runner.ts';
import { ZipRejectedError } from '../lib/zip.ts';
import { CodeCache } from './code-cache.ts';
import type { RunnerConfig } from './config.ts';
import type { ExecResult, Execution, Executor } from './executor/types.ts';
import { LogShipper, LogSpool } from './logs.ts';
import type { RunnerMetrics } from './metrics.ts';
import { StatsSampler } from './stats.ts';
import { DEFAULT_TASK_MEMORY_MB } from './slots.ts';

export const AGENT_VERSION = '0.1.0';
export const PROTOCOL_VERSION = 1;

const OUTCOME: Record<ExecResult['outcome'], Outcome> = {
  succeeded: Outcome.OUTCOME_SUCCEEDED,
  failed: Outcome.OUTCOME_FAILED,
  timed_out: Outcome.OUTCOME_TIMED_OUT,
  cancelled: Outcome.OUTCOME_CANCELLED,
  task_fault: Outcome.OUTCOME_TASK_FAULT,
  runner_error: Outcome.OUTCOME_RUNNER_ERROR,
};

/** Carries a task's own fault found before its execution began (its zip package) to the result. */
class TaskFault extends Error {
  constructor(readonly result: ExecResult) {
    super(result.msg);
  }
}

/** The msg of a runner_error from preparing a task: a full disk says so (it is this runner's to fix). */
function runnerErrorMsg(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  return e?.code === 'ENOSPC' ? `the runner's disk is full: ${msg}` : msg;
}

/** One lease the runner holds: kept until its result is acknowledged and its log is safe. */
interface LedgerEntry {
  offer: Offer;
  phase: LeasePhase;
  containerId: string;
  execution?: Execution;
  result?: Completed;
  /** The control plane recorded (or refused) the result. */
  acked: boolean;
  /** The log is stored whole on the control plane (or it said to drop it). */
  logDone: boolean;
  /** Cancelled or revoked before the execution began. */
  aborted?: 'cancel' | 'revoke';
  /** Killed by a hand-back drain: reported as RUNNER_ERROR so the task is requeued. */
  handedBack?: boolean;
}

export type AgentState = 'starting' | 'running' | 'draining' | 'stopped';

/** The runner's stable id, kept in its work directory (made on first start). */
export function loadRunnerId(workDir: string): string {
  fs.mkdirSync(workDir, { recursive: true });
  const idFile = path.join(workDir, 'runner-id');
  if (!fs.existsSync(idFile)) fs.writeFileSync(idFile, `${os.hostname()}-${randomUUID().slice(0, 8)}\n`);
  return fs.readFileSync(idFile, 'utf8').trim();
}

/** Fault injection for tests (never set in production): drop every Nth log frame. */
export interface AgentFaults {
  dropLogFrameEvery?: number;
}

/**
 * The runner agent (proto/README.md): dials the control plane, holds one control
 * stream and one log stream, accepts offers within its slots, runs each task through the
 * executor, spools logs to disk until acknowledged, and keeps a ledger so running tasks
 * survive a reconnect.
 */
export class RunnerAgent {
  state: AgentState = 'starting';
  readonly runnerId: string;
  /** Tasks this runner runs at once. */
  slots: number;
  readonly bootId = randomUUID();
  private readonly ledger = new Map<string, LedgerEntry>();
  private readonly shipper: LogShipper;
  private readonly codes: CodeCache;
  private readonly stats: StatsSampler;
  private call: grpc.ClientDuplexStream<RunnerFrame, ServerFrame> | undefined;
  private logCall: grpc.ClientDuplexStream<LogFrame, LogAck> | undefined;
  private settings: Settings | undefined;
  private connected = false;
  private lastServerFrameAt = 0;
  private creditSeq = 0;
  private offersSeen = 0;
  private beatSeq = 0;
  private beatTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly clients: RunnerGatewayClient[];
  /** Which control-plane replica the next stream goes to. */
  private endpoint = 0;
  private attempt = 0;
  private dockerOk = true;
  private drainDeadline = 0;
  private stopping: Promise<void> | undefined;
  private resolveDrained: (() => void) | undefined;

  /** Memory of one task: configured, else the cluster's as the last Welcome said. */
  private taskMemoryMb: number;

  /**
   * `slots.rederive`, when the slots were derived and no task memory is configured: the
   * slots for the cluster's memory per task, applied when a Welcome names it.
   */
  constructor(
    private readonly config: RunnerConfig,
    private readonly slotPlan: { slots: number; rederive?: (taskMemoryMb: number) => number },
    private readonly executor: Executor,
    private readonly log: Logger,
    private readonly metrics: RunnerMetrics,
    private readonly faults: AgentFaults = {},
  ) {
    this.runnerId = loadRunnerId(config.workDir);
    this.slots = slotPlan.slots;
    this.taskMemoryMb = config.taskMemoryMb ?? DEFAULT_TASK_MEMORY_MB;
    const creds = config.tls
      ? grpc.credentials.createSsl(config.tlsCaFile ? fs.readFileSync(config.tlsCaFile) : null)
      : grpc.credentials.createInsecure();
    // One channel per control-plane replica; the stream uses one at a time.
    this.clients = config.controlPlanes.map(
      (cp) =>
        new RunnerGatewayClient(cp, creds, {
          'grpc.keepalive_time_ms': 20_000,
          'grpc.keepalive_timeout_ms': 10_000,
          'grpc.keepalive_permit_without_calls': 1,
          'grpc.max_receive_message_length': 4 * 1024 * 1024,
        }),
    );
    this.shipper = new LogShipper(log.child({ component: 'logs' }), (id, how) => this.onLogDone(id, how));
    this.codes = new CodeCache(path.join(config.workDir, 'code'), config.zipLimits);
    this.stats = new StatsSampler(config.workDir);
  }

  /** The channel of the current control-plane replica. */
  private get client(): RunnerGatewayClient {
    return this.clients[this.endpoint]!;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('x-gantry-cluster-id', this.config.clusterId);
    md.set('authorization', `Bearer ${this.config.clusterToken}`);
    md.set('x-gantry-runner-id', this.runnerId);
    return md;
  }

  /** Healthy when the control stream is alive (a server frame within 3 beats) and Docker answers. */
  health(): { ok: boolean; reason: string } {
    const beat = this.settings?.beatIntervalMs ?? 5000;
    if (!this.connected) return { ok: false, reason: 'control stream is not connected' };
    if (Date.now() - this.lastServerFrameAt > 3 * beat) return { ok: false, reason: 'no frame from the control plane for 3 beat intervals' };
    if (!this.dockerOk) return { ok: false, reason: 'the Docker engine does not answer' };
    return { ok: true, reason: 'ok' };
  }

  /** Running executions (slots in use): ledger entries with neither a result nor an abort. */
  busy(): number {
    return this.occupied.size;
  }

  /**
   * Leases of `busy()`, kept as the ledger changes (the ledger also holds finished leases
   * until their result and log are safe, thousands under load: counting it per offer would
   * be quadratic).
   */
  private readonly occupied = new Set<string>();

  async start(): Promise<void> {
    try {
      await this.executor.ping();
    } catch (err) {
      this.dockerOk = false;
      this.log.error({ err: (err as Error).message }, 'executor not ready; will keep checking');
    }
    // A new process knows nothing of earlier containers: remove what this runner left.
    for (const c of await this.executor.leftovers().catch(() => [])) {
      this.log.warn({ containerId: c.containerId, taskId: c.taskId }, 'removing a container left by an earlier run of this runner');
      await this.executor.remove(c.containerId).catch(() => undefined);
    }
    this.stats.start();
    this.state = 'running';
    this.connect();
  }

  private connect(): void {
    if (this.state === 'stopped') return;
    this.attempt++;
    // Offer sequence numbers are per session: a new stream (maybe to another replica)
    // counts from zero, and a credit must not claim to have seen offers it never got.
    this.offersSeen = 0;
    const call = this.client.connect(this.metadata());
    this.call = call;
    let welcomed = false;
    const handshake = setTimeout(() => {
      if (!welcomed) {
        this.log.warn('no Welcome within 10 s; reconnecting');
        call.cancel();
      }
    }, 10_000);
    call.on('data', (f: ServerFrame) => {
      this.lastServerFrameAt = Date.now();
      if (f.frame?.$case === 'welcome') {
        welcomed = true;
        clearTimeout(handshake);
      }
      try {
        this.onFrame(f);
      } catch (err) {
        this.log.error({ err }, 'failed to handle a frame');
      }
    });
    const lost = (why: string) => {
      clearTimeout(handshake);
      if (this.call !== call) return;
      this.call = undefined;
      this.onDisconnect(why);
    };
    call.on('error', (err: grpc.ServiceError) => lost(`${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`));
    call.on('end', () => lost('stream ended'));
    this.write({
      $case: 'hello',
      value: {
        runnerId: this.runnerId,
        bootId: this.bootId,
        clusterId: this.config.clusterId,
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        dockerVersion: this.executor.kind,
        hostname: os.hostname(),
        capacity: { slots: this.slots, memoryMb: this.slots * this.taskMemoryMb },
        inFlight: [...this.ledger.values()].map((e) => this.leaseState(e)),
        // The runner's labels (GANTRY_RUNNER_LABELS, also put on its containers): its tags in the workers API.
        labels: { ...this.config.containerLabels },
        instanceId: this.config.instanceId,
      },
    });
  }

  private leaseState(e: LedgerEntry): LeaseState {
    return {
      leaseId: e.offer.leaseId,
      taskId: e.offer.taskId,
      attempt: e.offer.attempt,
      phase: e.phase,
      containerId: e.containerId,
      logBytesWritten: this.shipper.bytesWritten(e.offer.leaseId),
      result: e.result,
    };
  }

  private onDisconnect(why: string): void {
    const was = this.connected;
    this.connected = false;
    clearInterval(this.beatTimer);
    this.shipper.detach();
    this.logCall?.cancel();
    this.logCall = undefined;
    if (was) this.metrics.reconnects.inc();
    if (this.state === 'stopped') return;
    // With several replicas, the next attempt goes to the next one: a replica that is
    // stopping or gone is left behind, and the ledger moves the tasks along.
    if (this.clients.length > 1) {
      this.endpoint = (this.endpoint + 1) % this.clients.length;
      this.log.info({ controlPlane: this.config.controlPlanes[this.endpoint] }, 'moving to the next control-plane replica');
    }
    if (this.state === 'draining' && this.ledger.size === 0) {
      this.resolveDrained?.();
      return;
    }
    // Windowed, jittered backoff (proto/README.md, 5 Timers): base doubling to a cap.
    const base = this.settings?.reconnectBaseMs ?? 500;
    const cap = this.settings?.reconnectCapMs ?? 30_000;
    const window = Math.min(cap, base * 2 ** Math.min(this.attempt - 1, 16));
    const delay = this.nextDelay ?? Math.random() * window;
    this.nextDelay = undefined;
    this.log.warn({ why, retryInMs: Math.round(delay), inFlight: this.ledger.size }, 'control stream lost; reconnecting');
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  private nextDelay: number | undefined;

  private write(frame: RunnerFrame['frame']): void {
    if (!this.call || !frame) return;
    this.metrics.frames.inc({ type: frame.$case, dir: 'out' });
    this.call.write({ frame });
  }

  /** Sends a Credit once the current burst of work is handled (many changes, one frame). */
  private sendCredit(): void {
    if (this.creditPending) return;
    this.creditPending = true;
    setImmediate(() => {
      this.creditPending = false;
      this.sendCreditNow();
    });
  }

  private creditPending = false;

  private sendCreditNow(): void {
    if (!this.connected) return;
    // A runner whose Docker engine does not answer takes no work (it would only fail it).
    const accepting = this.state === 'running' && this.dockerOk;
    this.write({
      $case: 'credit',
      value: {
        seq: ++this.creditSeq,
        accepting,
        freeSlots: accepting ? Math.max(0, this.slots - this.busy()) : 0,
        freeMemoryMb: 0,
        offersSeenThrough: this.offersSeen,
      },
    });
  }

  /** The cluster's memory per task, from a Welcome; derived slots follow it (the next Credit and Beat say so). */
  private learnTaskMemory(mb: number): void {
    this.taskMemoryMb = mb;
    const slots = this.slotPlan.rederive?.(mb);
    if (slots === undefined || slots === this.slots) return;
    this.log.info({ slots, was: this.slots, taskMemoryMb: mb }, "slots derived again for the cluster's memory per task");
    this.slots = slots;
  }

  private onFrame(f: ServerFrame): void {
    const fr = f.frame;
    if (!fr) return;
    this.metrics.frames.inc({ type: fr.$case, dir: 'in' });
    switch (fr.$case) {
      case 'welcome': {
        const w = fr.value;
        this.settings = w.settings;
        this.connected = true;
        if (w.settings?.taskMemoryMb && this.config.taskMemoryMb === undefined) this.learnTaskMemory(w.settings.taskMemoryMb);
        this.attempt = 0;
        if (w.settings) this.shipper.setFlushInterval(w.settings.logFlushIntervalMs);
        for (const id of w.revoke) this.revoke(id);
        this.openLogStream();
        for (const id of w.resendCompletion) {
          const e = this.ledger.get(id);
          if (e?.result) this.write({ $case: 'completed', value: e.result });
        }
        // Results finished while disconnected and not in the resend list go out now too.
        for (const e of this.ledger.values()) {
          if (e.result && !e.acked && !w.resendCompletion.includes(e.offer.leaseId)) this.write({ $case: 'completed', value: e.result });
        }
        if (this.state === 'draining') {
          this.write({ $case: 'drainNotice', value: { deadline: this.drainDeadline, mode: DrainMode.DRAIN_MODE_FINISH_RUNNING } });
        }
        this.sendCredit();
        const beat = w.settings?.beatIntervalMs ?? 5000;
        this.lastBeatTickAt = Date.now();
        clearInterval(this.beatTimer);
        this.beatTimer = setInterval(() => this.beat(), beat);
        this.log.info({ epoch: w.sessionEpoch, keep: w.keep.length, revoke: w.revoke.length, serverId: w.serverId }, 'connected to the control plane');
        return;
      }
      case 'settings':
        this.settings = fr.value;
        if (fr.value.taskMemoryMb && this.config.taskMemoryMb === undefined) this.learnTaskMemory(fr.value.taskMemoryMb);
        return;
      case 'offer':
        return this.onOffer(fr.value);
      case 'cancel':
        return this.onCancel(fr.value);
      case 'revoke':
        return this.revoke(fr.value.leaseId);
      case 'completedAck': {
        const e = this.ledger.get(fr.value.leaseId);
        if (!e || e.offer.attempt !== fr.value.attempt) return;
        e.acked = true;
        this.maybeForget(e);
        return;
      }
      case 'drain': {
        const mode = fr.value.mode === DrainMode.DRAIN_MODE_HAND_BACK_NOW ? 'hand_back' : 'finish';
        const deadline = Number(fr.value.deadline) || undefined;
        if (this.onServerDrain) this.onServerDrain(mode, deadline);
        else void this.drain(mode, deadline);
        return;
      }
      case 'beat':
        return;
      case 'reconnect':
        this.nextDelay = fr.value.retryAfterMs * (0.5 + Math.random());
        this.call?.cancel();
        return;
    }
  }

  private openLogStream(): void {
    const call = this.client.logs(this.metadata());
    this.logCall = call;
    call.on('error', (err: grpc.ServiceError) => {
      if (this.logCall !== call) return;
      this.log.warn({ err: err.details || err.message }, 'log stream lost; the control stream reconnect reopens it');
      this.shipper.detach();
      this.logCall = undefined;
      // Reopen with the next beat if the control stream is still up.
    });
    call.on('end', () => undefined);
    if (this.faults.dropLogFrameEvery) {
      // Fault injection: silently lose every Nth data frame on the way out. A frame lost
      // once is not lost again when resent (the next one is): a strictly periodic loss can
      // line up with resend rounds of a fixed length and starve one frame forever, which no
      // real link does.
      const every = this.faults.dropLogFrameEvery;
      let n = 0;
      const dropped = new Set<string>();
      const write = call.write.bind(call);
      (call as { write: typeof call.write }).write = ((frame: LogFrame, ...rest: unknown[]) => {
        const key = `${frame.leaseId}@${frame.offset}`;
        if (frame.data.length > 0 && ++n % every === 0) {
          if (!dropped.has(key)) {
            dropped.add(key);
            return true;
          }
          n--; // drop the next data frame instead
        }
        return (write as (...a: unknown[]) => boolean)(frame, ...rest);
      }) as typeof call.write;
    }
    this.shipper.attach(call);
  }

  private beat(): void {
    if (!this.connected) return;
    if (this.streamIsDead()) return;
    if (!this.logCall) this.openLogStream();
    this.write({
      $case: 'beat',
      value: {
        seq: ++this.beatSeq,
        sentAt: Date.now(),
        // Only leases still running need renewing: a finished one is closed by its Completed,
        // and listing it while that Completed is in flight would get it revoked (and its
        // log, possibly not yet shipped, dropped).
        leases: [...this.ledger.values()]
          .filter((e) => !e.aborted && !e.result)
          .map((e) => ({ leaseId: e.offer.leaseId, attempt: e.offer.attempt, phase: e.phase, logBytesWritten: this.shipper.bytesWritten(e.offer.leaseId) })),
        stats: this.stats.current(
          this.busy(),
          this.busy(),
          this.slots,
          // Slots are numbered in the order their leases were accepted.
          [...this.occupied].map((leaseId, slot) => ({ slot, leaseId, taskId: this.ledger.get(leaseId)?.offer.taskId ?? '' })),
        ),
      },
    });
    this.sendCredit();
    this.shipper.flush();
    void this.executor.ping().then(
      () => {
        if (!this.dockerOk) this.log.info('the Docker engine answers again');
        this.dockerOk = true;
      },
      (err: Error) => {
        if (this.dockerOk) this.log.error({ err: err.message }, 'the Docker engine does not answer; taking no work');
        this.dockerOk = false;
      },
    );
  }

  /**
   * The control stream's watchdog: a stream on which the server has said nothing for
   * session_dead_after (its Beats stopped: a session it dropped, a half-open connection) is
   * cancelled, and the reconnect presents the ledger. A stall of this process (event-loop
   * block, SIGSTOP) does not count: frames sent meanwhile are still unread, so they get
   * one more period to arrive.
   */
  private streamIsDead(): boolean {
    const now = Date.now();
    const beat = this.settings?.beatIntervalMs || 5000;
    if (now - this.lastBeatTickAt > 2 * beat) this.watchdogFrom = now;
    this.lastBeatTickAt = now;
    const deadAfter = this.settings?.sessionDeadAfterMs || 3 * beat;
    if (now - Math.max(this.lastServerFrameAt, this.watchdogFrom) <= deadAfter) return false;
    this.log.warn({ silentMs: now - this.lastServerFrameAt }, 'no frame from the control plane within session_dead_after; reconnecting');
    this.call?.cancel();
    return true;
  }

  private lastBeatTickAt = 0;
  private watchdogFrom = 0;

  private onOffer(o: Offer): void {
    this.offersSeen = Math.max(this.offersSeen, o.offerSeq);
    if (this.state !== 'running' || !this.dockerOk || this.busy() >= this.slots || this.ledger.has(o.leaseId)) {
      this.write({
        $case: 'reject',
        value: {
          leaseId: o.leaseId,
          attempt: o.attempt,
          reason:
            this.state !== 'running'
              ? RejectReason.REJECT_REASON_DRAINING
              : !this.dockerOk
                ? RejectReason.REJECT_REASON_INTERNAL
                : RejectReason.REJECT_REASON_NO_CAPACITY,
          detail: this.dockerOk ? '' : 'the Docker engine does not answer',
        },
      });
      this.sendCredit();
      return;
    }
    const e: LedgerEntry = { offer: o, phase: LeasePhase.LEASE_PHASE_ACCEPTED, containerId: '', acked: false, logDone: false };
    this.ledger.set(o.leaseId, e);
    this.occupied.add(o.leaseId);
    const spool = new LogSpool(path.join(this.config.workDir, 'spool', `${o.leaseId}.log`), Number(o.logMaxBytes) || 8 * 1024 * 1024);
    this.shipper.add(o.leaseId, o.attempt, spool);
    this.write({ $case: 'accept', value: { leaseId: o.leaseId, attempt: o.attempt } });
    this.sendCredit();
    this.metrics.running.set(this.busy());
    void this.run(e, spool);
  }

  private async run(e: LedgerEntry, spool: LogSpool): Promise<void> {
    const o = e.offer;
    const code = o.code!;
    let result: ExecResult;
    try {
      let codeDir: string | undefined;
      if (code.hasArchive) {
        try {
          codeDir = await this.codes.get(code.archiveChecksum, () => this.fetchCode(code.revisionId, o.leaseId));
        } catch (err) {
          // A package that cannot be unpacked is its owner's to fix; any other failure here
          // (the fetch, the disk) is the runner's and falls through to runner_error.
          if (!(err instanceof ZipRejectedError)) throw err;
          if (e.aborted) return this.finishAborted(e, spool);
          const now = Date.now();
          this.log.warn({ taskId: o.taskId, leaseId: o.leaseId, codeName: code.name, err: err.message }, 'code package refused');
          throw new TaskFault({
            outcome: 'task_fault',
            exitCode: -1,
            oomKilled: false,
            msg: `the code package cannot be used: ${err.message}; fix the zip and upload the code package again`,
            startedAt: now,
            finishedAt: now,
          });
        }
      }
      if (e.aborted) return this.finishAborted(e, spool);
      e.execution = this.executor.start(
        {
          taskId: o.taskId,
          leaseId: o.leaseId,
          attempt: o.attempt,
          projectId: o.projectId,
          codeId: code.codeId,
          codeName: code.name,
          image: code.image,
          command: code.command,
          mergeStderr: code.mergeStderr,
          env: code.env,
          payload: o.payload,
          config: code.config,
          timeoutS: o.timeoutS,
          memoryMb: o.memoryMb || this.taskMemoryMb,
          ...(codeDir ? { codeDir } : {}),
          ...(o.dockerAuth ? { dockerAuth: o.dockerAuth } : {}),
          ...(o.container ? { container: o.container } : {}),
        },
        {
          onOutput: (stream, data) => {
            spool.append(stream, data);
            this.shipper.touch(o.leaseId);
          },
          onStarted: (info) => {
            e.phase = LeasePhase.LEASE_PHASE_RUNNING;
            e.containerId = info.containerId;
            this.write({
              $case: 'started',
              value: {
                leaseId: o.leaseId,
                attempt: o.attempt,
                containerId: info.containerId,
                startedAt: info.startedAt,
                imagePullMs: info.imagePullMs,
                containerCreateMs: info.createMs,
              },
            });
          },
          onProgress: (p) =>
            this.write({
              $case: 'progress',
              value: { leaseId: o.leaseId, attempt: o.attempt, ...(p.percent !== undefined ? { percent: p.percent } : {}), ...(p.msg !== undefined ? { msg: p.msg } : {}) },
            }),
        },
      );
      if (e.aborted === 'cancel') e.execution.cancel(0);
      result = await e.execution.result;
    } catch (err) {
      const now = Date.now();
      result =
        err instanceof TaskFault
          ? err.result
          : { outcome: 'runner_error', exitCode: -1, oomKilled: false, msg: runnerErrorMsg(err), startedAt: now, finishedAt: now };
    }
    if (e.aborted === 'revoke') return this.finishAborted(e, spool);
    if (e.handedBack) result = { ...result, outcome: 'runner_error', msg: 'handed back by a draining runner' };
    spool.finish();
    this.shipper.touch(o.leaseId);
    e.phase = LeasePhase.LEASE_PHASE_FINISHED;
    this.occupied.delete(o.leaseId);
    e.result = {
      leaseId: o.leaseId,
      attempt: o.attempt,
      outcome: OUTCOME[result.outcome],
      exitCode: result.exitCode,
      oomKilled: result.oomKilled,
      startedAt: result.startedAt,
      finishedAt: result.finishedAt,
      msg: result.msg,
      logTotalBytes: spool.length,
      logCrc32: spool.crc,
    };
    this.metrics.tasks.inc({ outcome: result.outcome });
    this.metrics.running.set(this.busy());
    this.write({ $case: 'completed', value: e.result });
    this.shipper.flush();
    this.sendCredit();
    this.checkDrained();
  }

  private finishAborted(e: LedgerEntry, spool: LogSpool): void {
    spool.finish();
    this.shipper.drop(e.offer.leaseId);
    this.ledger.delete(e.offer.leaseId);
    this.occupied.delete(e.offer.leaseId);
    this.metrics.running.set(this.busy());
    this.sendCredit();
    this.checkDrained();
  }

  private fetchCode(revisionId: string, leaseId: string): Promise<Buffer> {
    // A zip holding at most maxUnpackedBytes of files cannot be much larger than that; the
    // bound keeps a hostile package from filling this process's memory before it is checked.
    const maxBytes = this.config.zipLimits.maxUnpackedBytes + 64 * 1024 * 1024;
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const s = this.client.fetchCode({ revisionId, leaseId }, this.metadata(), { deadline: Date.now() + 120_000 });
      s.on('data', (c: CodeChunk) => {
        size += c.data.length;
        if (size > maxBytes) {
          reject(new ZipRejectedError(`the zip is more than ${maxBytes} bytes, more than a package within the limits can be`));
          s.cancel();
          return;
        }
        chunks.push(Buffer.from(c.data));
      });
      s.on('error', (err: grpc.ServiceError) => reject(new Error(`could not fetch the code package: ${err.details || err.message}`)));
      s.on('end', () => resolve(Buffer.concat(chunks)));
    });
  }

  private onCancel(c: Cancel): void {
    const e = this.ledger.get(c.leaseId);
    if (!e || e.offer.attempt !== c.attempt) return;
    this.write({ $case: 'cancelAck', value: { leaseId: c.leaseId, attempt: c.attempt } });
    if (e.result) return;
    if (e.execution) e.execution.cancel(c.graceMs);
    else {
      e.aborted = 'cancel';
      this.occupied.delete(c.leaseId);
    }
  }

  /** The lease is no longer ours: kill the task and forget it; report nothing. */
  private revoke(leaseId: string): void {
    const e = this.ledger.get(leaseId);
    if (!e) return;
    // A finished lease is settled by its own acks (CompletedAck, LogAck), not revoked.
    if (e.result) return;
    this.log.warn({ leaseId, taskId: e.offer.taskId }, 'lease revoked by the control plane');
    this.ledger.delete(leaseId);
    this.occupied.delete(leaseId);
    this.shipper.drop(leaseId);
    if (e.execution && !e.result) {
      e.aborted = 'revoke';
      void e.execution.kill();
    } else if (!e.execution) {
      e.aborted = 'revoke';
    }
    this.metrics.running.set(this.busy());
    this.sendCredit();
    this.checkDrained();
  }

  private onLogDone(leaseId: string, _how: 'complete' | 'stopped'): void {
    const e = this.ledger.get(leaseId);
    if (!e) return;
    e.logDone = true;
    this.maybeForget(e);
  }

  private maybeForget(e: LedgerEntry): void {
    if (e.acked && e.logDone) {
      this.ledger.delete(e.offer.leaseId);
      this.occupied.delete(e.offer.leaseId);
      this.checkDrained();
    }
  }

  private checkDrained(): void {
    if (this.state === 'draining' && this.ledger.size === 0) this.resolveDrained?.();
  }

  /**
   * Drains: no new offers; running tasks finish (up to the deadline) or, with `hand_back`,
   * are killed and handed back (RUNNER_ERROR: an internal retry, not a task error). Resolves
   * when every result and log is safe on the control plane, or at the deadline.
   */
  async drain(mode: 'finish' | 'hand_back', deadline = Date.now() + this.config.drainTimeoutS * 1000): Promise<void> {
    if (this.state === 'stopped') return;
    if (!this.drained) {
      this.state = 'draining';
      this.drainDeadline = deadline;
      this.drained = new Promise<void>((resolve) => {
        this.resolveDrained = resolve;
      });
      this.write({ $case: 'drainNotice', value: { deadline, mode: mode === 'finish' ? DrainMode.DRAIN_MODE_FINISH_RUNNING : DrainMode.DRAIN_MODE_HAND_BACK_NOW } });
      this.sendCredit();
      this.log.info({ inFlight: this.ledger.size, mode }, 'draining');
      const timer = setTimeout(() => {
        this.log.warn({ inFlight: this.ledger.size }, 'drain deadline reached: handing tasks back');
        this.handBack();
        // Give the hand-back results a moment to reach the control plane.
        setTimeout(() => this.resolveDrained?.(), 5000).unref();
      }, Math.max(0, deadline - Date.now()));
      void this.drained.then(() => clearTimeout(timer));
    }
    if (mode === 'hand_back') this.handBack();
    this.checkDrained();
    await this.drained;
  }

  private drained: Promise<void> | undefined;

  /**
   * What a Drain from the control plane (an operator's `gantry runner drain`) does; unset,
   * the agent drains and stays idle. The program sets it to drain and then leave.
   */
  onServerDrain: ((mode: 'finish' | 'hand_back', deadline: number | undefined) => void) | undefined;

  /** Kills every running task; each reports RUNNER_ERROR so the control plane requeues it. */
  private handBack(): void {
    for (const e of this.ledger.values()) {
      if (e.result || !e.execution) continue;
      e.handedBack = true;
      void e.execution.kill();
    }
  }

  /** Leaves: Goodbye, streams closed, executor released. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.connected) this.write({ $case: 'goodbye', value: { reason: 'runner stopping' } });
      this.state = 'stopped';
      clearInterval(this.beatTimer);
      clearTimeout(this.reconnectTimer);
      this.stats.stop();
      this.shipper.detach();
      this.call?.end();
      this.logCall?.end();
      for (const c of this.clients) c.close();
      await this.executor.close();
    })();
    return this.stopping;
  }
}
