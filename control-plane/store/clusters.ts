import { randomBytes } from 'node:crypto';
import type { StoreCtx } from './ctx.ts';
import { hashToken } from './accounts.ts';

export interface Cluster {
  id: string;
  name: string;
  user_id: string | null;
  memory_mb: number;
  created_at: Date;
  updated_at: Date;
}

/** Clusters: pools of runners that tasks name, and the tokens their runners present. */
export class ClustersStore {
  constructor(private readonly c: StoreCtx) {}

  /** Creates a cluster; returns it with its runner token, shown only now. */
  async create(name: string, o: { memoryMb?: number; userId?: string } = {}): Promise<{ cluster: Cluster; token: string }> {
    const token = randomBytes(24).toString('hex');
    const now = this.c.clock.now();
    const r = await this.c.db.query<Cluster>(
      `INSERT INTO clusters (id, name, user_id, token_hash, memory_mb, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id, name, user_id, memory_mb, created_at, updated_at`,
      [this.c.ids(), name, o.userId ?? null, hashToken(token), o.memoryMb ?? 512, now],
    );
    return { cluster: r.rows[0]!, token };
  }

  async byName(name: string): Promise<Cluster | undefined> {
    return (
      await this.c.db.query<Cluster>('SELECT id, name, user_id, memory_mb, created_at, updated_at FROM clusters WHERE name = $1', [name])
    ).rows[0];
  }

  async byId(id: string): Promise<Cluster | undefined> {
    return (
      await this.c.db.query<Cluster>('SELECT id, name, user_id, memory_mb, created_at, updated_at FROM clusters WHERE id = $1', [id])
    ).rows[0];
  }

  async list(): Promise<Cluster[]> {
    return (await this.c.db.query<Cluster>('SELECT id, name, user_id, memory_mb, created_at, updated_at FROM clusters ORDER BY name'))
      .rows;
  }

  /** The cluster whose id and runner token these are, or undefined. */
  async authenticate(clusterId: string, token: string): Promise<Cluster | undefined> {
    return (
      await this.c.db.query<Cluster>(
        'SELECT id, name, user_id, memory_mb, created_at, updated_at FROM clusters WHERE id = $1 AND token_hash = $2',
        [clusterId, hashToken(token)],
      )
    ).rows[0];
  }

  /** Replaces the runner token; runners holding the old one are refused from now on. */
  async rotateToken(clusterId: string): Promise<string | undefined> {
    const token = randomBytes(24).toString('hex');
    const r = await this.c.db.query('UPDATE clusters SET token_hash = $2, updated_at = $3 WHERE id = $1', [
      clusterId,
      hashToken(token),
      this.c.clock.now(),
    ]);
    return r.rowCount > 0 ? token : undefined;
  }
}
