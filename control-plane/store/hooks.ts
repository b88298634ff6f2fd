/**
 * Outcome hooks: who hears that a task ended. `webhooks` lists URLs and `notify` e-mail
 * addresses, each for the outcomes `succeeds` (complete), `fails` (error, timeout, killed)
 * and `finishes` (every final status, cancelled too).
 *
 * A code package's hooks are inherited by its tasks; a task (or a schedule, for the tasks it
 * queues) that gives `webhooks` or `notify` replaces that list of its package's, and an empty
 * object sends none. The result is fixed when the task is queued (tasks.hooks), as its
 * package revision is; a retry keeps its original's.
 */
export const HOOK_EVENTS = ['succeeds', 'fails', 'finishes'] as const;
export type HookEvent = (typeof HOOK_EVENTS)[number];
export type HookLists = Partial<Record<HookEvent, string[]>>;

export interface Hooks {
  webhooks?: HookLists;
  notify?: HookLists;
}

const hasAny = (l: HookLists | undefined): l is HookLists => l !== undefined && HOOK_EVENTS.some((e) => (l[e]?.length ?? 0) > 0);

/** Drops empty lists and empty kinds; null when nothing is left (the column's "no hooks"). */
export function compactHooks(h: Hooks | null | undefined): Hooks | null {
  if (!h) return null;
  const out: Hooks = {};
  for (const kind of ['webhooks', 'notify'] as const) {
    const l = h[kind];
    if (!hasAny(l)) continue;
    const kept: HookLists = {};
    for (const e of HOOK_EVENTS) if (l[e]?.length) kept[e] = [...l[e]!];
    out[kind] = kept;
  }
  return out.webhooks || out.notify ? out : null;
}

/** A task's hooks: each kind its own when given (even empty), else the inherited one. */
export function resolveHooks(own: Hooks | null | undefined, inherited: Hooks | null | undefined): Hooks | null {
  return compactHooks({ webhooks: own?.webhooks ?? inherited?.webhooks, notify: own?.notify ?? inherited?.notify });
}

/** A kind as the API shows it: all three lists, as the seed's `webhooks`/`notify` objects are. */
export function fullLists(l: HookLists | undefined): Record<HookEvent, string[]> {
  return { succeeds: l?.succeeds ?? [], fails: l?.fails ?? [], finishes: l?.finishes ?? [] };
}
