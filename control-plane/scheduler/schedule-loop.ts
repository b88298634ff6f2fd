import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import { StoreUnavailableError } from '../errors.ts';
import type { Store } from '../store/index.ts';

export interface Loop {
  stop(): Promise<void>;
}

/**
 * Runs `tick` every `everyMs` until stopped, never overlapping itself. A tick that fails
 * is logged and the loop goes on: the next tick retries.
 */
export function startLoop(name: string, everyMs: number, log: Logger, tick: () => Promise<void>): Loop {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  const run = () => {
    running = tick()
      .catch((err) => {
        if (err instanceof StoreUnavailableError) log.warn({ loop: name, err: err.message }, 'loop tick: database unavailable');
        else log.error({ loop: name, err }, 'loop tick failed');
      })
      .finally(() => {
        running = undefined;
        if (!stopped) timer = setTimeout(run, everyMs);
      });
  };
  timer = setTimeout(run, 0);
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}

/** Fires due schedules into queued tasks (single replica; the etcd issue adds leadership). */
export function startScheduleLoop(o: { store: Store; clock: Clock; everyMs: number; log: Logger; onFired?: () => void }): Loop {
  return startLoop('schedules', o.everyMs, o.log, async () => {
    let fired: number;
    do {
      fired = await o.store.schedules.fireDue(o.clock.now());
      if (fired > 0) {
        o.log.info({ fired }, 'schedules fired');
        o.onFired?.();
      }
    } while (fired >= 100);
  });
}
