import { randomBytes } from 'node:crypto';
import type { AddableCap, ContainerPolicy } from '../../lib/container-policy.ts';
import { GantryError } from '../../lib/errors.ts';
import type { SecretBox } from '../../lib/secretbox.ts';
import type { Page, StoreCtx } from './ctx.ts';
import { pageSql } from './ctx.ts';
import type { Queryable } from './db.ts';
import { hashToken } from './accounts.ts';
import type { QuotasStore } from './quotas.ts';
import { MAX_USER_TAGS, type AwsSettings, type InstanceType } from '../../autoscaler/types.ts';

// The cluster types the autoscaler owns, for this store's importers.
export { MAX_USER_TAGS, type AwsSettings, type BlockDeviceMapping, type InstanceType } from '../../autoscaler/types.ts';

/** A live cluster as runners and the dispatcher see it. */
export interface Cluster {
  id: string;
  name: string;
  userId: string | null;
  memoryMb: number;
  createdAt: Date;
  updatedAt: Date;
}

/** Every setting of a cluster; secrets only as "is it set". */
export interface ClusterDetail extends Cluster {
  diskBytes: number;
  sharedTo: string[];
  provider: 'ec2' | 'local' | null;
  aws: AwsSettings | null;
  userData: string | null;
  disable: boolean;
  runnersMin: number;
  runnersMax: number;
  runnersPerInstance: number;
  deletedAt: Date | null;
  secrets: { awsAccessKeyId: boolean; awsSecretAccessKey: boolean; dockerAuth: boolean; dockerEmail: boolean };
  /** What the cluster's task containers may do (lib/container-policy.ts). */
  container: ContainerPolicy;
}

/** Plaintext secrets on their way in; `null` clears one (only the Docker ones may be cleared). */
export interface ClusterSecretsInput {
  awsAccessKeyId?: string;
  awsSecretAccessKey?: string;
  dockerAuth?: string | null;
  dockerEmail?: string | null;
}

export interface NewCluster {
  name: string;
  memoryMb: number;
  diskBytes: number;
  aws: AwsSettings | null;
  userData: string | null;
  disable: boolean;
  runnersMin: number;
  runnersMax: number;
  runnersPerInstance: number;
  sharedTo: string[];
  secrets: ClusterSecretsInput;
  /** The container settings given; those not given keep the columns' defaults (CONTAINER_DEFAULTS). */
  container?: Partial<ContainerPolicy>;
}

/**
 * A partial update. `aws` fields replace the stored ones (null removes an optional one),
 * except `tags`, which merge into the stored tags (a null value removes that key).
 * Giving `aws` to a cluster without autoscaling turns it on (then region, instance type and
 * both AWS keys must end up set).
 */
export interface ClusterPatch {
  name?: string;
  memoryMb?: number;
  diskBytes?: number;
  aws?: { [K in keyof AwsSettings]?: K extends 'tags' ? Record<string, string | null> : AwsSettings[K] | null };
  userData?: string | null;
  disable?: boolean;
  runnersMin?: number;
  runnersMax?: number;
  runnersPerInstance?: number;
  sharedTo?: string[];
  secrets?: ClusterSecretsInput;
  /** The container settings given replace the stored ones one by one (capAdd as a whole list). */
  container?: Partial<ContainerPolicy>;
}

export interface ClusterInstance {
  id: string;
  clusterId: string;
  instanceId: string;
  provider: 'ec2' | 'local';
  type: InstanceType;
  intentId: string | null;
  runnersTotal: number;
  runnersAvailable: number;
  version: string | null;
  subnetId: string | null;
  launchedAt: Date | null;
  liveAt: Date | null;
  killAt: Date | null;
  terminatedAt: Date | null;
  bootDeadline: Date | null;
  createdAt: Date;
  updatedAt: Date;
}

export interface ClusterStats {
  /** The autoscaler's fast EWMA of demand (busy + queued); 0 before its first tick. */
  ewma: number;
  queued: number;
  runnersTotal: number;
  runnersAvailable: number;
  /** Instances not terminated, and those terminated in the last hour; runner counts live. */
  instances: ClusterInstance[];
}

/** May this user queue onto the cluster a task names (by name, or by id)? */
export type QueueTarget = { kind: 'ok'; name: string } | { kind: 'forbidden'; name: string } | { kind: 'unknown' };

/** The request contradicts itself or the cluster's stored settings (HTTP 400). */
export class ClusterInputError extends GantryError {
  constructor(message: string) {
    super('invalid', message, { kind: 'invalid' });
  }
}

/** The request cannot be applied in the cluster's present state (HTTP 409). */
export class ClusterConflictError extends GantryError {
  constructor(message: string) {
    super('conflict', message, { kind: 'conflict' });
  }
}

/** A secret must be sealed or opened, and no key is configured. */
export class SecretsUnavailableError extends GantryError {
  constructor() {
    super(
      'secrets_unconfigured',
      'Secrets at rest (cluster credentials, webhook signing secrets) are unavailable on this server: no secret key is configured: start the server with GANTRY_SECRET_KEYS (or let the embedded start create its key file)',
      { kind: 'misconfigured' },
    );
  }
}

