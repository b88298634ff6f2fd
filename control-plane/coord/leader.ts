import type { Logger } from '../../lib/logger.ts';
import type { Fence } from '../store/fence.ts';
import { FencedError } from '../store/fence.ts';
import { StoreUnavailableError } from '../errors.ts';
import type { Coordinator } from './types.ts';

/** A singleton loop: runs on the leader only, every `everyMs`, its writes fenced. */
export interface LeaderJob {
  readonly name: string;
  readonly everyMs: number;
  tick(fence: Fence, signal: AbortSignal): Promise<void>;
}

export interface LeaderWork {
  /** Stops the jobs and waits for ticks in flight. */
  stop(): Promise<void>;
}

/**
 * Runs the leader's jobs while this replica leads. Each leadership brings its own term; the
 * jobs stop the moment its signal aborts (lost lease, election error, another leader), and
 * a tick already in flight can only write if no newer leader has (the fence).
 */
export function runLeaderWork(coord: Coordinator, jobs: readonly LeaderJob[], log: Logger): LeaderWork {
  let stopped = false;
  const inFlight = new Set<Promise<void>>();
  const timers = new Set<NodeJS.Timeout>();
  // What jobs see: aborted when the term ends or when the work is stopped, so a long tick
  // (a retention pass) ends at its next step instead of holding up a graceful stop.
  const terms = new Set<AbortController>();

  coord.onLeadership(({ term, signal: termSignal }) => {
    if (stopped) return;
    const ctl = new AbortController();
    terms.add(ctl);
    termSignal.addEventListener('abort', () => ctl.abort(), { once: true });
    if (termSignal.aborted) ctl.abort();
    const signal = ctl.signal;
    const fence: Fence = { term, holder: coord.replicaId };
    log.info({ term, jobs: jobs.map((j) => j.name) }, 'leader work started');
    termSignal.addEventListener('abort', () => log.warn({ term }, 'leader work stopped'), { once: true });
    for (const job of jobs) {
      const run = () => {
        if (stopped || signal.aborted) return;
        const p = job
          .tick(fence, signal)
          .catch((err) => {
            if (err instanceof FencedError) log.warn({ job: job.name, err: err.message }, 'leader write refused: a newer leader exists');
            else if (err instanceof StoreUnavailableError) log.warn({ job: job.name, err: err.message }, 'leader job: database unavailable');
            else if (!signal.aborted) log.error({ job: job.name, err }, 'leader job failed');
          })
          .finally(() => {
            inFlight.delete(p);
            if (stopped || signal.aborted) return;
            const t = setTimeout(() => {
              timers.delete(t);
              run();
            }, job.everyMs);
            timers.add(t);
          });
        inFlight.add(p);
      };
      run();
    }
    signal.addEventListener(
      'abort',
      () => {
        for (const t of timers) clearTimeout(t);
        timers.clear();
        terms.delete(ctl);
      },
      { once: true },
    );
  });

  return {
    async stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const ctl of terms) ctl.abort();
      await Promise.allSettled([...inFlight]);
    },
  };
}
