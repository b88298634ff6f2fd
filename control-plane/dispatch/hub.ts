import type { Logger } from '../../lib/logger.ts';
import type { CoordEvent, Coordinator } from '../coord/types.ts';
import type { Store } from '../store/index.ts';
import type { NewTask } from '../store/tasks.ts';
import type { Dispatcher } from './dispatcher.ts';
import type { OfferTarget } from './offer-target.ts';

/**
 * The one door to dispatch, for everything that changes what runners may be offered:
 * tasks queued, slots freed by ended leases, cancels, instances held or released, runner
 * sessions coming and going. Each event is acted on here (this replica's dispatcher) and,
 * where other replicas hold runners too, told to them through the coordinator; what other
 * replicas tell arrives here too (`start`). The API, the gRPC sessions and the leader jobs
 * all go through it, so "wake here and tell the others" is written once.
 */
export class RunnerHub<T extends OfferTarget = OfferTarget> {
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly dispatcher: Dispatcher<T>,
    private readonly coord: Coordinator,
    private readonly log: Logger,
  ) {}

  /** Listens to what other replicas tell this one: work to offer, cancels and timeouts for runners whose streams it holds. */
  start(): void {
    this.coord.onEvent((e: CoordEvent) => {
      if (!this.stopped) this.fromOtherReplica(e);
    });
  }

  stop(): void {
    this.stopped = true;
  }

  /**
   * Queues tasks of one project (QuotaExceededError past the owner's quota) and gets them
   * offered: one task that a runner of this replica can take now is queued and granted
   * with one commit and offered at once (Dispatcher.handOff); otherwise every replica's
   * runners of the tasks' clusters are woken. Returns the tasks' ids in order.
   */
  async enqueue(tasks: NewTask[]): Promise<string[]> {
    const handed = tasks.length === 1 ? await this.dispatcher.handOff(tasks[0]!) : undefined;
    if (handed) {
      if (!handed.granted) this.tasksReady(tasks[0]!.cluster);
      return [handed.taskId];
    }
    const ids = await this.store.tasks.queue(tasks);
    for (const c of new Set(tasks.map((t) => t.cluster))) this.tasksReady(c);
    return ids;
  }

  /** Tasks of `cluster` ('*': any) may be claimable now (queued, a delay passed, a package resumed). */
  tasksReady(cluster: string): void {
    this.dispatcher.wake(cluster);
    this.coord.publish({ type: 'ready', cluster });
  }

  /** Leases ended: their concurrency slots are freed at once (the slot reconciler is the backstop). */
  leasesEnded(leaseIds: readonly string[]): void {
    void this.dispatcher.freeSlots(leaseIds).catch((err) => this.log.warn({ err: (err as Error).message }, 'could not free concurrency slots'));
  }

  /** A running task's cancel was requested: its runner hears at once, wherever its stream is. */
  cancelRequested(runnerId: string): void {
    const s = this.dispatcher.session(runnerId);
    if (!s || s.state === 'closed') {
      this.coord.publish({ type: 'cancel', runnerId });
      return;
    }
    void s.sendPendingCancels().catch((err) => this.log.warn({ err: (err as Error).message }, 'could not send cancel'));
  }

  /** Instances were marked KILL or released: their runners stop (or resume) taking work. */
  instancesChanged(): void {
    void this.dispatcher.refreshHeld();
    this.coord.publish({ type: 'instances' });
  }

  /** A running task is past its timeout: its runner is asked to stop it, wherever its stream is. False when no replica holds it. */
  async timeoutOverdue(l: { leaseId: string; attempt: number; runnerId: string }, connectedRecently: () => Promise<boolean>): Promise<boolean> {
    const s = this.dispatcher.session(l.runnerId);
    if (s && s.state !== 'closed') s.cancelForTimeout(l.leaseId, l.attempt);
    else if (await connectedRecently()) this.coord.publish({ type: 'timeout', runnerId: l.runnerId, leaseId: l.leaseId, attempt: l.attempt });
    else return false;
    await this.store.leases.markCancelSent(l.leaseId);
    return true;
  }

  /** A runner's session opened on this replica (Hello accepted). */
  sessionOpened(s: T): Promise<void> {
    return this.dispatcher.register(s);
  }

  /** A runner's session on this replica closed. */
  sessionClosed(s: T): void {
    this.dispatcher.unregister(s);
  }

  /** A runner has free slots again (a credit, a lease ended): offer its cluster's work here. */
  capacity(cluster: string): void {
    this.dispatcher.wake(cluster);
  }

  private fromOtherReplica(e: CoordEvent): void {
    if (e.type === 'ready') {
      if (e.cluster === '*') this.dispatcher.slotsFreed();
      else this.dispatcher.wake(e.cluster);
      return;
    }
    if (e.type === 'instances') {
      void this.dispatcher.refreshHeld();
      return;
    }
    const s = this.dispatcher.session(e.runnerId);
    if (!s || s.state === 'closed') return;
    if (e.type === 'cancel') void s.sendPendingCancels().catch((err) => this.log.warn({ err: (err as Error).message }, 'could not send cancel'));
    else if (e.type === 'timeout') {
      s.cancelForTimeout(e.leaseId, e.attempt);
      void this.store.leases.markCancelSent(e.leaseId).catch(() => undefined);
    }
  }
}
