import { Etcd3, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import type { Logger } from '../../lib/logger.ts';
import { EtcdKeys } from './keys.ts';
import type { CoordEvent, CoordStatus, Coordinator, Leadership, Slot } from './types.ts';

export interface EtcdCoordinatorOptions {
  endpoints: readonly string[];
  prefix: string;
  /** TTL of this replica's etcd lease, in seconds. */
  ttlS: number;
  replicaId: string;
  log: Logger;
  /** Deadline of each unary etcd call. */
  callTimeoutMs?: number;
}

interface Session {
  lease: Lease;
  leaseId: string;
  candidateKey: string;
  /** When a keepalive last succeeded (or the lease was granted). */
  lastOk: number;
  /** Whether the candidate key is on the lease (it follows `standing`, see syncCandidacy). */
  candidate: boolean;
}

/**
 * The etcd coordinator. One etcd lease per replica session carries everything this replica
 * holds: its candidacy for leadership, its concurrency slots, its event key. When the
 * replica dies the lease expires and all of it goes with it.
 *
 * Leadership is our own small election rather than the library's (its election has elected
 * two leaders after an etcd restart: microsoft/etcd3#158 and #176): every replica puts a
 * candidate key on its lease; the lowest create revision leads, and that revision is the term
 * that fences its writes in PostgreSQL. Leader work stops at once when the lease is lost, when
 * keepalives have not succeeded for 3/4 of the TTL (so before etcd can expire the lease and
 * elect someone else), when a periodic read no longer shows this replica first, or when the
 * replica stands down (setCandidate: it cannot reach PostgreSQL) and takes its candidate key
 * away, so the next candidate leads.
 */
export class EtcdCoordinator implements Coordinator {
  readonly kind = 'etcd' as const;
  readonly replicaId: string;
  private readonly client: Etcd3;
  private readonly keys: EtcdKeys;
  private readonly log: Logger;
  private readonly ttlMs: number;
  private session: Session | undefined;
  /** Leases of earlier sessions, revoked as soon as etcd answers so their keys go at once. */
  private readonly staleLeases = new Set<string>();
  private leadership: { term: number; ctl: AbortController } | undefined;
  private leaderName: string | undefined;
  private healthy = false;
  private stopped = false;
  private readonly leaderCbs: ((l: Leadership) => void)[] = [];
  private readonly eventCbs: ((e: CoordEvent) => void)[] = [];
  private readonly healthCbs: ((h: boolean) => void)[] = [];
  private watchers: Watcher[] = [];
  private checkTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = 250;
  private establishing: Promise<void> | undefined;
  private evaluating: Promise<void> = Promise.resolve();
  /** Slots this replica put: holder (lease id) -> their keys (a package slot, a project slot). */
  private readonly held = new Map<string, string[]>();
  /** Whether this replica stands for leadership (setCandidate); candidacy changes run one at a time. */
  private standing = true;
  private candidacy: Promise<void> = Promise.resolve();
  private pending: CoordEvent[] = [];
  private flushScheduled = false;
  private eventSeq = 0;

  constructor(o: EtcdCoordinatorOptions) {
    this.replicaId = o.replicaId;
    this.keys = new EtcdKeys(o.prefix);
    this.log = o.log;
    this.ttlMs = o.ttlS * 1000;
    const callTimeoutMs = o.callTimeoutMs ?? Math.min(3000, Math.max(500, this.ttlMs / 2));
    this.client = new Etcd3({
      hosts: [...o.endpoints],
      dialTimeout: callTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
    });
  }

  async start(): Promise<void> {
    await this.establish();
    // Checked every TTL/8: with freshness at 3/4 TTL, leader work stops by 7/8 of the TTL after
    // the last good keepalive, before etcd can expire the lease and elect someone else.
    this.checkTimer = setInterval(() => this.check(), Math.max(50, Math.floor(this.ttlMs / 8)));
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.checkTimer);
    clearTimeout(this.retryTimer);
    this.stepDown('coordinator stopped');
    await this.flush().catch(() => undefined);
    const s = this.session;
    this.session = undefined;
    this.setHealthy(false);
    for (const w of this.watchers) await w.cancel().catch(() => undefined);
    // Revoking the lease drops candidacy, slots and event key at once: a successor is
    // elected now, not a TTL from now.
    if (s) await s.lease.revoke().catch(() => s.lease.release());
    this.client.close();
  }

  async ping(): Promise<boolean> {
    try {
      await this.client.get(this.keys.electionPrefix()).exec();
      return true;
    } catch {
      return false;
    }
  }

  status(): CoordStatus {
    return {
      kind: 'etcd',
      healthy: this.healthy,
      leader: this.healthy ? this.leaderName : undefined,
      isLeader: this.leadership !== undefined,
      term: this.leadership?.term,
    };
  }

  onLeadership(cb: (l: Leadership) => void): void {
    this.leaderCbs.push(cb);
    if (this.leadership) cb({ term: this.leadership.term, signal: this.leadership.ctl.signal });
  }

  onEvent(cb: (e: CoordEvent) => void): void {
    this.eventCbs.push(cb);
  }

  onHealth(cb: (h: boolean) => void): void {
    this.healthCbs.push(cb);
  }

  // ---------- session, candidacy, leadership ----------

  /** Grants a lease and stands for leadership on it; on failure retries with backoff. */
  private establish(): Promise<void> {
    this.establishing ??= (async () => {
      try {
        await this.establishOnce();
        this.retryDelay = 250;
      } catch (err) {
        this.log.warn({ err: (err as Error).message, retryInMs: this.retryDelay }, 'etcd unreachable; coordination paused');
        this.scheduleRetry();
      } finally {
        this.establishing = undefined;
      }
    })();
    return this.establishing;
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.establish(), this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 2000);
  }

  private async establishOnce(): Promise<void> {
    if (this.stopped || this.session) return;
    for (const id of [...this.staleLeases]) {
      await this.revokeId(id);
      this.staleLeases.delete(id);
    }
    if (this.watchers.length < 2) {
      for (const w of this.watchers.splice(0)) await w.cancel().catch(() => undefined);
      await this.watch();
    }
    const lease = this.client.lease(Math.ceil(this.ttlMs / 1000), { autoKeepAlive: true });
    let leaseId: string;
    try {
      leaseId = await lease.grant();
    } catch (err) {
      lease.release();
      throw err;
    }
    const leaseHex = BigInt(leaseId).toString(16);
    const s: Session = { lease, leaseId, candidateKey: this.keys.candidate(leaseHex), lastOk: Date.now(), candidate: false };
    lease.on('keepaliveSucceeded', () => {
      s.lastOk = Date.now();
    });
    lease.on('lost', (err) => {
      if (this.session === s) this.loseSession(`etcd lease lost: ${err.message}`);
    });
    try {
      await lease.put(this.keys.replica(this.replicaId)).value(JSON.stringify({ replicaId: this.replicaId, since: new Date().toISOString() }));
      if (this.standing) {
        await lease.put(s.candidateKey).value(this.replicaId);
        s.candidate = true;
      }
    } catch (err) {
      this.staleLeases.add(leaseId);
      lease.release();
      throw err;
    }
    if (this.stopped) {
      await lease.revoke().catch(() => lease.release());
      return;
    }
    this.session = s;
    this.setHealthy(true);
    this.log.info({ lease: leaseHex }, 'etcd session established');
    await this.evaluate();
  }

  /** Revokes a lease of an earlier session by id (its keys disappear). */
  private async revokeId(leaseId: string): Promise<void> {
    try {
      await this.client.leaseClient.leaseRevoke({ ID: leaseId });
    } catch (err) {
      // An expired lease cannot be revoked: that is fine, its keys are gone.
      if (!/not found|requested lease not found/i.test((err as Error).message)) throw err;
    }
  }

  /** Watches the election and the events (created once; the library resumes them after etcd outages). */
  private async watch(): Promise<void> {
    const election = await this.client.watch().prefix(this.keys.electionPrefix()).create();
    this.watchers.push(election);
    election.on('put', () => this.scheduleEvaluate());
    election.on('delete', () => this.scheduleEvaluate());
    election.on('connected', () => this.scheduleEvaluate());
    election.on('error', (err) => this.log.warn({ err: err.message }, 'etcd election watch error'));
    const events = await this.client.watch().prefix(this.keys.eventsPrefix()).create();
    this.watchers.push(events);
    events.on('put', (kv: IKeyValue) => this.onEventKey(kv));
    events.on('error', (err) => this.log.warn({ err: err.message }, 'etcd event watch error'));
    events.on('disconnected', () => this.log.warn('etcd event watch disconnected; events resume on reconnect'));
  }

  private scheduleEvaluate(): void {
    this.evaluating = this.evaluating.then(() => this.evaluate()).catch(() => undefined);
  }

  /** Reads who leads: the candidate with the lowest create revision. */
  private async evaluate(): Promise<void> {
    const s = this.session;
    if (!s || this.stopped) return;
    let first: IKeyValue | undefined;
    try {
      const res = await this.client.getAll().prefix(this.keys.electionPrefix()).sort('Create', 'Ascend').limit(1).exec();
      first = res.kvs[0];
    } catch (err) {
      this.stepDown(`cannot read the election: ${(err as Error).message}`);
      return;
    }
    if (this.session !== s) return;
    this.leaderName = first?.value.toString();
    const mine = this.standing && first !== undefined && first.key.toString() === s.candidateKey;
    if (mine && !this.leadership && this.fresh(s)) {
      const term = Number(first!.create_revision);
      const ctl = new AbortController();
      this.leadership = { term, ctl };
      this.log.info({ term }, 'elected leader');
      for (const cb of this.leaderCbs) cb({ term, signal: ctl.signal });
    } else if (!mine && this.leadership) {
      this.stepDown(`another replica leads (${this.leaderName ?? 'none'})`);
    }
  }

  setCandidate(stand: boolean, why: string): void {
    if (this.standing === stand || this.stopped) return;
    this.standing = stand;
    if (!stand) this.stepDown(`stood down: ${why}`);
    this.log.warn({ why }, stand ? 'standing for leadership again' : 'stood down from the election');
    this.syncCandidacy();
  }

  /**
   * Puts or deletes the session's candidate key to match `standing` (one change at a time;
   * retried by check() until it holds). Standing again puts a new key, so the replica comes
   * behind those that stood meanwhile; a key left behind by a failed delete would name this
   * replica the leader to the others while it does no leader work.
   */
  private syncCandidacy(): void {
    this.candidacy = this.candidacy
      .then(async () => {
        const s = this.session;
        if (!s || s.candidate === this.standing) return;
        if (this.standing) await s.lease.put(s.candidateKey).value(this.replicaId);
        else await this.client.delete().key(s.candidateKey).exec();
        s.candidate = !s.candidate;
        this.scheduleEvaluate();
      })
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message, standing: this.standing }, 'could not change candidacy; trying again'));
  }

  /** A keepalive succeeded recently enough that etcd cannot have expired the lease. */
  private fresh(s: Session): boolean {
    return Date.now() - s.lastOk < this.ttlMs * 0.75;
  }

  private check(): void {
    const s = this.session;
    if (!s) return;
    if (!this.fresh(s)) {
      this.loseSession(`no successful etcd keepalive for ${Date.now() - s.lastOk} ms (TTL ${this.ttlMs} ms)`);
      return;
    }
    if (s.candidate !== this.standing) this.syncCandidacy();
    this.scheduleEvaluate();
  }

  private stepDown(why: string): void {
    const l = this.leadership;
    if (!l) return;
    this.leadership = undefined;
    this.log.warn({ term: l.term, why }, 'leadership lost; leader work stopped');
    l.ctl.abort(new Error(why));
  }

  /** The session is gone or in doubt: stop leader work, forget slots, start a new session. */
  private loseSession(why: string): void {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    this.stepDown(why);
    this.held.clear();
    // Who led is unknown until the next session reads the election: without this, status()
    // named the leader from before the loss as soon as the new session was healthy.
    this.leaderName = undefined;
    this.setHealthy(false);
    this.staleLeases.add(s.leaseId);
    s.lease.release();
    this.log.warn({ why }, 'etcd session lost; reconnecting');
    this.scheduleRetry();
  }

  private setHealthy(h: boolean): void {
    if (this.healthy === h) return;
    this.healthy = h;
    for (const cb of this.healthCbs) cb(h);
  }

  // ---------- events ----------

  publish(e: CoordEvent): void {
    if (!this.session) return; // lost with etcd: the replicas' own ticks are the backstop
    this.pending.push(e);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush().catch((err) => this.log.warn({ err: (err as Error).message }, 'could not publish events'));
    });
  }

  private async flush(): Promise<void> {
    const s = this.session;
    if (!s || this.pending.length === 0) return;
    const seen = new Set<string>();
    const events = this.pending.filter((e) => {
      const k = JSON.stringify(e);
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    this.pending = [];
    await this.client
      .put(this.keys.events(this.replicaId))
      .value(JSON.stringify({ from: this.replicaId, seq: ++this.eventSeq, events }))
      .lease(s.leaseId)
      .exec();
  }

  private onEventKey(kv: IKeyValue): void {
    let msg: { from?: string; events?: CoordEvent[] };
    try {
      msg = JSON.parse(kv.value.toString()) as typeof msg;
    } catch {
      return;
    }
    if (msg.from === this.replicaId || !Array.isArray(msg.events)) return;
    for (const e of msg.events) for (const cb of this.eventCbs) cb(e);
  }

  // ---------- concurrency slots ----------

  async acquire(scope: string, limit: number, holder: string): Promise<boolean> {
    const s = this.session;
    if (!s || limit <= 0) return false;
    try {
      const res = await this.client.getAll().prefix(this.keys.semScopePrefix(scope)).exec();
      const taken = new Set<number>();
      for (const kv of res.kvs) {
        const p = this.keys.parseSlot(kv.key.toString());
        if (!p) continue;
        if (kv.value.toString() === holder) return true;
        taken.add(p.index);
      }
      for (let i = 0; i < limit; i++) {
        if (taken.has(i)) continue;
        const key = this.keys.slot(scope, i);
        // The transaction is the semaphore: a slot key is created only if it does not exist.
        const r = await this.client
          .if(key, 'Create', '==', 0)
          .then(this.client.put(key).value(holder).lease(s.leaseId))
          .commit();
        if (r.succeeded) {
          this.held.set(holder, [...(this.held.get(holder) ?? []), key]);
          return true;
        }
      }
      return false;
    } catch (err) {
      this.log.warn({ err: (err as Error).message, scope }, 'could not take a concurrency slot');
      return false;
    }
  }

  async release(holders: readonly string[]): Promise<number> {
    const mine = holders.filter((h) => this.held.has(h));
    if (mine.length === 0) return 0;
    const keys = mine.flatMap((h) => this.held.get(h)!.map((key) => ({ h, key })));
    for (const h of mine) this.held.delete(h);
    await Promise.all(
      keys.map(async ({ h, key }) => {
        try {
          await this.client.if(key, 'Value', '==', h).then(this.client.delete().key(key)).commit();
        } catch (err) {
          // The reconciler removes it within its period, or the lease takes it.
          this.log.warn({ err: (err as Error).message, key }, 'could not free a concurrency slot');
        }
      }),
    );
    return keys.length;
  }

  async slots(): Promise<Slot[]> {
    const res = await this.client.getAll().prefix(this.keys.semPrefix()).exec();
    const out: Slot[] = [];
    for (const kv of res.kvs) {
      const p = this.keys.parseSlot(kv.key.toString());
      if (p) out.push({ ...p, holder: kv.value.toString() });
    }
    return out;
  }

  async dropSlot(slot: Slot): Promise<void> {
    const key = this.keys.slot(slot.scope, slot.index);
    await this.client.if(key, 'Value', '==', slot.holder).then(this.client.delete().key(key)).commit();
    const rest = (this.held.get(slot.holder) ?? []).filter((k) => k !== key);
    if (rest.length > 0) this.held.set(slot.holder, rest);
    else this.held.delete(slot.holder);
  }
}