/** The reference's defaults for `autoscale.aws`, filled in when autoscaling is turned on. */
export const AWS_DEFAULTS: Readonly<Pick<AwsSettings, 'region' | 'instance_type'>> = Object.freeze({
  region: 'us-east-1',
  instance_type: 'c3.xlarge',
});

/** Terminated instances stay in stats this long. */
const TERMINATED_SHOWN_MS = 3600_000;

const BASE_COLS = 'id, name, user_id, memory_mb, created_at, updated_at';
/** The container policy's columns (migration 010), in ContainerRow's names. */
const CONTAINER_COLS = `container_cap_add AS c_cap_add, container_pids_limit AS c_pids_limit,
  container_read_only_rootfs AS c_read_only_rootfs, container_tmp_size_mb AS c_tmp_size_mb, container_user AS c_user,
  container_nofile AS c_nofile, container_network AS c_network`;
const DETAIL_COLS = `${BASE_COLS}, disk_bytes, shared_to, provider, aws, user_data, disable, runners_min, runners_max,
  runners_per_instance, deleted_at, aws_access_key_id_enc IS NOT NULL AS s_key, aws_secret_access_key_enc IS NOT NULL AS s_secret,
  docker_auth_enc IS NOT NULL AS s_auth, docker_email_enc IS NOT NULL AS s_email, ${CONTAINER_COLS}`;

/** Secret columns and the field name each is bound to (the AAD context's last part). */
const SECRET_FIELDS = [
  ['aws_access_key_id_enc', 'aws_access_key_id'],
  ['aws_secret_access_key_enc', 'aws_secret_access_key'],
  ['docker_auth_enc', 'docker_auth'],
  ['docker_email_enc', 'docker_email'],
  ['token_enc', 'runner_token'],
] as const;
type SecretColumn = (typeof SECRET_FIELDS)[number][0];

interface ContainerRow {
  c_cap_add: string[] | null;
  c_pids_limit: number;
  c_read_only_rootfs: boolean;
  c_tmp_size_mb: number;
  c_user: string | null;
  c_nofile: number;
  c_network: string;
}
/** A clusters row as BASE_COLS reads it. */
interface ClusterRow {
  id: string;
  name: string;
  user_id: string | null;
  memory_mb: number;
  created_at: Date;
  updated_at: Date;
}
/** A clusters row as DETAIL_COLS reads it. */
interface DetailRow extends ClusterRow, ContainerRow {
  disk_bytes: number | string;
  shared_to: string[] | null;
  provider: 'ec2' | 'local' | null;
  aws: AwsSettings | null;
  user_data: string | null;
  disable: boolean;
  runners_min: number;
  runners_max: number;
  runners_per_instance: number;
  deleted_at: Date | null;
  s_key: boolean;
  s_secret: boolean;
  s_auth: boolean;
  s_email: boolean;
}
/** A cluster_instances row as SELECT * reads it. */
interface InstanceRow {
  id: string;
  cluster_id: string;
  instance_id: string;
  provider: 'ec2' | 'local';
  type: InstanceType;
  intent_id: string | null;
  runners_total: number;
  runners_available: number;
  version: string | null;
  subnet_id: string | null;
  launched_at: Date | null;
  live_at: Date | null;
  kill_at: Date | null;
  terminated_at: Date | null;
  boot_deadline: Date | null;
  created_at: Date;
  updated_at: Date;
}

function toCluster(r: ClusterRow): Cluster {
  return { id: r.id, name: r.name, userId: r.user_id, memoryMb: r.memory_mb, createdAt: r.created_at, updatedAt: r.updated_at };
}

