import { GantryError } from './errors.ts';

/**
 * One start/stop discipline for every program (control plane, runner, autoscaler).
 *
 * A program's `start` registers, right after each step that acquired something, how to
 * release it. Stopping — or a start that fails halfway — releases everything registered,
 * last first, each release run even when an earlier one failed; the failures are reported
 * together. A stop has a deadline: a release still running when it passes is left behind
 * (reported as such) so the rest still run and the program can exit.
 */

/** A long-lived program's state, from `start` to the end of `stop`. */
export type ProgramState = 'starting' | 'running' | 'draining' | 'stopped' | 'failed';

/** Some releases failed (or missed the deadline); each is named in the message and in `errors`. */
export class ReleaseError extends GantryError {
  constructor(readonly failures: readonly { name: string; error: unknown }[]) {
    super('release_failed', `could not release: ${failures.map((f) => `${f.name} (${(f.error as Error)?.message ?? String(f.error)})`).join('; ')}`, {
      cause: failures[0]?.error,
    });
  }
}

export class Releases {
  private readonly steps: { name: string; release: (deadline?: number) => unknown }[] = [];
  private running: Promise<void> | undefined;

  /** Registers how to release what a start step just acquired (given the stop's deadline, if any). */
  add(name: string, release: (deadline?: number) => unknown): void {
    this.steps.push({ name, release });
  }

  /**
   * Runs every release, last registered first, each even when an earlier one failed; by
   * `deadline` (ms since the epoch; none: wait for each), a release still running is left
   * behind. Throws ReleaseError naming those that failed. Idempotent: a second call waits
   * for the first.
   */
  releaseAll(deadline?: number): Promise<void> {
    this.running ??= (async () => {
      const failures: { name: string; error: unknown }[] = [];
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await withDeadline(Promise.resolve().then(() => step.release(deadline)), deadline);
        } catch (error) {
          failures.push({ name: step.name, error });
        }
      }
      if (failures.length > 0) throw new ReleaseError(failures);
    })();
    return this.running;
  }
}

class DeadlinePassed extends Error {
  constructor() {
    super('the stop deadline passed');
  }
}

function withDeadline<T>(p: Promise<T>, deadline: number | undefined): Promise<T> {
  if (deadline === undefined) return p;
  const left = deadline - Date.now();
  if (left <= 0) {
    p.catch(() => undefined);
    return Promise.reject(new DeadlinePassed());
  }
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new DeadlinePassed()), left);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/**
 * Runs a program's start steps with a fresh Releases. When a step throws, whatever the
 * earlier steps acquired is released (last first) and the step's error is thrown, with any
 * release failures as its `cause` chain's sibling in the log of the caller.
 */
export async function startWith<T>(start: (r: Releases) => Promise<T>): Promise<T> {
  const r = new Releases();
  try {
    return await start(r);
  } catch (err) {
    await r.releaseAll().catch(() => undefined);
    throw err;
  }
}
