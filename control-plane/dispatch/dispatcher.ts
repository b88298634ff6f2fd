import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { Store } from '../store/index.ts';
import type { Offer } from '../store/claims.ts';
import type { NewTask } from '../store/tasks.ts';
import type { OfferTarget } from './offer-target.ts';
import { StoreUnavailableError } from '../errors.ts';
import { codeScope, projectScope, type Coordinator } from '../coord/types.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';

/** How long a package whose slot could not be taken is left out of claims (a freed slot ends it sooner). */
const BLOCK_MS = 1000;
/** How often each replica looks for cancels its runners have not been sent (lost events). */
const CANCEL_BACKSTOP_MS = 1000;

/** Most tasks claimed for one runner in one transaction. */
export const MAX_CLAIM = 256;

/** What the dispatcher keeps per runner of this replica. */
interface RunnerState<T extends OfferTarget> {
  readonly target: T;
  /** A pump (or a hand-off) is claiming for it; a second one waits its turn. */
  pumping: boolean;
  /** Asked to pump while pumping: pump again when done. */
  pumpAgain: boolean;
  /** The pump in flight, settled when it ends (a hand-off waits on it rather than skip an idle runner). */
  pumped?: Promise<void>;
  /**
   * Its instance is KILL (being scaled in or terminated by an operator): it finishes what it
   * runs and is offered nothing new. Reversible: a cancelled scale-in clears it.
   */
  held: boolean;
}

/**
 * Offers queued work to the runners whose streams this replica holds, within their credit.
 * Woken by events (a task queued, a credit, a lease ended, a code resumed — here or on
 * another replica) so an idle runner gets a new task at once; a slow tick covers delayed
 * tasks becoming eligible and wake-ups lost with etcd.
 *
 * A task of a package with `max_concurrency` is offered only once it holds a slot of the
 * coordinator's semaphore (PostgreSQL's count under an advisory lock has already admitted
 * it); without a slot it goes back to the queue and its package sits out briefly.
 */
export class Dispatcher<T extends OfferTarget = OfferTarget> {
  private readonly runners = new Map<string, RunnerState<T>>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Packages whose slot could not be taken, until when. */
  private readonly blocked = new Map<string, number>();
  /** Projects likewise. */
  private readonly blockedProjects = new Map<string, number>();
  /** While the coordinator is unhealthy: every limited package and project, refreshed now and then. */
  private limitedCache: { at: number; codes: string[]; projects: string[] } | undefined;
  private lastCancelSweep = 0;

  constructor(
    private readonly store: Store,
    private readonly config: ControlPlaneConfig,
    private readonly log: Logger,
    private readonly coord: Coordinator,
    private readonly clock: Clock,
    private readonly metrics?: ControlPlaneMetrics,
  ) {}

  /** Slots a runner may be offered now: its credit, unless its instance is held. */
  private free(r: RunnerState<T>): number {
    return r.held ? 0 : r.target.freeSlots();
  }

  start(tickMs = 250): void {
    const tick = () => {
      if (this.stopped) return;
      this.wake('*');
      if (this.clock.now().getTime() - this.lastCancelSweep >= CANCEL_BACKSTOP_MS) {
        this.lastCancelSweep = this.clock.now().getTime();
        void this.cancelBackstop();
        void this.refreshHeld();
      }
      this.timer = setTimeout(tick, tickMs);
    };
    this.timer = setTimeout(tick, tickMs);
  }

  /** A slot was freed somewhere: packages sitting out may be claimable again. */
  slotsFreed(): void {
    this.blocked.clear();
    this.blockedProjects.clear();
    this.wake('*');
  }

  /**
   * Frees the concurrency slots of ended leases (the slot reconciler is the backstop). When
   * any was held, limited work may be claimable on every replica: woken here, told to the others.
   */
  async freeSlots(leaseIds: readonly string[]): Promise<void> {
    if (leaseIds.length === 0 || (await this.coord.release([...leaseIds])) === 0) return;
    this.slotsFreed();
    this.coord.publish({ type: 'ready', cluster: '*' });
  }

