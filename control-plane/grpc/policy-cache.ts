import type { ContainerPolicy } from '../../lib/container-policy.ts';

/**
 * The container policy of each cluster, shared by all runner sessions of this replica: one
 * store read per cluster per `maxAgeMs`, however many runners the cluster has (a read per
 * session per beat would grow with the fleet).
 */
export class ClusterPolicyCache {
  private readonly entries = new Map<string, { at: number; read: Promise<ContainerPolicy | undefined> }>();

  constructor(
    private readonly load: (clusterId: string) => Promise<ContainerPolicy | undefined>,
    private readonly maxAgeMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The policy, read at most `maxAgeMs` ago (a failed read is not kept). */
  get(clusterId: string): Promise<ContainerPolicy | undefined> {
    const e = this.entries.get(clusterId);
    if (e && this.now() - e.at < this.maxAgeMs) return e.read;
    const read = this.load(clusterId);
    this.entries.set(clusterId, { at: this.now(), read });
    read.catch(() => this.entries.delete(clusterId));
    return read;
  }
}
