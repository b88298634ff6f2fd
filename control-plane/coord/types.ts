/**
 * The coordinator: what replicas of the control plane agree on outside PostgreSQL.
 * Leadership of the singleton loops, concurrency slots, and wake-ups between replicas
 * (docs/architecture.md, "4 Coordination"). Two implementations: `etcd` for any number of
 * replicas, `local` for one process.
 */

/** Something one replica tells all the others. */
export type CoordEvent =
  /** Tasks became ready for `cluster` (queued, a delay passed, a slot freed). */
  | { type: 'ready'; cluster: string }
  /** Cancels were requested for leases of this runner; whoever holds its stream sends them. */
  | { type: 'cancel'; runnerId: string }
  /** A lease ran past its task's timeout: its runner's replica cancels it. */
  | { type: 'timeout'; runnerId: string; leaseId: string; attempt: number }
  /** Instances changed state (KILL, or a KILL cancelled): replicas re-read which runners are held. */
  | { type: 'instances' };

/** Leadership held by this replica: its term fences every leader write. */
export interface Leadership {
  readonly term: number;
  /** Aborted the moment leadership is lost or in doubt; leader work stops at once. */
  readonly signal: AbortSignal;
}

export interface CoordStatus {
  readonly kind: 'local' | 'etcd';
  /** The coordinator can reach its backend and holds a live session (etcd lease). */
  readonly healthy: boolean;
  /** The replica currently leading, if known. */
  readonly leader: string | undefined;
  readonly isLeader: boolean;
  readonly term: number | undefined;
}

/** A concurrency slot as the coordinator holds it. */
export interface Slot {
  /** 'code:<codeId>' or 'project:<projectId>'. */
  readonly scope: string;
  readonly index: number;
  /** The PostgreSQL lease that holds the slot. */
  readonly holder: string;
}

export interface Coordinator {
  readonly kind: 'local' | 'etcd';
  readonly replicaId: string;
  start(): Promise<void>;
  /** Gives up leadership and slots' session; idempotent. */
  stop(): Promise<void>;
  status(): CoordStatus;
  /** Asks the backend now (a read): true when it answers. The caller bounds the wait. */
  ping(): Promise<boolean>;
  /** Called with each leadership this replica wins (run leader work until its signal aborts). */
  onLeadership(cb: (l: Leadership) => void): void;
  /**
   * Whether this replica stands for leadership (true at start). A replica that cannot reach
   * PostgreSQL stands down (coord/db-watch.ts): it gives up leadership at once and is not
   * elected again until it stands again, behind the replicas that stood meanwhile. The
   * local coordinator, alone, has no one to give way to and ignores it.
   */
  setCandidate(stand: boolean, why: string): void;
  /** Called with every event published by another replica. */
  onEvent(cb: (e: CoordEvent) => void): void;
  /** Called when the coordinator becomes healthy or unhealthy. */
  onHealth(cb: (healthy: boolean) => void): void;
  /** Tells every other replica (best effort, coalesced; never throws). */
  publish(e: CoordEvent): void;
  /**
   * Takes one of `limit` slots of `scope` for `holder` (a lease id). True if taken (or
   * already held by it); false when all are held or the backend is unreachable.
   */
  acquire(scope: string, limit: number, holder: string): Promise<boolean>;
  /** Frees the slots these holders have here (others are ignored); returns how many were freed. */
  release(holders: readonly string[]): Promise<number>;
  /** Every slot held anywhere (for the reconciler). */
  slots(): Promise<Slot[]>;
  /** Deletes a slot if it is still held by `holder` (reconciler). */
  dropSlot(slot: Slot): Promise<void>;
}

export const codeScope = (codeId: string) => `code:${codeId}`;
export const projectScope = (projectId: string) => `project:${projectId}`;
