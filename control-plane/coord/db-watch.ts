import type { Coordinator } from './types.ts';

/**
 * Keeps this replica out of the election while it cannot reach PostgreSQL. Leadership
 * follows the etcd lease, and a replica cut from PostgreSQL but not from etcd keeps its
 * lease: without this it would stay the leader, and every leader loop (schedules, the lease
 * sweeper, promotion, the autoscaler) would stall on every replica until the cut healed.
 *
 * The database is asked every `everyMs` (one question at a time: one that has not answered
 * within `graceMs / 2` counts as a failure while it is still out, and is given up for a new
 * one after `graceMs`). When nothing has
 * answered for `graceMs`, the replica stands down (Coordinator.setCandidate) and another
 * that stands leads; at the first answer it stands again, behind the others.
 */
export function watchDatabaseForLeadership(o: {
  coord: Coordinator;
  ping: () => Promise<boolean>;
  everyMs: number;
  graceMs: number;
}): { stop(): void } {
  let lastOk = Date.now();
  let inFlight: { answer: Promise<boolean>; since: number } | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const ask = (): Promise<boolean> => {
    // One question at a time; one out for longer than the grace is given up for a new one
    // (a connection that never answers must not keep the replica down once it heals).
    if (!inFlight || Date.now() - inFlight.since > o.graceMs) {
      const q = { answer: Promise.resolve().then(() => o.ping()).catch(() => false), since: Date.now() };
      void q.answer.finally(() => {
        if (inFlight === q) inFlight = undefined;
      });
      inFlight = q;
    }
    const { answer } = inFlight;
    const deadline = new Promise<boolean>((resolve) => setTimeout(resolve, o.graceMs / 2, false).unref());
    return Promise.race([answer, deadline]);
  };

  const round = async () => {
    const ok = await ask();
    if (stopped) return;
    const now = Date.now();
    // setCandidate acts (and logs) only when the candidacy changes.
    if (ok) {
      lastOk = now;
      o.coord.setCandidate(true, 'the database answers again');
    } else if (now - lastOk >= o.graceMs) {
      o.coord.setCandidate(false, `the database has not answered for ${now - lastOk} ms (grace ${o.graceMs} ms)`);
    }
    timer = setTimeout(() => void round(), o.everyMs);
    timer.unref();
  };
  timer = setTimeout(() => void round(), o.everyMs);
  timer.unref();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
