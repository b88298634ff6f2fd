import { randomUUID } from 'node:crypto';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { CONTAINER_DEFAULTS, type ContainerPolicy } from '../../lib/container-policy.ts';
import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import { storableText } from '../../lib/text.ts';
import type { ClusterPolicyCache } from './policy-cache.ts';
import {
  CancelReason,
  Disposition,
  DrainMode,
  LeasePhase,
  Outcome,
  ReconnectReason,
  RejectReason,
  RevokeReason,
  type Hello,
  type RunnerFrame,
  type ServerFrame,
  type Settings,
} from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import type { Offer, RunnerRef } from '../store/claims.ts';
import type { Completion } from '../store/outcomes.ts';
import type { RunnerHub } from '../dispatch/hub.ts';
import type { OfferTarget } from '../dispatch/offer-target.ts';
import type { RunnerSerial } from './serial.ts';
import type { StatsRecorder } from '../series/recorder.ts';

export type SessionState = 'handshake' | 'open' | 'draining' | 'closed';

/** What a session needs from the control plane. */
export interface SessionDeps {
  store: Store;
  /** Serializes this runner's result writes with its log writes (see RunnerSerial). */
  serial: RunnerSerial;
  config: ControlPlaneConfig;
  metrics: ControlPlaneMetrics;
  log: Logger;
  clock: Clock;
  /** Dispatch: sessions opening and closing, free capacity, ended leases. */
  hub: RunnerHub<RunnerSession>;
  /** Clusters' container policies, read once per beat interval for all sessions of a cluster. */
  policies: ClusterPolicyCache;
  /** Records the machine stats of every beat (O(1) per beat; written in batches). */
  stats: StatsRecorder;
}

const OUTCOMES: Record<number, Completion['outcome']> = {
  [Outcome.OUTCOME_SUCCEEDED]: 'succeeded',
  [Outcome.OUTCOME_FAILED]: 'failed',
  [Outcome.OUTCOME_TIMED_OUT]: 'timed_out',
  [Outcome.OUTCOME_CANCELLED]: 'cancelled',
  [Outcome.OUTCOME_RUNNER_ERROR]: 'runner_error',
  [Outcome.OUTCOME_TASK_FAULT]: 'task_fault',
};
const DISPOSITIONS = {
  recorded: Disposition.DISPOSITION_RECORDED,
  duplicate: Disposition.DISPOSITION_DUPLICATE,
  stale: Disposition.DISPOSITION_STALE,
} as const;

type AnyFrame = NonNullable<RunnerFrame['frame']>;
type FrameKind = AnyFrame['$case'];
type FrameValue<K extends FrameKind> = Extract<AnyFrame, { $case: K }>['value'];

/**
 * One runner's control stream (proto/README.md, 2–6): handshake with reconcile, absolute
 * credits, offers, the lease lifecycle, beats both ways, cancel and drain. Frames from the
 * runner are handled in the order they arrive, a batch at a time (onBatch orders a batch).
 */
export class RunnerSession implements OfferTarget {
  state: SessionState = 'handshake';
  readonly sessionId = randomUUID();
  runner: RunnerRef | undefined;
  clusterId: string;
  private readonly log: Logger;
  /** Frames received and not yet handled; handled in batches, in order per lease. */
  private inbox: RunnerFrame[] = [];
  private processing = false;
  private creditSeq = -1;
  private creditFree = 0;
  private seenThrough = 0;
  private offerSeq = 0;
  /** offer_seq of each offer sent, so credits can be corrected for offers in flight. */
  private readonly inFlightOffers: number[] = [];
  private accepting = false;
  /** The runner's penalty (no offers before penaltyUntil), read from its row at Hello and written back there. */
  private penaltyUntil = 0;
  private penaltyMs = 0;
  private lastFrameAt = 0;
  private beatSeq = 0;
  /** The cluster's per-task memory, sent with every offer. */
  private memoryMb = 512;
  /** The cluster's registry credentials (base64 "user:password"), decrypted at Hello; sent with every offer. */
  private dockerAuth = '';
  /** The cluster's container policy as sent with every offer; read at Hello and re-read every beat interval. */
  private container = wirePolicy(CONTAINER_DEFAULTS);
  private containerReading = false;
  private unflushed = 0;
  /** When a queued frame last reached the socket (or the queue last started from empty). */
  private flushedAt = 0;
  private timers: NodeJS.Timeout[] = [];
  /** The instance the runner runs on (its GANTRY_INSTANCE_ID), if any. */
  instanceId = '';