function toInstance(r: InstanceRow): ClusterInstance {
  return {
    id: r.id,
    clusterId: r.cluster_id,
    instanceId: r.instance_id,
    provider: r.provider,
    type: r.type,
    intentId: r.intent_id,
    runnersTotal: r.runners_total,
    runnersAvailable: r.runners_available,
    version: r.version,
    subnetId: r.subnet_id,
    launchedAt: r.launched_at,
    liveAt: r.live_at,
    killAt: r.kill_at,
    terminatedAt: r.terminated_at,
    bootDeadline: r.boot_deadline,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function toContainer(r: ContainerRow): ContainerPolicy {
  return {
    capAdd: (r.c_cap_add ?? []) as AddableCap[],
    pidsLimit: Number(r.c_pids_limit),
    readOnlyRootfs: r.c_read_only_rootfs,
    tmpSizeMb: Number(r.c_tmp_size_mb),
    user: r.c_user,
    nofile: Number(r.c_nofile),
    network: r.c_network,
  };
}

function toDetail(r: DetailRow): ClusterDetail {
  return {
    ...toCluster(r),
    diskBytes: Number(r.disk_bytes),
    sharedTo: r.shared_to ?? [],
    provider: r.provider,
    aws: r.aws,
    userData: r.user_data,
    disable: r.disable,
    runnersMin: r.runners_min,
    runnersMax: r.runners_max,
    runnersPerInstance: r.runners_per_instance,
    deletedAt: r.deleted_at,
    secrets: { awsAccessKeyId: r.s_key, awsSecretAccessKey: r.s_secret, dockerAuth: r.s_auth, dockerEmail: r.s_email },
    container: toContainer(r),
  };
}

/** Column assignments for the container settings given. */
function containerSets(p: Partial<ContainerPolicy>, set: (col: string, v: unknown, cast?: string) => void): void {
  if (p.capAdd !== undefined) set('container_cap_add', p.capAdd, '::text[]');
  if (p.pidsLimit !== undefined) set('container_pids_limit', p.pidsLimit);
  if (p.readOnlyRootfs !== undefined) set('container_read_only_rootfs', p.readOnlyRootfs);
  if (p.tmpSizeMb !== undefined) set('container_tmp_size_mb', p.tmpSizeMb);
  if (p.user !== undefined) set('container_user', p.user);
  if (p.nofile !== undefined) set('container_nofile', p.nofile);
  if (p.network !== undefined) set('container_network', p.network);
}

const context = (clusterId: string, field: string) => `cluster/${clusterId}/${field}`;

/**
 * Clusters: pools of runners that tasks name, their settings and sealed secrets, the
 * tokens their runners present, and the instances an autoscaler runs for them.
 */
export class ClustersStore {
  #box: SecretBox | undefined;

  constructor(
    private readonly c: StoreCtx,
    private readonly quotas: QuotasStore,
  ) {}

  /**
   * Installs the keys secrets are sealed with (lib/secretbox.ts loadSecretBox). Until then,
   * writing or reading a secret fails with SecretsUnavailableError; nothing else needs it.
   */
  useSecrets(box: SecretBox): void {
    this.#box = box;
  }

  /** Whether useSecrets was called (the keys are loaded once per process). */
  get hasSecrets(): boolean {
    return this.#box !== undefined;
  }

  #seal(clusterId: string, field: string, plain: string): string {
    if (!this.#box) throw new SecretsUnavailableError();
    return this.#box.seal(plain, context(clusterId, field));
  }

  #open(clusterId: string, field: string, sealed: string): string {
    if (!this.#box) throw new SecretsUnavailableError();
    return this.#box.open(sealed, context(clusterId, field));
  }

  /** Creates an operator cluster (no owner: every user may queue onto it); returns it with its runner token, shown only now. */
  async create(name: string, o: { memoryMb?: number; userId?: string } = {}): Promise<{ cluster: Cluster; token: string }> {
    const token = randomBytes(24).toString('hex');
    const id = this.c.ids();
    const now = this.c.clock.now();
    const r = await this.c.db.query<ClusterRow>(
      `INSERT INTO clusters (id, name, user_id, token_hash, token_enc, memory_mb, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ${BASE_COLS}`,
      [id, name, o.userId ?? null, hashToken(token), this.#box ? this.#seal(id, 'runner_token', token) : null, o.memoryMb ?? 512, now],
    );
    return { cluster: toCluster(r.rows[0]!), token };
  }

  /**
   * Creates a cluster with every setting, its secrets sealed, owned by `userId`. A name in
   * use by a live cluster, or by queued tasks or active schedules of other users (who would
   * otherwise see their work run on this owner's runners), is a ClusterConflictError.
   */
  async createCluster(userId: string, n: NewCluster): Promise<{ cluster: ClusterDetail; token: string }> {
    const id = this.c.ids();
    const token = randomBytes(24).toString('hex');
    const sealed = this.#sealInput(id, n.secrets);
    const aws = n.aws && { ...AWS_DEFAULTS, ...n.aws };
    validateMerged({ aws, runnersMin: n.runnersMin, runnersMax: n.runnersMax, rpi: n.runnersPerInstance, hasKeys: !!(sealed.aws_access_key_id_enc && sealed.aws_secret_access_key_enc) });
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await this.#checkNameFree(q, n.name, userId, undefined);
      // The user's cluster quota, under their lock: two creates cannot both take the last one.
      await this.quotas.lock(q, userId);
      await this.quotas.check(q, userId, 'clusters', 1);
      const r = await q.query<DetailRow>(
        `INSERT INTO clusters (id, name, user_id, token_hash, token_enc, memory_mb, disk_bytes, shared_to, provider, aws, user_data,
           disable, runners_min, runners_max, runners_per_instance, aws_access_key_id_enc, aws_secret_access_key_enc,
           docker_auth_enc, docker_email_enc, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text[], $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20)
         ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING
         RETURNING ${DETAIL_COLS}`,
        [id, n.name, userId, hashToken(token), this.#box ? this.#seal(id, 'runner_token', token) : null, n.memoryMb, n.diskBytes, n.sharedTo,
          aws ? 'ec2' : null, aws ? JSON.stringify(aws) : null, n.userData, n.disable, n.runnersMin, n.runnersMax,
          n.runnersPerInstance, sealed.aws_access_key_id_enc ?? null, sealed.aws_secret_access_key_enc ?? null,
          sealed.docker_auth_enc ?? null, sealed.docker_email_enc ?? null, now],
      );
      if (!r.rows[0]) throw new ClusterConflictError(`A cluster named ${JSON.stringify(n.name)} already exists; cluster names are unique because tasks name their cluster`);
      const row = n.container ? await this.#writeContainer(q, id, n.container) : r.rows[0];
      return { cluster: toDetail(row), token };
    });
  }

  /** Writes container settings onto a row (the create path: the insert left the column defaults). */
  async #writeContainer(q: Queryable, id: string, p: Partial<ContainerPolicy>): Promise<DetailRow> {
    const sets: string[] = [];
    const params: unknown[] = [id];
    containerSets(p, (col, v, cast = '') => sets.push(`${col} = $${params.push(v)}${cast}`));
    if (sets.length === 0) return (await q.query<DetailRow>(`SELECT ${DETAIL_COLS} FROM clusters WHERE id = $1`, params)).rows[0]!;
    return (await q.query<DetailRow>(`UPDATE clusters SET ${sets.join(', ')} WHERE id = $1 RETURNING ${DETAIL_COLS}`, params)).rows[0]!;
  }

  /** Seals the secrets given; a key maps to null when the secret is to be cleared. */
  #sealInput(id: string, s: ClusterSecretsInput): Partial<Record<SecretColumn, string | null>> {
    const out: Partial<Record<SecretColumn, string | null>> = {};
    const put = (col: SecretColumn, field: string, v: string | null | undefined) => {
      if (v === undefined) return;
      out[col] = v === null ? null : this.#seal(id, field, v);
    };
    put('aws_access_key_id_enc', 'aws_access_key_id', s.awsAccessKeyId);
    put('aws_secret_access_key_enc', 'aws_secret_access_key', s.awsSecretAccessKey);
    put('docker_auth_enc', 'docker_auth', s.dockerAuth);
    put('docker_email_enc', 'docker_email', s.dockerEmail);
    return out;
  }

  async #checkNameFree(q: Queryable, name: string, userId: string, exceptId: string | undefined): Promise<void> {
    const r = await q.query<{ live: boolean; foreign: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM clusters WHERE name = $1 AND deleted_at IS NULL AND id IS DISTINCT FROM $3) AS live,
              EXISTS (SELECT 1 FROM tasks t JOIN projects p ON p.id = t.project_id
                       WHERE t.cluster = $1 AND t.status = 'queued' AND p.user_id <> $2)
           OR EXISTS (SELECT 1 FROM schedules s JOIN projects p ON p.id = s.project_id
                       WHERE s.cluster = $1 AND s.status = 'scheduled' AND p.user_id <> $2) AS foreign`,
      [name, userId, exceptId ?? null],
    );
    if (r.rows[0]!.live) throw new ClusterConflictError(`A cluster named ${JSON.stringify(name)} already exists; cluster names are unique because tasks name their cluster`);
    if (r.rows[0]!.foreign) {
      throw new ClusterConflictError(`The name ${JSON.stringify(name)} is used by queued tasks or schedules of other users; choose another name`);
    }
  }

  async byName(name: string): Promise<Cluster | undefined> {
    const r = (await this.c.db.query<ClusterRow>(`SELECT ${BASE_COLS} FROM clusters WHERE name = $1 AND deleted_at IS NULL`, [name])).rows[0];
    return r && toCluster(r);
  }

  async byId(id: string): Promise<Cluster | undefined> {
    const r = (await this.c.db.query<ClusterRow>(`SELECT ${BASE_COLS} FROM clusters WHERE id = $1 AND deleted_at IS NULL`, [id])).rows[0];
    return r && toCluster(r);
  }

  async list(): Promise<Cluster[]> {
    return (await this.c.db.query<ClusterRow>(`SELECT ${BASE_COLS} FROM clusters WHERE deleted_at IS NULL ORDER BY name`)).rows.map(toCluster);
  }

  /** Every setting of a live cluster (secrets only as booleans). */
  async detail(id: string): Promise<ClusterDetail | undefined> {
    const r = await this.c.db.query<DetailRow>(`SELECT ${DETAIL_COLS} FROM clusters WHERE id = $1 AND deleted_at IS NULL`, [id]);
    return r.rows[0] && toDetail(r.rows[0]);
  }

  /**
   * A live cluster the user owns or that is shared to them, with their access; undefined
   * for any other (another user's cluster does not exist for them).
   */
  async getForUser(userId: string, id: string): Promise<{ cluster: ClusterDetail; access: 'owner' | 'shared' } | undefined> {
    const c = await this.detail(id);
    if (!c) return undefined;
    if (c.userId === userId) return { cluster: c, access: 'owner' };
    if (c.sharedTo.includes(userId)) return { cluster: c, access: 'shared' };
    return undefined;
  }

  /** Every live cluster, whoever owns it, oldest first (for operators). */
  async listEvery(page: Page): Promise<ClusterDetail[]> {
    const { limit, offset } = pageSql(page);
    const r = await this.c.db.query<DetailRow>(`SELECT ${DETAIL_COLS} FROM clusters WHERE deleted_at IS NULL ORDER BY id LIMIT $1 OFFSET $2`, [limit, offset]);
    return r.rows.map(toDetail);
  }

  /** The user's live clusters and those shared to them, oldest first. */
  async listForUser(userId: string, page: Page): Promise<ClusterDetail[]> {
    const { limit, offset } = pageSql(page);
    const r = await this.c.db.query<DetailRow>(
      `SELECT ${DETAIL_COLS} FROM clusters WHERE deleted_at IS NULL AND (user_id = $1 OR $1 = ANY(shared_to))
       ORDER BY id LIMIT $2 OFFSET $3`,
      [userId, limit, offset],
    );
    return r.rows.map(toDetail);
  }

  /**
   * Applies a partial update atomically: the row is locked, the patch merged (tags merge),
   * the merged settings checked as a whole, then written in one statement. Nothing changes
   * when any check fails. A rename is refused while tasks are queued or running on the
   * cluster, schedules name it or runners are connected: they all hold the old name.
   */
  async update(id: string, p: ClusterPatch): Promise<ClusterDetail> {
    // AWS keys can be replaced, never cleared: ClusterSecretsInput has no null for them.
    const sealed = p.secrets ? this.#sealInput(id, p.secrets) : {};
    return this.c.db.tx(async (q) => {
      const row = (await q.query<DetailRow>(`SELECT ${DETAIL_COLS} FROM clusters WHERE id = $1 AND deleted_at IS NULL FOR UPDATE`, [id])).rows[0];
      if (!row) throw new ClusterConflictError('The cluster was deleted');
      const cur = toDetail(row);
      const aws = p.aws === undefined ? cur.aws : mergeAws(cur.aws, p.aws);
      const runnersMin = p.runnersMin ?? cur.runnersMin;
      const runnersMax = p.runnersMax ?? cur.runnersMax;
      const rpi = p.runnersPerInstance ?? cur.runnersPerInstance;
      const hasKeys =
        (sealed.aws_access_key_id_enc !== undefined || cur.secrets.awsAccessKeyId) &&
        (sealed.aws_secret_access_key_enc !== undefined || cur.secrets.awsSecretAccessKey);
      validateMerged({ aws, runnersMin, runnersMax, rpi, hasKeys });
      if (p.name !== undefined && p.name !== cur.name) await this.#checkRename(q, cur, p.name);
      const sets: string[] = [];
      const params: unknown[] = [id];
      const set = (col: string, v: unknown, cast = '') => sets.push(`${col} = $${params.push(v)}${cast}`);
      if (p.name !== undefined) set('name', p.name);
      if (p.memoryMb !== undefined) set('memory_mb', p.memoryMb);
      if (p.diskBytes !== undefined) set('disk_bytes', p.diskBytes);
      if (p.sharedTo !== undefined) set('shared_to', p.sharedTo, '::text[]');
      if (p.aws !== undefined) {
        set('aws', aws ? JSON.stringify(aws) : null, '::jsonb');
        if (aws && cur.provider !== 'local') set('provider', 'ec2');
      }
      if (p.userData !== undefined) set('user_data', p.userData);
      if (p.disable !== undefined) set('disable', p.disable);
      if (p.runnersMin !== undefined) set('runners_min', p.runnersMin);
      if (p.runnersMax !== undefined) set('runners_max', p.runnersMax);
      if (p.runnersPerInstance !== undefined) set('runners_per_instance', p.runnersPerInstance);
      if (p.container) containerSets(p.container, set);
      for (const [col, v] of Object.entries(sealed)) set(col, v);
      set('updated_at', this.c.clock.now());
      const r = await q.query<DetailRow>(`UPDATE clusters SET ${sets.join(', ')} WHERE id = $1 RETURNING ${DETAIL_COLS}`, params);
      return toDetail(r.rows[0]!);
    });
  }

  async #checkRename(q: Queryable, cur: ClusterDetail, name: string): Promise<void> {
    await this.#checkNameFree(q, name, cur.userId ?? '', cur.id);
    const r = await q.query<{ busy: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM tasks WHERE cluster = $1 AND status IN ('queued', 'running'))
           OR EXISTS (SELECT 1 FROM schedules WHERE cluster = $1 AND status = 'scheduled')
           OR EXISTS (SELECT 1 FROM runners WHERE cluster_id = $2 AND connected) AS busy`,
      [cur.name, cur.id],
    );
    if (r.rows[0]!.busy) {
      throw new ClusterConflictError(
        `The cluster cannot be renamed while tasks are queued or running on it, schedules name it or runners are connected to it (they all hold the name ${JSON.stringify(cur.name)})`,
      );
    }
  }

  /**
   * Deletes a cluster (soft: the row stays for the autoscaler and history). In one
   * transaction: runners are refused from now on, its queued tasks are cancelled (they could
   * never run, and the name becomes free), and every instance not yet KILL or TERMINATE is
   * marked KILL. As the reference documents for an autoscaled cluster, the autoscaler then
   * terminates the instances of a deleted cluster at once, without waiting for their tasks.
   */
  async softDelete(id: string): Promise<{ instancesMarked: string[]; tasksCancelled: number } | undefined> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const c = (
        await q.query<{ name: string }>(
          'UPDATE clusters SET deleted_at = $2, updated_at = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING name',
          [id, now],
        )
      ).rows[0];
      if (!c) return undefined;
      const marked = await q.query<{ instance_id: string }>(
        `UPDATE cluster_instances SET type = 'KILL', kill_at = coalesce(kill_at, $2), updated_at = $2
         WHERE cluster_id = $1 AND type IN ('ADD', 'LIVE') RETURNING instance_id`,
        [id, now],
      );
      const cancelled = await q.query(
        `UPDATE tasks SET status = 'cancelled', msg = 'Cancelled: its cluster was deleted', end_time = $2, updated_at = $2
         WHERE cluster = $1 AND status = 'queued'`,
        [c.name, now],
      );
      return { instancesMarked: marked.rows.map((x) => x.instance_id).sort(), tasksCancelled: cancelled.rowCount };
    });
  }

  /**
   * Where a task naming `ref` (a cluster name, or a cluster id) would go for this user:
   * `default` and operator clusters (no owner) are open to all; others to their owner and
   * the users in shared_to. A name matches before an id.
   */
  async queueTarget(userId: string, ref: string): Promise<QueueTarget> {
    if (ref === 'default') return { kind: 'ok', name: 'default' };
    const c = (
      await this.c.db.query<{ name: string; user_id: string | null; shared_to: string[] }>(
        `SELECT name, user_id, shared_to FROM clusters WHERE deleted_at IS NULL AND (name = $1 OR id = $1)
         ORDER BY (name = $1) DESC LIMIT 1`,
        [ref],
      )
    ).rows[0];
    if (!c) return { kind: 'unknown' };
    if (c.user_id === null || c.user_id === userId || (c.shared_to ?? []).includes(userId)) return { kind: 'ok', name: c.name };
    return { kind: 'forbidden', name: c.name };
  }

  /** True when the user may queue tasks onto the cluster of that name (or id). */
  async canQueue(userId: string, clusterName: string): Promise<boolean> {
    return (await this.queueTarget(userId, clusterName)).kind === 'ok';
  }

  /** The cluster's instances, oldest first; terminated ones only when asked. */
  async instances(clusterId: string, o: { includeTerminated?: boolean } = {}): Promise<ClusterInstance[]> {
    const r = await this.c.db.query<InstanceRow>(
      `SELECT * FROM cluster_instances WHERE cluster_id = $1 ${o.includeTerminated ? '' : `AND type <> 'TERMINATE'`}
       ORDER BY created_at, id`,
      [clusterId],
    );
    return r.rows.map(toInstance);
  }

  /**
   * Marks instances KILL (drain, then terminate: the autoscaler finishes the job and
   * replaces them if demand or runners_min needs it). All or nothing: when any id is not
   * an instance of this cluster, nothing is marked and the unknown ids come back. Instances
   * already KILL or TERMINATE stay as they are.
   */
  async markKill(clusterId: string, instanceIds: string[]): Promise<{ marked: string[]; already: string[]; unknown: string[] }> {
    const ids = [...new Set(instanceIds)];
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const found = await q.query<{ instance_id: string; type: InstanceType }>(
        'SELECT instance_id, type FROM cluster_instances WHERE cluster_id = $1 AND instance_id = ANY($2::text[]) FOR UPDATE',
        [clusterId, ids],
      );
      const known = new Map(found.rows.map((r) => [r.instance_id, r.type]));
      const unknown = ids.filter((i) => !known.has(i));
      if (unknown.length > 0) return { marked: [], already: [], unknown };
      const marked = await q.query<{ instance_id: string }>(
        `UPDATE cluster_instances SET type = 'KILL', kill_at = $3, updated_at = $3
         WHERE cluster_id = $1 AND instance_id = ANY($2::text[]) AND type IN ('ADD', 'LIVE') RETURNING instance_id`,
        [clusterId, ids, now],
      );
      const m = new Set(marked.rows.map((r) => r.instance_id));
      return { marked: ids.filter((i) => m.has(i)), already: ids.filter((i) => !m.has(i)), unknown: [] };
    });
  }

  /**
   * The cluster's state: the autoscaler's EWMA, queued tasks, and runner slots counted from
   * connected runners (a slot is one IronWorker "runner"). Available slots exclude draining
   * runners and runners on KILL or TERMINATE instances: they take no new work.
   */
  async stats(clusterId: string): Promise<ClusterStats | undefined> {
    const c = (await this.c.db.query<{ name: string }>('SELECT name FROM clusters WHERE id = $1', [clusterId])).rows[0];
    if (!c) return undefined;
    const now = this.c.clock.now();
    const [queued, state, runners, instances] = await Promise.all([
      this.c.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE cluster = $1 AND status = 'queued'`, [c.name]),
      this.c.db.query<{ ewma: number }>('SELECT ewma FROM autoscaler_state WHERE cluster_id = $1', [clusterId]),
      this.c.db.query<{ instance_id: string | null; slots: number; draining: boolean; busy: number }>(
        `SELECT r.instance_id, r.slots, r.draining,
                (SELECT count(*)::int FROM task_leases l WHERE l.runner_id = r.id AND l.ended_at IS NULL) AS busy
         FROM runners r WHERE r.cluster_id = $1 AND r.connected`,
        [clusterId],
      ),
      this.c.db.query<InstanceRow>(
        `SELECT * FROM cluster_instances WHERE cluster_id = $1
           AND (type <> 'TERMINATE' OR terminated_at IS NULL OR terminated_at > $2)
         ORDER BY created_at, id`,
        [clusterId, new Date(now.getTime() - TERMINATED_SHOWN_MS)],
      ),
    ]);
    const typeOf = new Map(instances.rows.map((i) => [i.instance_id, i.type]));
    const per = new Map<string, { total: number; available: number }>();
    let total = 0;
    let available = 0;
    for (const r of runners.rows) {
      const type = r.instance_id ? typeOf.get(r.instance_id) : undefined;
      const free = r.draining || type === 'KILL' || type === 'TERMINATE' ? 0 : Math.max(0, r.slots - r.busy);
      total += r.slots;
      available += free;
      if (r.instance_id) {
        const p = per.get(r.instance_id) ?? { total: 0, available: 0 };
        p.total += r.slots;
        p.available += free;
        per.set(r.instance_id, p);
      }
    }
    return {
      ewma: Number(state.rows[0]?.ewma ?? 0),
      queued: queued.rows[0]!.n,
      runnersTotal: total,
      runnersAvailable: available,
      instances: instances.rows.map((row) => {
        const i = toInstance(row);
        const p = per.get(i.instanceId);
        return p ? { ...i, runnersTotal: p.total, runnersAvailable: p.available } : i;
      }),
    };
  }

  /** The registry credentials a runner of this cluster pulls images with, opened. */
  async runnerSecrets(clusterId: string): Promise<{ dockerAuth?: string; dockerEmail?: string }> {
    const r = (
      await this.c.db.query<{ docker_auth_enc: string | null; docker_email_enc: string | null }>(
        'SELECT docker_auth_enc, docker_email_enc FROM clusters WHERE id = $1',
        [clusterId],
      )
    ).rows[0];
    const out: { dockerAuth?: string; dockerEmail?: string } = {};
    if (r?.docker_auth_enc) out.dockerAuth = this.#open(clusterId, 'docker_auth', r.docker_auth_enc);
    if (r?.docker_email_enc) out.dockerEmail = this.#open(clusterId, 'docker_email', r.docker_email_enc);
    return out;
  }

  /** The container policy a runner of this cluster applies to every task; undefined for a deleted or unknown cluster. */
  async containerPolicy(clusterId: string): Promise<ContainerPolicy | undefined> {
    const r = await this.c.db.query<ContainerRow>(`SELECT ${CONTAINER_COLS} FROM clusters WHERE id = $1 AND deleted_at IS NULL`, [clusterId]);
    return r.rows[0] && toContainer(r.rows[0]);
  }

  /** The AWS keys the ec2 provider launches this cluster's instances with, opened. */
  async awsCredentials(clusterId: string): Promise<{ accessKeyId: string; secretAccessKey: string } | undefined> {
    const r = (
      await this.c.db.query<{ k: string | null; s: string | null }>(
        'SELECT aws_access_key_id_enc AS k, aws_secret_access_key_enc AS s FROM clusters WHERE id = $1',
        [clusterId],
      )
    ).rows[0];
    if (!r?.k || !r.s) return undefined;
    return { accessKeyId: this.#open(clusterId, 'aws_access_key_id', r.k), secretAccessKey: this.#open(clusterId, 'aws_secret_access_key', r.s) };
  }

  /**
   * The current runner token, opened, for rendering {{.ClusterToken}} into user data.
   * Undefined for a cluster created before secrets were configured: rotate its token first.
   */
  async runnerToken(clusterId: string): Promise<string | undefined> {
    const r = (await this.c.db.query<{ token_enc: string | null }>('SELECT token_enc FROM clusters WHERE id = $1', [clusterId])).rows[0];
    return r?.token_enc ? this.#open(clusterId, 'runner_token', r.token_enc) : undefined;
  }

  /** The live cluster whose id and runner token these are, or undefined. */
  async authenticate(clusterId: string, token: string): Promise<Cluster | undefined> {
    const r = (
      await this.c.db.query<ClusterRow>(
        `SELECT ${BASE_COLS} FROM clusters WHERE id = $1 AND token_hash = $2 AND deleted_at IS NULL`,
        [clusterId, hashToken(token)],
      )
    ).rows[0];
    return r && toCluster(r);
  }

  /** Replaces the runner token; runners holding the old one are refused from now on. */
  async rotateToken(clusterId: string): Promise<string | undefined> {
    const token = randomBytes(24).toString('hex');
    const r = await this.c.db.query(
      'UPDATE clusters SET token_hash = $2, token_enc = $3, updated_at = $4 WHERE id = $1 AND deleted_at IS NULL',
      [clusterId, hashToken(token), this.#box ? this.#seal(clusterId, 'runner_token', token) : null, this.c.clock.now()],
    );
    return r.rowCount > 0 ? token : undefined;
  }

  /**
   * Key rotation: rewrites every sealed value (deleted clusters included) that is not under
   * the primary key, each with a compare-and-set so a concurrent update wins. Values that
   * cannot be opened are reported, not rewritten; the old key must stay until that is fixed.
   */
  async reencryptSecrets(): Promise<{ rewritten: number; current: number; failed: { clusterId: string; field: string; error: string }[] }> {
    const box = this.#box;
    if (!box) throw new SecretsUnavailableError();
    const out = { rewritten: 0, current: 0, failed: [] as { clusterId: string; field: string; error: string }[] };
    const cols = SECRET_FIELDS.map(([col]) => col).join(', ');
    const rows = await this.c.db.query<Record<SecretColumn, string | null> & { id: string }>(
      `SELECT id, ${cols} FROM clusters WHERE ${SECRET_FIELDS.map(([col]) => `${col} IS NOT NULL`).join(' OR ')} ORDER BY id`,
    );
    for (const row of rows.rows) {
      for (const [col, field] of SECRET_FIELDS) {
        const sealed = row[col];
        if (!sealed) continue;
        try {
          const fresh = box.resealed(sealed, context(row.id, field));
          if (fresh === undefined) {
            out.current++;
            continue;
          }
          const r = await this.c.db.query(`UPDATE clusters SET ${col} = $3 WHERE id = $1 AND ${col} = $2`, [row.id, sealed, fresh]);
          if (r.rowCount > 0) out.rewritten++;
          else out.current++; // replaced meanwhile, under the primary key
        } catch (err) {
          out.failed.push({ clusterId: row.id, field, error: (err as Error).message });
        }
      }
    }
    return out;
  }
}

/** Merges an aws patch into stored settings: fields replace (null removes), tags merge. */
function mergeAws(cur: AwsSettings | null, p: NonNullable<ClusterPatch['aws']>): AwsSettings | null {
  const out: Record<string, unknown> = { ...(cur ?? AWS_DEFAULTS) };
  for (const [k, v] of Object.entries(p)) {
    if (k === 'tags') continue;
    if (v === null) delete out[k];
    else if (v !== undefined) out[k] = v;
  }
  if (p.tags) {
    const tags: Record<string, string> = { ...(cur?.tags ?? {}) };
    for (const [k, v] of Object.entries(p.tags)) {
      if (v === null) delete tags[k];
      else tags[k] = v;
    }
    if (Object.keys(tags).length > 0) out.tags = tags;
    else delete out.tags;
  }
  return out as unknown as AwsSettings;
}

/** Checks that hold between fields, on the settings as they will be stored. */
function validateMerged(m: { aws: AwsSettings | null; runnersMin: number; runnersMax: number; rpi: number; hasKeys: boolean }): void {
  if (m.runnersMax > 0 && m.runnersMin > m.runnersMax) {
    throw new ClusterInputError(`autoscale.runners_min (${m.runnersMin}) must not exceed autoscale.runners_max (${m.runnersMax}); runners_max 0 means no limit`);
  }
  const aws = m.aws;
  if (!aws) return;
  if (!aws.region) throw new ClusterInputError('autoscale.aws.region is required');
  if (!aws.instance_type) throw new ClusterInputError('autoscale.aws.instance_type is required');
  if (!m.hasKeys) throw new ClusterInputError('autoscale.aws.access_key_id and autoscale.aws.secret_access_key are required for aws');
  if (aws.security_groups?.length && aws.security_group_ids?.length) {
    throw new ClusterInputError('autoscale.aws: give security_groups or security_group_ids, not both');
  }
  if (aws.subnet_ids?.length && aws.availability_zones?.length) {
    throw new ClusterInputError('autoscale.aws: give subnet_ids or availability_zones, not both (a subnet fixes its zone)');
  }
  const tags = Object.keys(aws.tags ?? {}).length;
  if (tags > MAX_USER_TAGS) throw new ClusterInputError(`autoscale.aws.tags must hold at most ${MAX_USER_TAGS} tags after the merge, got ${tags}`);
  if (aws.eips?.length && m.rpi > 0 && m.runnersMin > 0) {
    const need = Math.ceil(m.runnersMin / m.rpi);
    if (need > aws.eips.length) {
      throw new ClusterInputError(
        `autoscale.aws.eips holds ${aws.eips.length} addresses but runners_min ${m.runnersMin} at ${m.rpi} runners per instance needs ${need} instances, each with its own address`,
      );
    }
  }
}
