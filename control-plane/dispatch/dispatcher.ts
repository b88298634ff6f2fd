import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { RunnerSession } from '../grpc/session.ts';
import type { Store } from '../store/index.ts';
import { StoreUnavailableError } from '../errors.ts';

/** Most tasks claimed for one runner in one transaction. */
export const MAX_CLAIM = 256;

/**
 * Offers queued work to the runners whose streams this replica holds, within their credit.
 * Woken by events (a task queued, a credit, a lease ended, a code resumed) so an idle runner
 * gets a new task at once; a slow tick covers delayed tasks becoming eligible.
 */
export class Dispatcher {
  private readonly sessions = new Map<string, RunnerSession>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly config: ControlPlaneConfig,
    private readonly log: Logger,
  ) {}

  start(tickMs = 250): void {
    const tick = () => {
      if (this.stopped) return;
      this.wake('*');
      this.timer = setTimeout(tick, tickMs);
    };
    this.timer = setTimeout(tick, tickMs);
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
          const rows = await this.store.leases.claim(s.runner, want, {
            acceptDeadlineMs: this.config.timers.acceptDeadlineMs,
            ageingS: this.config.priorityAgeingS,
          });
          if (rows.length === 0) break;
          if (s.state === 'closed') break; // the accept deadline returns them to the queue
          s.offer(rows);
          if (rows.length < want) break;
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