  /**
   * Re-reads which of this replica's runners sit on KILL instances (they get no new work).
   * Called when another replica says instances changed, and every second as a backstop.
   */
  async refreshHeld(): Promise<void> {
    const withInstance = [...this.runners.values()].filter((r) => r.target.instanceId);
    if (withInstance.length === 0) return;
    try {
      const held = await this.store.autoscale.held(withInstance.map((r) => r.target.instanceId));
      let freed = false;
      for (const r of withInstance) {
        const h = held.has(r.target.instanceId);
        if (r.held && !h) freed = true;
        r.held = h;
      }
      if (freed) this.wake('*');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not refresh instance states');
    }
  }

  /** Sends cancels whose event was lost (etcd away, a replica died between request and send). */
  private async cancelBackstop(): Promise<void> {
    const ids = [...this.runners.keys()];
    if (ids.length === 0) return;
    try {
      for (const id of await this.store.leases.runnersWithPendingCancels(ids)) await this.runners.get(id)?.target.sendPendingCancels();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cancel backstop failed');
    }
  }

  /** Packages and projects claims must leave out now. */
  private async excluded(): Promise<{ codes: string[]; projects: string[] }> {
    const now = this.clock.now().getTime();
    for (const m of [this.blocked, this.blockedProjects]) for (const [id, until] of m) if (until <= now) m.delete(id);
    const out = { codes: [...this.blocked.keys()], projects: [...this.blockedProjects.keys()] };
    if (!this.coord.status().healthy) {
      // No slot can be taken: concurrency-limited work pauses, everything else flows.
      if (!this.limitedCache || now - this.limitedCache.at > 1000) {
        this.limitedCache = { at: now, codes: await this.store.leases.limitedCodes(), projects: await this.store.leases.limitedProjects() };
      }
      out.codes.push(...this.limitedCache.codes);
      out.projects.push(...this.limitedCache.projects);
    }
    return out;
  }

