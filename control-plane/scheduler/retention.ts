import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { RetentionSettings } from '../config.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import type { Fence } from '../store/fence.ts';
import type { StatLevel } from '../store/series.ts';
import { QUEUE_LOAD_HOURLY, QUEUE_LOAD_SERIES, SCHEDULE_HISTORY, type BatchResult, type ExpiringRows, type TaskCursor } from '../store/retention.ts';

const DAY_MS = 86_400_000;

/** One batch of a category's pass: what it deleted, and whether the category is done. */
type NextBatch = (cutoff: Date, limit: number, fence: Fence) => Promise<{ result: BatchResult; done: boolean }>;

/** Something retention deletes after `days` (0: never); `pass()` starts a pass over it. */
interface Category {
  readonly name: string;
  readonly days: number;
  pass(): NextBatch;
}

/** Finished tasks with their retry chains, log chunks and leases, walked oldest first with a cursor. */
function finishedTasks(store: Store, days: number): Category {
  return {
    name: 'tasks',
    days,
    pass() {
      let cursor: TaskCursor | undefined;
      return async (cutoff, limit, fence) => {
        const b = await store.retention.deleteFinishedTasks(cutoff, limit, cursor, fence);
        cursor = b.next;
        return { result: b, done: b.done };
      };
    },
  };
}

/** A category deleted by one statement a batch, done when a batch deletes fewer than `limit`. */
function batched(name: string, days: number, batch: (cutoff: Date, limit: number, fence: Fence) => Promise<BatchResult>): Category {
  return {
    name,
    days,
    pass: () => async (cutoff, limit, fence) => {
      const result = await batch(cutoff, limit, fence);
      return { result, done: result.maxRows < limit };
    },
  };
}

/** Rows of a table that go by one time column (schedule history, the recorded queue load). */
const expiring = (store: Store, spec: ExpiringRows, days: number) =>
  batched(spec.kind, days, (cutoff, limit, fence) => store.retention.deleteExpired(spec, cutoff, limit, fence));

/** Recorded machine stats of one level (raw samples, minutes, hours), by their time, in no order. */
const statSamples = (store: Store, level: StatLevel, days: number) =>
  batched(`stats_${level}`, days, (cutoff, limit, fence) => store.series.deleteExpired(level, cutoff, limit, fence));

/**
 * Series of recorded machine stats none of whose samples is left, once no recorder has
 * resolved them for the raw samples' period (the runners of an autoscaled fleet come and go).
 */
const statSeries = (store: Store, days: number) => batched('stats_series', days, (cutoff, limit, fence) => store.series.deleteUnused(cutoff, limit, fence));

/**
 * Retention (leader work): every `intervalS` a pass deletes what is finished and older than
 * its period — finished tasks with their logs and leases (a retry chain whole, once all of
 * it is finished and old), then finished schedules none of whose tasks is kept — in batches
 * of at most `batch` rows, each its own fenced transaction, with `pauseMs` between them. A
 * pass stops between batches when leadership is lost (or the replica stops); the next
 * leader's pass starts over and finds what is left. Tasks go before schedules, so a
 * schedule whose last tasks go in a pass can go in the same pass. The recorded queue load
 * follows: its per-interval rows, then its hourly roll-up, each with its own period. Recorded
 * machine stats go last, each level (raw, minutes, hours) by its own period, then the series
 * left with no samples at all.
 */
export function retentionJob(o: {
  store: Store;
  clock: Clock;
  settings: RetentionSettings;
  metrics: ControlPlaneMetrics;
  log: Logger;
}): LeaderJob {
  const { store, clock, settings, metrics, log } = o;
  const categories: Category[] = [
    finishedTasks(store, settings.tasksDays),
    expiring(store, SCHEDULE_HISTORY, settings.schedulesDays),
    ...QUEUE_LOAD_SERIES.map((spec) => expiring(store, spec, settings.queueLoadDays)),
    ...QUEUE_LOAD_HOURLY.map((spec) => expiring(store, spec, settings.queueLoadHourlyDays)),
    statSamples(store, 'raw', settings.statsRawDays),
    statSamples(store, '1m', settings.statsMinuteDays),
    statSamples(store, '1h', settings.statsHourDays),
    statSeries(store, settings.statsRawDays),
  ];
  return {
    name: 'retention',
    everyMs: settings.intervalS * 1000,
    async tick(fence, signal) {
      const active = categories.filter((c) => c.days > 0);
      if (active.length === 0) return;
      const t0 = performance.now();
      const now = clock.now();
      const deleted: Record<string, number> = {};
      let batches = 0;
      let stopped: string | undefined;
      try {
        outer: for (const c of active) {
          const cutoff = new Date(now.getTime() - c.days * DAY_MS);
          const next = c.pass();
          for (;;) {
            if (signal.aborted) {
              stopped = 'leadership lost';
              break outer;
            }
            const { result, done } = await next(cutoff, settings.batch, fence);
            batches++;
            for (const [kind, n] of Object.entries(result.deleted)) {
              if (n <= 0) continue;
              metrics.retentionDeleted.inc({ kind }, n);
              deleted[kind] = (deleted[kind] ?? 0) + n;
            }
            log.debug({ category: c.name, deleted: result.deleted, statements: result.statements, maxRows: result.maxRows }, 'retention batch');
            if (done) break;
            if (settings.pauseMs > 0) {
              try {
                await sleep(settings.pauseMs, undefined, { signal });
              } catch {
                stopped = 'leadership lost';
                break outer;
              }
            }
          }
        }
      } catch (err) {
        stopped = (err as Error).message;
        throw err;
      } finally {
        const summary = { deleted, batches, ms: Math.round(performance.now() - t0), ...(stopped ? { stopped } : {}) };
        log.info(summary, stopped ? 'retention pass stopped' : 'retention pass');
      }
    },
  };
}