  constructor(
    private readonly call: ServerDuplexStream<RunnerFrame, ServerFrame>,
    clusterId: string,
    private readonly deps: SessionDeps,
  ) {
    this.clusterId = clusterId;
    this.lastFrameAt = this.flushedAt = this.now();
    this.log = deps.log.child({ sessionId: this.sessionId });
    call.on('data', (f: RunnerFrame) => {
      // A closed session reads on (the runner may not know yet) but keeps nothing.
      if (this.state === 'closed') return;
      this.lastFrameAt = this.now();
      this.inbox.push(f);
      if (!this.processing) void this.processInbox();
    });
    call.on('end', () => this.close('stream ended by runner'));
    call.on('error', (err) => this.close(`stream error: ${err.message}`));
    call.on('cancelled', () => this.close('stream cancelled'));
    this.timers.push(
      setTimeout(() => {
        if (this.state === 'handshake') this.close('no Hello within the handshake deadline', true);
      }, deps.config.timers.handshakeTimeoutMs),
    );
  }

  private now(): number {
    return this.deps.clock.now().getTime();
  }

  get settings(): Settings {
    const t = this.deps.config.timers;
    return {
      beatIntervalMs: t.beatIntervalMs,
      sessionDeadAfterMs: t.sessionDeadAfterMs,
      leaseTtlMs: t.leaseTtlMs,
      acceptDeadlineMs: t.acceptDeadlineMs,
      logFlushIntervalMs: t.logFlushIntervalMs,
      logMaxBytes: this.deps.config.logMaxBytes,
      cancelGraceMs: t.cancelGraceMs,
      reconnectBaseMs: t.reconnectBaseMs,
      reconnectCapMs: t.reconnectCapMs,
      taskMemoryMb: this.memoryMb,
    };
  }

  /** The runner's penalty as this session holds it: no offers before `until` (ms since the epoch). */
  get penalty(): { until: number; ms: number } {
    return { until: this.penaltyUntil, ms: this.penaltyMs };
  }

  /** Slots the runner can take now: its last absolute credit less offers it had not seen. */
  freeSlots(): number {
    if (this.state !== 'open' || !this.accepting || this.now() < this.penaltyUntil) return 0;
    if (this.now() - this.lastFrameAt > this.deps.config.timers.sessionDeadAfterMs) return 0;
    // A runner behind on reading gets no more work until it catches up (bounded memory).
    if (this.unflushed >= this.deps.config.maxUnflushedFrames / 2) return 0;
    const unseen = this.inFlightOffers.filter((s) => s > this.seenThrough).length;
    return Math.max(0, this.creditFree - unseen);
  }

  send(frame: ServerFrame['frame']): void {
    if (this.state === 'closed' || !frame) return;
    this.deps.metrics.frames.inc({ type: frame.$case, dir: 'out' });
    // A runner that stopped reading is dropped rather than buffered for (grpc-node#1332).
    // The bound must exceed a burst (a claim batch, the acks of one inbox batch).
    if (this.unflushed >= this.deps.config.maxUnflushedFrames) {
      this.close(`runner is not reading (${this.unflushed} frames unflushed)`, true);
      return;
    }
    if (this.unflushed === 0) this.flushedAt = this.now();
    this.unflushed++;
    try {
      this.call.write({ frame }, () => {
        this.unflushed--;
        this.flushedAt = this.now();
      });
    } catch (err) {
      this.close(`write failed: ${(err as Error).message}`);
    }
  }

