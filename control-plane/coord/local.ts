import type { CoordEvent, CoordStatus, Coordinator, Leadership, Slot } from './types.ts';

/**
 * The coordinator of a single replica (no ETCD_ENDPOINTS): it always leads, slots are a
 * map in memory, and there is no one to tell. Its term is its start time, so a replica
 * restarted on the same database fences out writes of the one it replaced.
 */
export class LocalCoordinator implements Coordinator {
  readonly kind = 'local' as const;
  private readonly slotsByScope = new Map<string, Map<number, string>>();
  private readonly leaderCbs: ((l: Leadership) => void)[] = [];
  private leadership: { term: number; ctl: AbortController } | undefined;
  private started = false;

  constructor(readonly replicaId: string) {}

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.leadership = { term: Date.now(), ctl: new AbortController() };
    for (const cb of this.leaderCbs) cb({ term: this.leadership.term, signal: this.leadership.ctl.signal });
  }

  async stop(): Promise<void> {
    this.leadership?.ctl.abort(new Error('coordinator stopped'));
    this.leadership = undefined;
  }

  async ping(): Promise<boolean> {
    return true;
  }

  status(): CoordStatus {
    return {
      kind: 'local',
      healthy: true,
      leader: this.leadership ? this.replicaId : undefined,
      isLeader: this.leadership !== undefined,
      term: this.leadership?.term,
    };
  }

  /** One replica: there is no one to give leadership to (its leader work waits out the database). */
  setCandidate(): void {}

  onLeadership(cb: (l: Leadership) => void): void {
    this.leaderCbs.push(cb);
    if (this.leadership) cb({ term: this.leadership.term, signal: this.leadership.ctl.signal });
  }

  onEvent(_cb: (e: CoordEvent) => void): void {
    // No other replica publishes.
  }

  onHealth(_cb: (healthy: boolean) => void): void {
    // Always healthy.
  }

  publish(_e: CoordEvent): void {
    // No other replica to tell.
  }

  async acquire(scope: string, limit: number, holder: string): Promise<boolean> {
    let m = this.slotsByScope.get(scope);
    if (!m) this.slotsByScope.set(scope, (m = new Map()));
    for (const h of m.values()) if (h === holder) return true;
    for (let i = 0; i < limit; i++) {
      if (!m.has(i)) {
        m.set(i, holder);
        return true;
      }
    }
    return false;
  }

  async release(holders: readonly string[]): Promise<number> {
    const drop = new Set(holders);
    let n = 0;
    for (const [scope, m] of this.slotsByScope) {
      for (const [i, h] of m) {
        if (drop.has(h)) {
          m.delete(i);
          n++;
        }
      }
      if (m.size === 0) this.slotsByScope.delete(scope);
    }
    return n;
  }

  async slots(): Promise<Slot[]> {
    const out: Slot[] = [];
    for (const [scope, m] of this.slotsByScope) for (const [index, holder] of m) out.push({ scope, index, holder });
    return out;
  }

  async dropSlot(slot: Slot): Promise<void> {
    const m = this.slotsByScope.get(slot.scope);
    if (m?.get(slot.index) === slot.holder) m.delete(slot.index);
  }
}
