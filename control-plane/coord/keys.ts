/**
 * Every etcd key Gantry uses, built here and nowhere else. All live under the configured
 * prefix (GANTRY_ETCD_PREFIX), so several installations can share one etcd.
 *
 *   <prefix>election/<leaseHex>       a candidate for leadership; lowest create revision leads
 *   <prefix>replicas/<replicaId>      a live replica (bound to its lease)
 *   <prefix>sem/<scope>/<index>       a concurrency slot; value = the holding lease id
 *   <prefix>events/<replicaId>        the latest event a replica published (watched)
 */
export class EtcdKeys {
  constructor(readonly prefix: string) {}

  electionPrefix(): string {
    return `${this.prefix}election/`;
  }

  candidate(leaseHex: string): string {
    return `${this.electionPrefix()}${leaseHex}`;
  }

  replica(replicaId: string): string {
    return `${this.prefix}replicas/${replicaId}`;
  }

  replicasPrefix(): string {
    return `${this.prefix}replicas/`;
  }

  semPrefix(): string {
    return `${this.prefix}sem/`;
  }

  semScopePrefix(scope: string): string {
    return `${this.semPrefix()}${scope}/`;
  }

  slot(scope: string, index: number): string {
    return `${this.semScopePrefix(scope)}${index}`;
  }

  /** Parses a slot key back to its scope and index, or undefined for any other key. */
  parseSlot(key: string): { scope: string; index: number } | undefined {
    if (!key.startsWith(this.semPrefix())) return undefined;
    const rest = key.slice(this.semPrefix().length);
    const cut = rest.lastIndexOf('/');
    if (cut <= 0) return undefined;
    const index = Number(rest.slice(cut + 1));
    if (!Number.isInteger(index) || index < 0) return undefined;
    return { scope: rest.slice(0, cut), index };
  }

  eventsPrefix(): string {
    return `${this.prefix}events/`;
  }

  events(replicaId: string): string {
    return `${this.eventsPrefix()}${replicaId}`;
  }
}
