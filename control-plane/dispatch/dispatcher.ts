import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { RunnerSession } from '../grpc/session.ts';
import type { Store } from '../store/index.ts';
import type { OfferRow } from '../store/leases.ts';
import type { NewTask } from '../store/tasks.ts';
import { StoreUnavailableError } from '../errors.ts';
import { codeScope, projectScope, type Coordinator } from '../coord/types.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';

/** How long a package whose slot could not be taken is left out of claims (a freed slot ends it sooner). */
const BLOCK_MS = 1000;
/** How often each replica looks for cancels its runners have not been sent (lost events). */
const CANCEL_BACKSTOP_MS = 1000;

/** Most tasks claimed for one runner in one transaction. */
export const MAX_CLAIM = 256;

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
export class Dispatcher {
  private readonly sessions = new Map<string, RunnerSession>();
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
    private readonly metrics?: ControlPlaneMetrics,
  ) {}

  start(tickMs = 250): void {
    const tick = () => {
      if (this.stopped) return;
      this.wake('*');
      if (Date.now() - this.lastCancelSweep >= CANCEL_BACKSTOP_MS) {
        this.lastCancelSweep = Date.now();
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
   * Re-reads which of this replica's runners sit on KILL instances (they get no new work).
   * Called when another replica says instances changed, and every second as a backstop.
   */
  async refreshHeld(): Promise<void> {
    const withInstance = [...this.sessions.values()].filter((s) => s.instanceId);
    if (withInstance.length === 0) return;
    try {
      const held = await this.store.autoscale.held(withInstance.map((s) => s.instanceId));
      let freed = false;
      for (const s of withInstance) {
        const h = held.has(s.instanceId);
        if (s.held && !h) freed = true;
        s.held = h;
      }
      if (freed) this.wake('*');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not refresh instance states');
    }
  }

  /** Sends cancels whose event was lost (etcd away, a replica died between request and send). */
  private async cancelBackstop(): Promise<void> {
    const ids = [...this.sessions.keys()];
    if (ids.length === 0) return;
    try {
      for (const id of await this.store.leases.runnersWithPendingCancels(ids)) await this.sessions.get(id)?.sendPendingCancels();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cancel backstop failed');
    }
  }

  /** Packages and projects claims must leave out now. */
  private async excluded(): Promise<{ codes: string[]; projects: string[] }> {
    const now = Date.now();
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

  /** Takes the slots each limited row needs (package, project); rows without them go back to the queue. */
  private async withSlots(rows: OfferRow[], runnerId: string): Promise<OfferRow[]> {
    if (rows.every((r) => r.max_concurrency === null && r.project_max_running === null)) return rows;
    const out: OfferRow[] = [];
    for (const r of rows) {
      const codeOk = r.max_concurrency === null || (await this.coord.acquire(codeScope(r.code_id), r.max_concurrency, r.lease_id));
      const projectOk =
        codeOk && (r.project_max_running === null || (await this.coord.acquire(projectScope(r.project_id), r.project_max_running, r.lease_id)));
      if (codeOk && projectOk) {
        out.push(r);
        continue;
      }
      if (!codeOk) this.blocked.set(r.code_id, Date.now() + BLOCK_MS);
      else this.blockedProjects.set(r.project_id, Date.now() + BLOCK_MS);
      this.metrics?.slotRefusals.inc();
      // Ending the lease also frees (through the store's listener) a slot it did take.
      await this.store.leases.release(r.lease_id, r.attempt, runnerId, 'no_slot');
    }
    return out;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  register(s: RunnerSession): void {
    const old = this.sessions.get(s.runner!.id);
    if (old && old !== s) old.close('superseded by a newer session of the same runner', true);
    this.sessions.set(s.runner!.id, s);
  }

  unregister(s: RunnerSession): void {
    if (this.sessions.get(s.runner!.id) === s) this.sessions.delete(s.runner!.id);
  }

  session(runnerId: string): RunnerSession | undefined {
    return this.sessions.get(runnerId);
  }

  all(): RunnerSession[] {
    return [...this.sessions.values()];
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
    let best: RunnerSession | undefined;
    for (const s of this.sessions.values()) {
      if (s.runner?.cluster !== task.cluster || s.pumping || s.freeSlots() <= 0) continue;
      if (!best || s.freeSlots() > best.freeSlots()) best = s;
    }
    if (!best?.runner) return undefined;
    const s = best;
    s.pumping = true;
    try {
      const r = await this.store.leases.queueAndGrant(task, s.runner!, this.config.timers.acceptDeadlineMs);
      // A session closed meanwhile: the accept deadline returns the task to the queue.
      if (r.offer) this.metrics?.handOffs.inc();
      if (r.offer && s.state !== 'closed') {
        s.offer([r.offer]);
        // Let the event loop put the offer on the wire before the caller answers its HTTP
        // request: the answer (and the client it wakes) would otherwise go first.
        await new Promise((res) => setImmediate(res));
      }
      return { taskId: r.taskId, granted: r.offer !== undefined };
    } finally {
      s.pumping = false;
      if (s.pumpAgain) void this.pump(s);
    }
  }

  /** Offers work to every runner of `cluster` ('*': all clusters) with free credit. */
  wake(cluster: string): void {
    for (const s of this.sessions.values()) {
      if ((cluster === '*' || s.runner?.cluster === cluster) && s.freeSlots() > 0) void this.pump(s);
    }
  }

  /** Claims and offers until the runner's credit is used or nothing is eligible; one pump per runner at a time. */
  private async pump(s: RunnerSession): Promise<void> {
    if (s.pumping) {
      s.pumpAgain = true;
      return;
    }
    s.pumping = true;
    try {
      do {
        s.pumpAgain = false;
        for (;;) {
          // A runner may announce any number of free slots: claim in bounded batches, so one
          // credit never loads the whole queue into memory, and a session dropped while
          // offering (it stopped reading) ties up at most one more batch.
          const want = Math.min(s.freeSlots(), MAX_CLAIM);
          if (want <= 0 || !s.runner) break;
          const claimed = await this.store.leases.claim(s.runner, want, {
            acceptDeadlineMs: this.config.timers.acceptDeadlineMs,
            ageingS: this.config.priorityAgeingS,
            ...(await this.excluded().then((x) => ({ exclude: x.codes, excludeProjects: x.projects }))),
          });
          if (claimed.length === 0) break;
          const rows = await this.withSlots(claimed, s.runner.id);
          if (s.state === 'closed') break; // the accept deadline returns them to the queue
          if (rows.length > 0) s.offer(rows);
          if (claimed.length < want) break;
        }
      } while (s.pumpAgain && !this.stopped);
    } catch (err) {
      if (err instanceof StoreUnavailableError) this.log.warn({ err: err.message }, 'dispatch paused: database unavailable');
      else this.log.error({ err }, 'dispatch failed');
    } finally {
      s.pumping = false;
    }
  }
}
