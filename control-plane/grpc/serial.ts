/**
 * Runs the writes of one runner's two streams one at a time. A result (control stream) and
 * a log (log stream) of the same task both update its row; run side by side, two bursts
 * that lock the same rows in different orders deadlock, and PostgreSQL takes a second
 * (deadlock_timeout) to break the tie. Runners are independent of one another, so writes
 * for different runners still run in parallel.
 */
export class RunnerSerial {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(runnerId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(runnerId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(runnerId, tail);
    void tail.then(() => {
      if (this.tails.get(runnerId) === tail) this.tails.delete(runnerId);
    });
    return next;
  }
}