  /** Sends claimed work; called by the dispatcher after the claim committed. */
  offer(offers: Offer[]): void {
    for (const r of offers) {
      const seq = ++this.offerSeq;
      this.inFlightOffers.push(seq);
      this.deps.metrics.offers.inc();
      this.send({
        $case: 'offer',
        value: {
          offerSeq: seq,
          leaseId: r.leaseId,
          taskId: r.taskId,
          attempt: r.attempt,
          sessionEpoch: this.runner!.epoch,
          code: {
            codeId: r.codeId,
            name: r.codeName,
            rev: r.codeRev,
            revisionId: r.codeRevisionId,
            image: r.image,
            command: r.command ?? '',
            env: r.envVars ?? {},
            config: r.config ?? '',
            hasArchive: r.checksum !== null,
            archiveChecksum: r.checksum ?? '',
            mergeStderr: r.logStreams === 'merged',
          },
          payload: r.payload,
          timeoutS: r.timeout,
          priority: r.priority,
          cluster: r.cluster,
          projectId: r.projectId,
          scheduleId: r.scheduleId ?? '',
          acceptBy: r.expiresAt.getTime(),
          logMaxBytes: this.deps.config.logMaxBytes,
          memoryMb: this.memoryMb,
          dockerAuth: this.dockerAuth,
          container: this.container,
        },
      });
    }
  }

  /**
   * Sends Cancel for every lease of this runner whose task has a cancel requested and no
   * Cancel sent; with `resend` (right after Welcome) also those sent on an earlier stream,
   * which may have died before the runner read them (proto/README.md, 6.1 Cancel).
   */
  async sendPendingCancels(resend = false): Promise<void> {
    if (!this.runner || this.state === 'closed') return;
    for (const c of await this.deps.store.leases.pendingCancels(this.runner.id, resend)) {
      this.send({
        $case: 'cancel',
        value: { leaseId: c.leaseId, attempt: c.attempt, reason: CancelReason.CANCEL_REASON_USER, graceMs: this.deps.config.timers.cancelGraceMs },
      });
      await this.deps.store.leases.markCancelSent(c.leaseId);
    }
  }

  /** Asks the runner to stop a lease that ran past its timeout (the control plane's backstop). */
  cancelForTimeout(leaseId: string, attempt: number): void {
    this.send({
      $case: 'cancel',
      value: { leaseId, attempt, reason: CancelReason.CANCEL_REASON_TIMEOUT, graceMs: this.deps.config.timers.cancelGraceMs },
    });
  }

  /** Tells the runner to drain (no new work; finish or hand back). */
  drain(mode: 'finish' | 'hand_back', deadlineMs: number): void {
    this.state = this.state === 'open' ? 'draining' : this.state;
    this.send({
      $case: 'drain',
      value: { deadline: deadlineMs, mode: mode === 'finish' ? DrainMode.DRAIN_MODE_FINISH_RUNNING : DrainMode.DRAIN_MODE_HAND_BACK_NOW },
    });
  }

  /** Asks the runner to reconnect (this replica is shutting down); its tasks keep running. */
  reconnect(reason: ReconnectReason, retryAfterMs: number): void {
    this.send({ $case: 'reconnect', value: { reason, retryAfterMs, endpointHint: '' } });
    this.call.end();
    this.close('asked the runner to reconnect');
  }