  /** Takes the slots each limited offer needs (package, project); offers without them go back to the queue. */
  private async withSlots(offers: Offer[], runnerId: string): Promise<Offer[]> {
    if (offers.every((o) => o.maxConcurrency === null && o.projectMaxRunning === null)) return offers;
    const out: Offer[] = [];
    for (const o of offers) {
      const codeOk = o.maxConcurrency === null || (await this.coord.acquire(codeScope(o.codeId), o.maxConcurrency, o.leaseId));
      const projectOk =
        codeOk && (o.projectMaxRunning === null || (await this.coord.acquire(projectScope(o.projectId), o.projectMaxRunning, o.leaseId)));
      if (codeOk && projectOk) {
        out.push(o);
        continue;
      }
      const until = this.clock.now().getTime() + BLOCK_MS;
      if (!codeOk) this.blocked.set(o.codeId, until);
      else this.blockedProjects.set(o.projectId, until);
      this.metrics?.slotRefusals.inc();
      // The lease goes back; a slot it did take is freed with it, for any replica's claims.
      if (await this.store.outcomes.release(o.leaseId, o.attempt, runnerId, 'no_slot')) await this.freeSlots([o.leaseId]);
    }
    return out;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /**
   * A runner's session opened here; a previous session of the same runner is closed. Its
   * instance's KILL state is read first: a runner of an instance being scaled in takes no work.
   */
  async register(t: T): Promise<void> {
    const held = t.instanceId ? (await this.store.autoscale.held([t.instanceId])).has(t.instanceId) : false;
    // Closed while its instance was read: it was unregistered already and must not come back.
    if (t.state === 'closed') return;
    const id = t.runner!.id;
    const old = this.runners.get(id);
    if (old && old.target !== t) old.target.close('superseded by a newer session of the same runner', true);
    this.runners.set(id, { target: t, pumping: false, pumpAgain: false, held });
    this.metrics?.sessions.set(this.runners.size);
  }

  unregister(t: T): void {
    if (this.runners.get(t.runner!.id)?.target === t) this.runners.delete(t.runner!.id);
    this.metrics?.sessions.set(this.runners.size);
  }

  session(runnerId: string): T | undefined {
    return this.runners.get(runnerId)?.target;
  }

  /** Free slots over this replica's runners: what they can be offered now (a held instance's runner counts none). */
  creditSlots(): number {
    let n = 0;
    for (const r of this.runners.values()) n += this.free(r);
    return n;
  }

  all(): T[] {
    return [...this.runners.values()].map((r) => r.target);
  }

  /**
   * Queues one new task and, when a runner of its cluster on this replica has a free slot,
   * grants it to that runner in the same statement (LeasesStore.queueAndGrant) and offers
   * it at once: an idle runner gets new work with one commit between the request and the
   * offer. Undefined when no runner here can take it now (the caller queues it as usual).
   * The runner's pump is held meanwhile, so the same credit is never offered twice.
   */
  async handOff(task: NewTask): Promise<{ taskId: string; granted: boolean } | undefined> {
    if (task.delay > 0 || this.stopped) return undefined;
    let best = this.handOffTarget(task.cluster, false);
    if (!best) {
      // The runners that could take it are all mid-pump (the tick's idle claim, a credit's):
      // one claim's wait, then the insert itself can still grant it.
      const busy = this.handOffTarget(task.cluster, true);
      if (busy?.pumped) {
        await busy.pumped;
        if (this.stopped) return undefined;
        best = this.handOffTarget(task.cluster, false);
      }
    }
    if (!best?.target.runner) return undefined;
    const r = best;
    r.pumping = true;
    try {
      const g = await this.store.claims.queueAndGrant(task, r.target.runner!, this.config.timers.acceptDeadlineMs);
      // A session closed meanwhile: the accept deadline returns the task to the queue.
      if (g.offer) this.metrics?.handOffs.inc();
      if (g.offer && r.target.state !== 'closed') {
        r.target.offer([g.offer]);
        // Let the event loop put the offer on the wire before the caller answers its HTTP
        // request: the answer (and the client it wakes) would otherwise go first.
        await new Promise((res) => setImmediate(res));
      }
      return { taskId: g.taskId, granted: g.offer !== undefined };
    } finally {
      r.pumping = false;
      if (r.pumpAgain) void this.pump(r);
    }
  }

  /** The runner of `cluster` with the most free slots, pumping or not as asked. */
  private handOffTarget(cluster: string, pumping: boolean): RunnerState<T> | undefined {
    let best: RunnerState<T> | undefined;
    for (const r of this.runners.values()) {
      if (r.target.runner?.cluster !== cluster || r.pumping !== pumping || this.free(r) <= 0) continue;
      if (!best || this.free(r) > this.free(best)) best = r;
    }
    return best;
  }

  /** Offers work to every runner of `cluster` ('*': all clusters) with free credit. */
  wake(cluster: string): void {
    for (const r of this.runners.values()) {
      if ((cluster === '*' || r.target.runner?.cluster === cluster) && this.free(r) > 0) void this.pump(r);
    }
  }

  /** Claims and offers until the runner's credit is used or nothing is eligible; one pump per runner at a time. */
  private async pump(r: RunnerState<T>): Promise<void> {
    if (r.pumping) {
      r.pumpAgain = true;
      return;
    }
    r.pumping = true;
    let settle!: () => void;
    r.pumped = new Promise((res) => (settle = res));
    const t = r.target;
    try {
      do {
        r.pumpAgain = false;
        for (;;) {
          // A runner may announce any number of free slots: claim in bounded batches, so one
          // credit never loads the whole queue into memory, and a session dropped while
          // offering (it stopped reading) ties up at most one more batch.
          const want = Math.min(this.free(r), MAX_CLAIM);
          if (want <= 0 || !t.runner) break;
          const claimed = await this.store.claims.claim(t.runner, want, {
            acceptDeadlineMs: this.config.timers.acceptDeadlineMs,
            ageingS: this.config.priorityAgeingS,
            ...(await this.excluded().then((x) => ({ exclude: x.codes, excludeProjects: x.projects }))),
          });
          if (claimed.length === 0) break;
          const offers = await this.withSlots(claimed, t.runner.id);
          if (t.state === 'closed') break; // the accept deadline returns them to the queue
          if (offers.length > 0) t.offer(offers);
          if (claimed.length < want) break;
        }
      } while (r.pumpAgain && !this.stopped);
    } catch (err) {
      if (err instanceof StoreUnavailableError) this.log.warn({ err: err.message }, 'dispatch paused: database unavailable');
      else this.log.error({ err }, 'dispatch failed');
    } finally {
      r.pumping = false;
      r.pumped = undefined;
      settle();
    }
  }
}