  private async processInbox(): Promise<void> {
    this.processing = true;
    try {
      while (this.inbox.length > 0 && this.state !== 'closed') {
        if (this.state === 'handshake') {
          await this.onFrame(this.inbox.shift()!);
          continue;
        }
        await this.onBatch(this.inbox.splice(0, 1000));
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.processing = false;
    }
  }

  /**
   * A burst of frames, handled with one statement per kind instead of one transaction per
   * frame. Per lease the order Accept → Started → Completed is kept by handling the kinds
   * in that order; beats, credits, progress and the rest follow in arrival order.
   */
  private async onBatch(frames: RunnerFrame[]): Promise<void> {
    const runner = this.runner!;
    const { store, config, metrics } = this.deps;
    const ttl = config.timers.leaseTtlMs;
    const of = <K extends FrameKind>(k: K): FrameValue<K>[] => {
      const out: FrameValue<K>[] = [];
      for (const f of frames) if (f.frame?.$case === k) out.push(f.frame.value as FrameValue<K>);
      return out;
    };
    for (const f of frames) if (f.frame) metrics.frames.inc({ type: f.frame.$case, dir: 'in' });

    const done = of('completed');
    const finishing = new Set(done.map((c) => c.leaseId));
    // An Accept whose Completed is in the same burst is not written: the result ends the
    // lease (or is refused as stale) by itself.
    const allAccepts = of('accept');
    const accepts = allAccepts.filter((a) => !finishing.has(a.leaseId));
    if (allAccepts.length > accepts.length) metrics.offerResults.inc({ result: 'accepted' }, allAccepts.length - accepts.length);
    if (accepts.length > 0) {
      const ok = await store.leases.acceptMany(runner.id, accepts, ttl);
      for (const a of accepts) {
        metrics.offerResults.inc({ result: ok.has(a.leaseId) ? 'accepted' : 'late' });
        if (!ok.has(a.leaseId)) this.revoke(a.leaseId, a.attempt, RevokeReason.REVOKE_REASON_UNKNOWN_LEASE);
      }
    }
    const allStarts = of('started');
    // A task that started and finished within this burst is recorded in one write (completeMany).
    const folded = new Map(allStarts.filter((s) => finishing.has(s.leaseId)).map((s) => [s.leaseId, s]));
    const starts = allStarts.filter((s) => !finishing.has(s.leaseId));
    if (allStarts.length > 0 && this.penaltyMs > 0) {
      this.penaltyMs = 0;
      await store.runners.resetPenalty(runner.id).catch((err: unknown) => {
        this.log.warn({ runnerId: runner.id, err: (err as Error).message }, 'cannot reset the runner penalty in the store');
      });
    }
    if (starts.length > 0) {
      const items = starts.map((s) => ({ leaseId: s.leaseId, attempt: s.attempt, containerId: s.containerId, startedAt: new Date(Number(s.startedAt)) }));
      const granted = await this.deps.serial.run(runner.id, () => store.leases.startedMany(runner.id, items, ttl));
      for (const s of starts) {
        const g = granted.get(s.leaseId);
        if (!g) {
          this.revoke(s.leaseId, s.attempt, RevokeReason.REVOKE_REASON_UNKNOWN_LEASE);
          continue;
        }
        metrics.dispatchLatency.observe(Math.max(0, Number(s.startedAt) - g.grantedAt.getTime()) / 1000);
        metrics.taskStarted(g.cluster, g.codeName, g.eligibleAt, Number(s.startedAt));
      }
    }
    if (done.length > 0) {
      const outcomes = done.map((c) => OUTCOMES[c.outcome] ?? 'runner_error');
      const results = done.map((c, i) => ({
        leaseId: c.leaseId,
        attempt: c.attempt,
        outcome: outcomes[i]!,
        exitCode: c.exitCode,
        oomKilled: c.oomKilled,
        // A success keeps whatever the task said through its progress; other outcomes explain themselves.
        msg: outcomes[i] === 'succeeded' ? '' : storableText(c.msg, 4096),
        startedAt: Number(c.startedAt),
        finishedAt: Number(c.finishedAt),
        ...(folded.has(c.leaseId)
          ? { started: { containerId: folded.get(c.leaseId)!.containerId, startedAt: new Date(Number(folded.get(c.leaseId)!.startedAt)) } }
          : {}),
      }));
      const { dispositions, ended, tasks } = await this.deps.serial.run(runner.id, () =>
        store.outcomes.completeMany(runner.id, results, { leaseTtlMs: ttl, runnerLossBudget: config.runnerLossBudget }),
      );
      this.deps.hub.leasesEnded(ended);
      // Only the runner's own faults count against it: a task's fault (task_fault) is the
      // task's, and a draining runner's runner_error results are hand-backs, not faults.
      const faults: string[] = [];
      done.forEach((c, i) => {
        const d = dispositions[i]!;
        metrics.completions.inc({ outcome: outcomes[i]!, disposition: d });
        const task = tasks[i];
        if (task) {
          const f = folded.get(c.leaseId);
          if (f) metrics.taskStarted(task.cluster, task.codeName, task.eligibleAt, Number(f.startedAt));
          metrics.taskRan(task.cluster, task.codeName, Number(c.startedAt), Number(c.finishedAt));
        }
        if (outcomes[i] === 'runner_error' && d === 'recorded' && this.state !== 'draining') faults.push(`could not run a task: ${c.msg}`);
        this.send({ $case: 'completedAck', value: { leaseId: c.leaseId, attempt: c.attempt, disposition: DISPOSITIONS[d] } });
      });
      if (faults.length > 0) await this.penalise('runner_error', faults);
    }
    // Everything else, in arrival order; of the beats only the newest matters.
    const beats = of('beat');
    const lastBeat = beats[beats.length - 1];
    for (const f of frames) {
      const k = f.frame?.$case;
      if (!k || k === 'accept' || k === 'started' || k === 'completed') continue;
      if (k === 'beat' && f.frame!.value !== lastBeat) continue;
      await this.onFrame(f, false);
    }
    if (done.length > 0 || this.freeSlots() > 0) this.deps.hub.capacity(runner.cluster);
  }

  private async onFrame(f: RunnerFrame, count = true): Promise<void> {
    const fr = f.frame;
    if (!fr || this.state === 'closed') return;
    if (count) this.deps.metrics.frames.inc({ type: fr.$case, dir: 'in' });
    if (this.state === 'handshake') {
      if (fr.$case !== 'hello') return this.close(`first frame must be Hello, got ${fr.$case}`, true);
      return this.onHello(fr.value);
    }
    const runner = this.runner!;
    const { store, config } = this.deps;
    const ttl = config.timers.leaseTtlMs;
    switch (fr.$case) {
      case 'hello':
        return this.close('a second Hello on one stream', true);
      case 'credit': {
        const c = fr.value;
        if (c.seq <= this.creditSeq) return; // an older credit: absolute values, keep the newest
        this.creditSeq = c.seq;
        this.creditFree = c.freeSlots;
        this.seenThrough = c.offersSeenThrough;
        this.accepting = c.accepting && this.state === 'open';
        while (this.inFlightOffers.length > 0 && this.inFlightOffers[0]! <= this.seenThrough) this.inFlightOffers.shift();
        if (this.freeSlots() > 0) this.deps.hub.capacity(runner.cluster);
        return;
      }
      case 'reject': {
        const r = fr.value;
        this.deps.metrics.offerResults.inc({ result: 'rejected' });
        if (r.reason === RejectReason.REJECT_REASON_IMAGE_PULL_FAILED) {
          // The task's own fault, told by a runner that rejects rather than completing with
          // OUTCOME_TASK_FAULT: recorded as that (requeueing it would bring it straight back),
          // and nothing is held against the runner.
          const r2 = await this.deps.serial.run(runner.id, () =>
            store.outcomes.completeMany(
              runner.id,
              [{
                leaseId: r.leaseId,
                attempt: r.attempt,
                outcome: 'task_fault',
                exitCode: -1,
                oomKilled: false,
                msg: storableText(r.detail, 4096) || "the image could not be pulled; check the code package's image",
                startedAt: 0,
                finishedAt: this.now(),
              }],
              { leaseTtlMs: ttl, runnerLossBudget: config.runnerLossBudget },
            ),
          );
          this.deps.hub.leasesEnded(r2.ended);
          this.deps.metrics.completions.inc({ outcome: 'task_fault', disposition: r2.dispositions[0]! });
          this.deps.hub.capacity(runner.cluster);
          return;
        }
        if (await store.outcomes.release(r.leaseId, r.attempt, runner.id, 'rejected')) this.deps.hub.leasesEnded([r.leaseId]);
        // A draining runner refuses what crossed its DrainNotice: no fault of its own.
        if (this.state !== 'draining') await this.penalise('offer_rejected', [`offer rejected (${r.detail || RejectReason[r.reason] || r.reason})`]);
        this.deps.hub.capacity(runner.cluster);
        return;
      }
      case 'beat': {
        const b = fr.value;
        this.deps.stats.observe(runner.id, this.clusterId, b.stats);
        const drain = await store.runners.beat(runner.id, b.stats);
        // An operator asked for a drain (gantry runner drain): told once, on this stream.
        if (drain && this.state === 'open') {
          this.log.info({ runnerId: runner.id, mode: drain.mode, timeoutS: drain.timeoutS }, 'drain requested by an operator');
          this.drain(drain.mode, drain.requestedAt.getTime() + drain.timeoutS * 1000);
        }
        const unknown = await store.leases.renew(
          runner.id,
          b.leases.map((l) => ({ leaseId: l.leaseId, attempt: l.attempt })),
          ttl,
        );
        for (const id of unknown) {
          const l = b.leases.find((x) => x.leaseId === id)!;
          this.revoke(id, l.attempt, RevokeReason.REVOKE_REASON_RECLAIMED);
        }
        return;
      }
      case 'progress': {
        // Written by the task (PROGRESS_FILE): bounded and made storable here, so a task's
        // odd progress can never fail the write and close its runner's session.
        const p = fr.value;
        const percent = p.percent === undefined ? undefined : Math.min(100, Math.max(0, Math.round(p.percent)));
        const msg = p.msg === undefined ? undefined : storableText(p.msg, 4096);
        await store.leases.progress(p.leaseId, p.attempt, runner.id, percent, msg);
        return;
      }
      case 'accept':
      case 'started':
      case 'completed':
        return; // handled in batches (onBatch)
      case 'cancelAck':
        return;
      case 'drainNotice': {
        this.state = 'draining';
        this.accepting = false;
        await store.runners.setDraining(runner.id, true);
        this.log.info({ runnerId: runner.id }, 'runner is draining');
        return;
      }
      case 'goodbye': {
        this.log.info({ runnerId: runner.id, reason: fr.value.reason }, 'runner said goodbye');
        this.call.end();
        return this.close('goodbye');
      }
    }
  }

  /**
   * A runner that rejects work or fails to run it through its own fault gets no offers for
   * a while (5 s doubling per fault to 10 min, reset by a start; runnerPenaltyBaseMs and
   * runnerPenaltyMaxMs): a black-hole runner cannot stall the queue (proto/README.md,
   * 6.5 Penalties). The penalty takes effect here at once and is kept in the runner's row, so a
   * reconnect, to this replica or another, does not clear it; a store that cannot be
   * written leaves it in force for this session only.
   */
  private async penalise(reason: 'runner_error' | 'offer_rejected', faults: string[]): Promise<void> {
    const { runnerPenaltyBaseMs: base, runnerPenaltyMaxMs: max } = this.deps.config;
    this.deps.metrics.penalties.inc({ reason }, faults.length);
    for (let i = 0; i < faults.length; i++) this.penaltyMs = Math.min(Math.max(this.penaltyMs * 2, base), max);
    this.penaltyUntil = this.now() + this.penaltyMs;
    const why = faults.length === 1 ? faults[0]! : `${faults[0]!} (and ${faults.length - 1} more)`;
    const runnerId = this.runner!.id;
    this.log.warn({ runnerId, why, penaltyMs: this.penaltyMs }, 'runner penalised');
    try {
      await this.deps.store.runners.setPenalty(runnerId, this.penaltyMs, new Date(this.penaltyUntil), storableText(why, 1000));
    } catch (err) {
      this.log.warn({ runnerId, err: (err as Error).message }, 'cannot store the runner penalty; it holds for this session only');
    }
  }

  private revoke(leaseId: string, attempt: number, reason: RevokeReason) {
    this.send({ $case: 'revoke', value: { leaseId, attempt, reason } });
  }

  private async onHello(h: Hello): Promise<void> {
    const { store, config } = this.deps;
    if (h.clusterId !== this.clusterId) return this.close('Hello names another cluster than the credentials', true);
    if (!h.runnerId || h.runnerId.length > 128) return this.close('Hello needs a runner_id of at most 128 characters', true);
    const cluster = await store.clusters.byId(this.clusterId);
    if (!cluster) return this.close('unknown cluster', true);
    this.memoryMb = cluster.memoryMb;
    try {
      this.dockerAuth = (await store.clusters.runnerSecrets(this.clusterId)).dockerAuth ?? '';
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "cannot read the cluster's registry credentials; images will be pulled without them");
    }
    await this.readContainerPolicy();
    // Re-read, so that a changed policy reaches the tasks offered after it without a reconnect.
    const reread = () =>
      this.readContainerPolicy().catch((err: unknown) => {
        this.log.debug({ err: (err as Error).message }, "cannot re-read the cluster's container policy; keeping the last one read");
      });
    this.timers.push(setInterval(() => void reread(), config.timers.beatIntervalMs));
    const row = await store.runners.connect(
      {
        runnerId: h.runnerId,
        clusterId: this.clusterId,
        bootId: h.bootId,
        hostname: h.hostname,
        agentVersion: h.agentVersion,
        dockerVersion: h.dockerVersion,
        instanceId: h.instanceId,
        slots: h.capacity?.slots ?? 0,
        memoryMb: h.capacity?.memoryMb ?? 0,
        address: peerAddress(this.call.getPeer()),
        tags: Object.entries(h.labels)
          .slice(0, 64)
          .map(([k, v]) => storableText(v ? `${k}=${v}` : k, 256)),
      },
      this.sessionId,
      config.serverId,
    );
    if (!row) return this.close(`runner id ${h.runnerId} belongs to another cluster or a third-party worker`, true);
    this.runner = { id: row.id, epoch: Number(row.sessionEpoch), cluster: cluster.name };
    // A penalty earned on an earlier session (on any replica) still holds.
    this.penaltyMs = Number(row.penaltyMs) || 0;
    this.penaltyUntil = row.penaltyUntil ? new Date(row.penaltyUntil).getTime() : 0;
    if (this.penaltyUntil > this.now()) {
      this.log.info({ runnerId: row.id, penaltyUntil: new Date(this.penaltyUntil).toISOString(), why: row.penaltyReason }, 'runner reconnected while penalised');
    }

    // Reconcile the runner's ledger with the store (proto/README.md, 2 Handshake and reconcile).
    const live = new Map((await store.leases.liveOf(row.id)).map((l) => [l.id, l]));
    const keep: string[] = [];
    const revoke: string[] = [];
    const resend: string[] = [];
    for (const e of h.inFlight) {
      const l = live.get(e.leaseId);
      if (l && l.attempt === e.attempt) {
        if (e.phase === LeasePhase.LEASE_PHASE_FINISHED) resend.push(e.leaseId);
        keep.push(e.leaseId);
        live.delete(e.leaseId);
        // The runner may be further along than the store: an Accept or Started written to the
        // old stream died with it. Catch the lease up, so the run counts and the sweeper does
        // not expire, as an unaccepted offer, a lease whose container runs.
        const ttl = config.timers.leaseTtlMs;
        if (l.state === 'offered') await store.leases.acceptMany(row.id, [{ leaseId: l.id, attempt: l.attempt }], ttl);
        const ran = e.phase === LeasePhase.LEASE_PHASE_RUNNING || e.phase === LeasePhase.LEASE_PHASE_FINISHED;
        if (l.state !== 'running' && ran && e.containerId) {
          await store.leases.startedMany(row.id, [{ leaseId: l.id, attempt: l.attempt, containerId: e.containerId, startedAt: new Date(Number(e.result?.startedAt) || this.now()) }], ttl);
        }
        continue;
      }
      const past = l ? undefined : await store.leases.get(e.leaseId);
      if (e.phase === LeasePhase.LEASE_PHASE_FINISHED && past && past.runnerId === row.id && past.attempt === e.attempt) {
        resend.push(e.leaseId); // its result was recorded but the ack was lost: it will be a duplicate
      } else {
        revoke.push(e.leaseId);
      }
    }
    // Leases the store holds for this runner that its ledger does not know (a restarted
    // runner, an offer lost in flight) are gone: take them back now rather than at expiry.
    const cfg = { leaseTtlMs: config.timers.leaseTtlMs, runnerLossBudget: config.runnerLossBudget };
    for (const l of live.values()) {
      const ended =
        l.state === 'offered' || l.state === 'accepted'
          ? await store.outcomes.release(l.id, l.attempt, row.id, 'revoked')
          : (await store.outcomes.reclaim(l.id, l.attempt, cfg, 'reclaimed', true)).ended;
      if (ended) this.deps.hub.leasesEnded([l.id]);
      this.deps.metrics.reclaimed.inc({ reason: 'unknown_to_runner' });
    }
    await store.leases.rebind(row.id, keep, this.runner.epoch, config.timers.leaseTtlMs);

    this.instanceId = h.instanceId;
    this.state = 'open';
    await this.deps.hub.sessionOpened(this);
    this.send({
      $case: 'welcome',
      value: {
        sessionId: this.sessionId,
        sessionEpoch: this.runner.epoch,
        serverId: config.serverId,
        serverTime: this.now(),
        settings: this.settings,
        keep,
        revoke,
        resendCompletion: resend,
      },
    });
    this.log.info(
      { runnerId: row.id, cluster: cluster.name, epoch: this.runner.epoch, keep: keep.length, revoke: revoke.length },
      'runner connected',
    );
    const beat = config.timers.beatIntervalMs;
    this.timers.push(
      setInterval(() => {
        if (this.now() - this.lastFrameAt > config.timers.leaseTtlMs) {
          // End the stream too: a runner that was only frozen reads the end when it wakes
          // and reconnects with its ledger, instead of talking into a dead session.
          this.close('runner silent for a whole lease TTL', true);
          return;
        }
        if (this.unflushed > 0 && this.now() - this.flushedAt > config.timers.sessionDeadAfterMs) {
          this.close(`runner read nothing for session_dead_after (${this.unflushed} frames unflushed)`, true);
          return;
        }
        this.send({ $case: 'beat', value: { seq: ++this.beatSeq, sentAt: this.now(), leases: [], stats: undefined } });
      }, beat),
    );
    await this.sendPendingCancels(true);
  }

  /** Reads the cluster's container policy into the offers sent from now on (one read at a time). */
  private async readContainerPolicy(): Promise<void> {
    if (this.containerReading || this.state === 'closed') return;
    this.containerReading = true;
    try {
      const p = await this.deps.policies.get(this.clusterId);
      if (p) this.container = wirePolicy(p);
    } finally {
      this.containerReading = false;
    }
  }

  private fail(err: unknown): void {
    this.log.warn({ err: (err as Error).message }, 'runner session failed');
    this.close(`internal error: ${(err as Error).message}`, true);
  }

  /** Ends the session (leases stay: the runner may reconnect within the lease TTL). */
  close(why: string, endStream = false): void {
    if (this.state === 'closed') return;
    const wasOpen = this.state !== 'handshake';
    this.state = 'closed';
    for (const t of this.timers) clearTimeout(t);
    if (endStream) {
      try {
        this.call.end();
      } catch {
        /* already gone */
      }
    }
    if (wasOpen && this.runner) {
      this.deps.hub.sessionClosed(this);
      this.deps.stats.forget(this.runner.id);
      void this.deps.store.runners.disconnect(this.runner.id, this.sessionId).catch(() => undefined);
      this.log.info({ runnerId: this.runner.id, why }, 'runner session closed');
    } else {
      this.log.debug({ why }, 'runner stream closed before handshake');
    }
  }
}

/** The runner's address from gRPC's peer ("ipv4:10.0.0.5:51234", "ipv6:[::1]:5000"), without the port. */
function peerAddress(peer: string): string {
  const m = /^(?:ipv4:|ipv6:)?\[?([^\]]*?)\]?:\d+$/.exec(peer);
  return storableText(m ? m[1]! : peer, 128);
}

/** The policy as the Offer's ContainerPolicy message carries it (empty user: the image's own). */
function wirePolicy(p: Readonly<ContainerPolicy>) {
  return {
    capAdd: [...p.capAdd],
    pidsLimit: p.pidsLimit,
    readOnlyRootfs: p.readOnlyRootfs,
    tmpSizeMb: p.tmpSizeMb,
    user: p.user ?? '',
    nofile: p.nofile,
    network: p.network,
  };
}
