import Router, { type RouterContext } from '@koa/router';
import {
  CONTAINER_DEFAULTS,
  DOCKER_DEFAULT_CAPS,
  isValidUser,
  normaliseCap,
  sortCaps,
  type ContainerPolicy,
} from '../../../lib/container-policy.ts';
import { isId } from '../../../lib/ids.ts';
import { IRONWORKER_VARIABLES, TEMPLATE_VARIABLES, UserDataError, checkTemplate } from '../../../cloud-config/render.ts';
import { HttpError, badRequest, notFound } from '../../errors.ts';
import {
  type AwsSettings,
  type BlockDeviceMapping,
  type ClusterDetail,
  type ClusterInstance,
  type ClusterPatch,
  type ClusterSecretsInput,
  type NewCluster,
} from '../../store/clusters.ts';
import { isOperator, requireUser } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import type { ClusterInput } from '../schema/clusters.ts';
import { ROUTER_OPTIONS, type ApiDeps, type ApiState } from '../state.ts';
import { flag, pagination } from '../validate.ts';
import { putOwn } from '../../../lib/record.ts';
import { clean, type Json } from '../present.ts';
import { loadRange, pageUrl, paging } from './queue.ts';

/**
 * The Clusters section of the IronWorker reference under /2/clusters, user-scoped: a user
 * sees their own clusters and those shared to them; only the owner changes one. Secrets
 * (AWS keys, Docker credentials) are sealed at rest by the store and never leave it through
 * here: replies say only whether each is set (`*_set`), and logs name fields, not values.
 */

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
export const MEMORY_DEFAULT = 512 * MiB;
export const DISK_DEFAULT = 10 * GiB;

type AwsInput = NonNullable<NonNullable<ClusterInput['autoscale']>['aws']>;
type ContainerInput = NonNullable<ClusterInput['container']>;

/** '' reads as absent, as in the reference's sample. */
const given = <T>(v: T | null | undefined | ''): v is T => v !== undefined && v !== null && v !== '';

/** A list without '' entries and duplicates, or undefined when absent. */
function listOf(v: (string | null)[] | null | undefined): string[] | undefined {
  if (!v) return undefined;
  return [...new Set(v.filter(given))];
}

/** The variables user data may use, IronWorker's first (as its documentation lists them), then Gantry's. */
const FILLED_IN = [...IRONWORKER_VARIABLES, ...TEMPLATE_VARIABLES.filter((v) => !IRONWORKER_VARIABLES.includes(v))]
  .map((v) => `{{.${v}}}`)
  .join(', ');

/**
 * A cluster's own user data must be a template that cloud-config renders at launch, so it is
 * checked by that renderer: a bad one is a 400 now, not a failed launch on every tick.
 */
export function checkUserData(s: string, field: string): void {
  try {
    checkTemplate(s);
  } catch (err) {
    if (!(err instanceof UserDataError)) throw err;
    if (err.code === 'unsupported_action' && err.unclosed) throw badRequest(`${field}: a "{{" is not closed by "}}"`);
    if (err.code === 'unknown_variable' || err.code === 'unsupported_action') {
      const actions = err.actions.map((a) => (a.length > 64 ? `${a.slice(0, 60)}…` : a));
      throw badRequest(
        `${field}: ${actions.join(', ')} ${actions.length > 1 ? 'are' : 'is'} not supported; only ${FILLED_IN} are filled in (Go template actions are not)`,
      );
    }
    throw badRequest(`${field}: ${err.message}`);
  }
}

/** Tags to set (on update, null removes one); reserved keys are refused. */
function tagsOf(v: AwsInput['tags'], field: string, update: boolean): Record<string, string | null> | undefined {
  if (!v) return undefined;
  const out: Record<string, string | null> = {};
  for (const [k, val] of Object.entries(v)) {
    if (/^(aws|gantry):/i.test(k)) throw badRequest(`${field}.${k}: keys starting with aws: or gantry: are reserved`);
    if (val === null && !update) throw badRequest(`${field}.${k} must be a string of at most 256 characters without control characters`);
    putOwn(out, k, val);
  }
  return out;
}

function profileOf(v: AwsInput['iam_instance_profile'], field: string): { name?: string; arn?: string } | undefined {
  if (!v) return undefined;
  if (given(v.name) && given(v.arn)) throw badRequest(`${field}: give name or arn, not both`);
  return given(v.name) ? { name: v.name } : given(v.arn) ? { arn: v.arn } : undefined;
}

/** Mappings as EC2 takes them: absent, '' and zero settings left out. */
function mappingsOf(v: AwsInput['block_device_mappings'], field: string): BlockDeviceMapping[] | undefined {
  if (!v) return undefined;
  return v.map((x, i) => {
    if (!given(x.device_name)) throw badRequest(`${field}[${i}].device_name is required`);
    const m: BlockDeviceMapping = { device_name: x.device_name };
    if (given(x.no_device)) m.no_device = x.no_device;
    if (given(x.virtual_name)) m.virtual_name = x.virtual_name;
    const e = x.ebs;
    if (e) {
      const ebs: NonNullable<BlockDeviceMapping['ebs']> = {};
      if (given(e.snapshot_id)) ebs.snapshot_id = e.snapshot_id;
      if (e.iops) ebs.iops = e.iops;
      if (e.volume_size) ebs.volume_size = e.volume_size;
      if (given(e.volume_type)) ebs.volume_type = e.volume_type;
      if (typeof e.encrypted === 'boolean') ebs.encrypted = e.encrypted;
      if (typeof e.delete_on_termination === 'boolean') ebs.delete_on_termination = e.delete_on_termination;
      if (Object.keys(ebs).length > 0) m.ebs = ebs;
    }
    return m;
  });
}

interface ParsedAws {
  /** Settings given (on update: to replace; null removes an optional one). */
  settings: NonNullable<ClusterPatch['aws']>;
  userData?: string | null;
  accessKeyId?: string;
  secretAccessKey?: string;
}

const REQUIRED_AWS = ['region', 'instance_type'] as const;
const PLAIN_AWS = ['region', 'instance_type', 'image_id', 'key_name'] as const;
const LIST_AWS = ['subnet_ids', 'availability_zones', 'security_groups', 'security_group_ids', 'eips'] as const;

/** `autoscale.aws`, already typed and bounded by the schema; on update, null removes optional fields. */
function awsOf(o: AwsInput, f: string, update: boolean): ParsedAws {
  const s: NonNullable<ClusterPatch['aws']> = {};
  const put = <K extends keyof AwsSettings>(k: K, v: AwsSettings[K] | undefined) => {
    if (v !== undefined) s[k] = v as never;
    else if (update && o[k] === null) {
      if ((REQUIRED_AWS as readonly string[]).includes(k)) throw badRequest(`${f}.${k} cannot be removed`);
      s[k] = null as never;
    }
  };
  for (const k of PLAIN_AWS) put(k, given(o[k]) ? o[k] : undefined);
  for (const k of LIST_AWS) put(k, listOf(o[k]));
  put('iam_instance_profile', profileOf(o.iam_instance_profile, `${f}.iam_instance_profile`));
  put('block_device_mappings', mappingsOf(o.block_device_mappings, `${f}.block_device_mappings`));
  const tags = tagsOf(o.tags, `${f}.tags`, update);
  if (tags) s.tags = tags;
  const out: ParsedAws = { settings: s };
  if (given(o.user_data)) {
    checkUserData(o.user_data, `${f}.user_data`);
    out.userData = o.user_data;
  } else if (update && 'user_data' in o) out.userData = null;
  if (given(o.access_key_id)) out.accessKeyId = o.access_key_id;
  if (given(o.secret_access_key)) out.secretAccessKey = o.secret_access_key;
  if (update && (o.access_key_id === null || o.secret_access_key === null)) {
    throw badRequest(`${f}.access_key_id and secret_access_key cannot be removed; give new values to replace them`);
  }
  return out;
}

const ALLOWED_CAPS = `${DOCKER_DEFAULT_CAPS.join(', ')} (Docker's default set; with or without CAP_, any case)`;

/**
 * `container`: the task containers' policy. Only the settings given change (cap_add as a
 * whole list); `user` null or "" is the image's own user.
 */
function containerOf(o: ContainerInput, f: string): Partial<ContainerPolicy> {
  const out: Partial<ContainerPolicy> = {};
  if (o.cap_add) {
    out.capAdd = sortCaps(
      o.cap_add.map((c, i) => {
        const n = normaliseCap(c);
        if (!n) throw badRequest(`${f}.cap_add[${i}]: ${JSON.stringify(c).slice(0, 40)} cannot be added; allowed: ${ALLOWED_CAPS}`);
        return n;
      }),
    );
  }
  if (typeof o.pids_limit === 'number') out.pidsLimit = o.pids_limit;
  if (typeof o.read_only_rootfs === 'boolean') out.readOnlyRootfs = o.read_only_rootfs;
  if (typeof o.tmp_size === 'number') out.tmpSizeMb = o.tmp_size / MiB;
  if (typeof o.nofile === 'number') out.nofile = o.nofile;
  if ('network' in o) out.network = given(o.network) ? o.network : CONTAINER_DEFAULTS.network;
  if ('user' in o) {
    if (!given(o.user)) out.user = null;
    else if (!isValidUser(o.user)) {
      throw badRequest(
        `${f}.user must be uid, uid:gid, name or name:group (ids up to 2147483647, names of up to 32 letters, digits, "_", "." or "-"; e.g. "1000:1000" or "nobody"), or null for the image's own user; got ${JSON.stringify(o.user.slice(0, 80))}`,
      );
    } else out.user = o.user;
  }
  return out;
}

type Common = Pick<ClusterInput, 'disable' | 'runners_min' | 'runners_max' | 'runners_per_instance' | 'docker_auth' | 'docker_email'>;

/**
 * A field of `autoscale` that clients also send at the top level (disable, runners_*,
 * docker_*): either place is read, not both.
 */
function autoscaleField<K extends keyof Common>(body: ClusterInput, as: Common | undefined, key: K): { v: Common[K]; has: boolean; field: string } {
  const inAs = as !== undefined && key in as;
  if (inAs && key in body) throw badRequest(`give ${key} in autoscale or at the top level, not both`);
  return inAs ? { v: as![key], has: true, field: `autoscale.${key}` } : { v: body[key], has: key in body, field: key };
}

export interface ParsedCluster {
  patch: ClusterPatch;
  secrets: ClusterSecretsInput;
  /** Names of the fields given (for logs: never values). */
  fields: string[];
}

/**
 * Turns a create or update body into the store's terms. The schema has already checked
 * every field's type and bounds; what is checked here is what it cannot say: rules between
 * fields, names the operator reserved, users in shared_to (read from the store), user data
 * (by cloud-config's renderer) and Docker credentials that must decode.
 */
export async function parseClusterBody(deps: ApiDeps, body: ClusterInput, o: { update: boolean; ownerId: string }): Promise<ParsedCluster> {
  const patch: ClusterPatch = {};
  const secrets: ClusterSecretsInput = {};
  if (given(body.name)) {
    const name = body.name;
    if (name === 'default' || deps.config.clusterMaxTimeouts[name] !== undefined) {
      throw badRequest(`name ${JSON.stringify(name)} is reserved for a cluster the operator runs`);
    }
    if (isId(name)) throw badRequest('name must not look like a cluster id (24 hex characters): tasks may name a cluster by id');
    patch.name = name;
  } else if (!o.update) throw badRequest('name is required: 1 to 64 letters, digits, ".", "_" or "-"');
  if (typeof body.memory === 'number') patch.memoryMb = body.memory / MiB;
  if ('disk' in body && 'disk_space' in body) throw badRequest('give disk or disk_space, not both');
  const disk = body.disk_space ?? body.disk;
  if (typeof disk === 'number') patch.diskBytes = disk;
  if (body.shared_to) {
    const ids = listOf(body.shared_to)!;
    for (const [i, id] of ids.entries()) {
      if (id === o.ownerId) throw badRequest(`shared_to[${i}] is the owner of the cluster`);
      if (!(await deps.store.accounts.findUser(id))) throw badRequest(`shared_to[${i}]: no user with id ${id}`);
    }
    patch.sharedTo = ids;
  } else if (body.shared_to === null && o.update) {
    patch.sharedTo = [];
  }
  if (body.container) {
    const container = containerOf(body.container, 'container');
    if (Object.keys(container).length > 0) patch.container = container;
  }
  const as = body.autoscale ?? undefined;
  if (as?.aws !== undefined) {
    if (as.aws === null) throw badRequest('autoscale.aws cannot be removed; delete the cluster, or set autoscale.disable to stop autoscaling');
    const aws = awsOf(as.aws, 'autoscale.aws', o.update);
    patch.aws = aws.settings;
    if (aws.userData !== undefined) patch.userData = aws.userData;
    if (aws.accessKeyId) secrets.awsAccessKeyId = aws.accessKeyId;
    if (aws.secretAccessKey) secrets.awsSecretAccessKey = aws.secretAccessKey;
  }
  const disable = autoscaleField(body, as, 'disable').v;
  if (typeof disable === 'boolean') patch.disable = disable;
  for (const [key, prop] of [
    ['runners_min', 'runnersMin'],
    ['runners_max', 'runnersMax'],
    ['runners_per_instance', 'runnersPerInstance'],
  ] as const) {
    const n = autoscaleField(body, as, key).v;
    if (typeof n === 'number') patch[prop] = n;
  }
  const auth = autoscaleField(body, as, 'docker_auth');
  if (given(auth.v)) {
    if (!Buffer.from(auth.v, 'base64').toString('utf8').includes(':')) {
      throw badRequest(`${auth.field} must be base64 of username:password (as in a Docker config's "auth")`);
    }
    secrets.dockerAuth = auth.v;
  } else if (o.update && auth.has) secrets.dockerAuth = null;
  const email = autoscaleField(body, as, 'docker_email');
  if (given(email.v)) secrets.dockerEmail = email.v;
  else if (o.update && email.has) secrets.dockerEmail = null;
  const fields = [...Object.keys(patch), ...Object.keys(secrets)];
  return { patch, secrets, fields };
}


export function presentInstance(i: ClusterInstance): Json {
  return clean({
    instance_id: i.instanceId,
    type: i.type,
    provider: i.provider,
    runners_total: i.runnersTotal,
    runners_available: i.runnersAvailable,
    version: i.version,
    subnet_id: i.subnetId,
    launched_at: i.launchedAt,
    live_at: i.liveAt,
    kill_at: i.killAt,
    terminated_at: i.terminatedAt,
    created_at: i.createdAt,
    updated_at: i.updatedAt,
  });
}

/** The list form (as the reference's List Clusters). */
export function presentClusterSummary(c: ClusterDetail): Json {
  return clean({
    id: c.id,
    name: c.name,
    user_id: c.userId,
    memory: c.memoryMb * MiB,
    disk_space: c.diskBytes,
    created_at: c.createdAt,
    updated_at: c.updatedAt,
  });
}

/** `container` with every setting, defaults included; `user` null is the image's own user. */
export function presentContainer(p: ContainerPolicy): Json {
  return {
    cap_add: p.capAdd,
    pids_limit: p.pidsLimit,
    read_only_rootfs: p.readOnlyRootfs,
    tmp_size: p.tmpSizeMb * MiB,
    user: p.user,
    nofile: p.nofile,
    network: p.network,
  };
}

/**
 * The full form (as Get Cluster). Only the owner and operators see sharing and autoscale
 * settings; no one sees a secret, only whether it is set.
 */
export function presentCluster(c: ClusterDetail, access: ClusterAccess, live?: { total: number; available: number; instances: ClusterInstance[] }): Json {
  const out: Json = {
    ...presentClusterSummary(c),
    runners_total: live?.total ?? 0,
    runners_available: live?.available ?? 0,
    machines: (live?.instances ?? []).filter((i) => i.type !== 'TERMINATE').map(presentInstance),
    // Shown to shared users too: it decides what their tasks may do.
    container: presentContainer(c.container),
  };
  if (access === 'shared') return out;
  out.shared_to = c.sharedTo;
  const autoscale: Json = {
    disable: c.disable,
    runners_min: c.runnersMin,
    runners_max: c.runnersMax,
    runners_per_instance: c.runnersPerInstance,
    docker_auth_set: c.secrets.dockerAuth,
    docker_email_set: c.secrets.dockerEmail,
  };
  if (c.provider) autoscale.provider = c.provider;
  if (c.aws) {
    autoscale.aws = clean({
      ...c.aws,
      user_data: c.userData,
      access_key_id_set: c.secrets.awsAccessKeyId,
      secret_access_key_set: c.secrets.awsSecretAccessKey,
    });
  }
  out.autoscale = autoscale;
  return out;
}

type Ctx = RouterContext<ApiState>;
/**
 * How a user sees a cluster: its owner, a user it is shared to, or an operator (who reads
 * every cluster's settings and may terminate its instances, but changes nothing else).
 */
type ClusterAccess = 'owner' | 'shared' | 'operator';

export function clustersRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  /**
   * The cluster in the path, if this user may see it (404 otherwise), or do `owner` to it
   * (403 for a shared user, and for an operator unless `operatorToo`).
   */
  const load = async (ctx: Ctx, owner?: string, operatorToo = false): Promise<{ cluster: ClusterDetail; access: ClusterAccess }> => {
    const id = ctx.params.clusterId ?? '';
    const { clusters } = ctx.state.deps.store;
    let got: { cluster: ClusterDetail; access: ClusterAccess } | undefined = isId(id) ? await clusters.getForUser(ctx.state.userId!, id) : undefined;
    // An operator reads any cluster (and changes only their own).
    if (!got && isId(id) && (await isOperator(ctx))) {
      const cluster = await clusters.detail(id);
      if (cluster) got = { cluster, access: 'operator' };
    }
    if (!got) throw notFound('Cluster not found');
    if (owner && got.access !== 'owner' && !(operatorToo && got.access === 'operator')) throw new HttpError(403, `Only the cluster's owner can ${owner}`, { code: 'forbidden' });
    return got;
  };

  const live = async (deps: ApiDeps, id: string) => {
    const s = await deps.store.clusters.stats(id);
    return s && { total: s.runnersTotal, available: s.runnersAvailable, instances: s.instances };
  };

  r.get('/clusters', requireUser, validated(ep('listClusters')), async (ctx) => {
    const q = ctx.state.query!;
    const every = flag(q, 'all');
    if (every && !(await isOperator(ctx))) throw new HttpError(403, 'all=true lists every cluster, for operators only (GANTRY_OPERATORS)', { code: 'forbidden' });
    const { clusters } = ctx.state.deps.store;
    const list = every ? await clusters.listEvery(pagination(q)) : await clusters.listForUser(ctx.state.userId!, pagination(q));
    ctx.body = { clusters: list.map(presentClusterSummary) };
  });

  r.post('/clusters', requireUser, validated(ep('createCluster')), async (ctx) => {
    const { deps, userId } = ctx.state;
    const body = ctx.state.body as ClusterInput;
    const { patch, secrets, fields } = await parseClusterBody(deps, body, { update: false, ownerId: userId! });
    const input: NewCluster = {
      name: patch.name!,
      memoryMb: patch.memoryMb ?? MEMORY_DEFAULT / MiB,
      diskBytes: patch.diskBytes ?? DISK_DEFAULT,
      aws: (patch.aws as AwsSettings | undefined) ?? null,
      userData: patch.userData ?? null,
      disable: patch.disable ?? false,
      runnersMin: patch.runnersMin ?? 0,
      runnersMax: patch.runnersMax ?? 0,
      runnersPerInstance: patch.runnersPerInstance ?? 0,
      sharedTo: patch.sharedTo ?? [],
      secrets,
      ...(patch.container ? { container: patch.container } : {}),
    };
    const { cluster, token } = await deps.store.clusters.createCluster(userId!, input);
    ctx.state.log.info({ clusterId: cluster.id, clusterName: cluster.name, fields }, 'cluster created');
    ctx.body = { msg: 'Cluster created', id: cluster.id, token, cluster: presentCluster(cluster, 'owner', await live(deps, cluster.id)) };
  });

  r.get('/clusters/:clusterId', requireUser, validated(ep('getCluster')), async (ctx) => {
    const { cluster, access } = await load(ctx);
    ctx.body = { cluster: presentCluster(cluster, access, await live(ctx.state.deps, cluster.id)) };
  });

  r.get('/clusters/:clusterId/stats', requireUser, validated(ep('getClusterStats')), async (ctx) => {
    const { cluster } = await load(ctx);
    const s = await ctx.state.deps.store.clusters.stats(cluster.id);
    if (!s) throw notFound('Cluster not found');
    ctx.body = {
      cluster: {
        id: cluster.id,
        name: cluster.name,
        ewma: Math.round(s.ewma * 100) / 100,
        queued: s.queued,
        runners_available: s.runnersAvailable,
        runners_total: s.runnersTotal,
        instances: s.instances.map(presentInstance),
      },
    };
  });

  // The cluster's recorded demand and fleet (Queue services): what its autoscaler saw.
  r.get('/clusters/:clusterId/load', requireUser, validated(ep('getClusterLoad')), async (ctx) => {
    const { cluster } = await load(ctx);
    const q = ctx.state.query!;
    const { started, ended } = loadRange(q, ctx.state.deps.clock.now());
    const p = paging(q);
    const { count, points } = await ctx.state.deps.store.queueLoad.clusterLoad(cluster.name, started, ended, p);
    const last = Math.ceil(count / p.perPage) - 1;
    ctx.body = {
      count,
      next: pageUrl(ctx, ctx.url, p.page + 1, p.perPage, count),
      previous: p.page > 0 ? pageUrl(ctx, ctx.url, Math.min(p.page - 1, last), p.perPage, count) : null,
      results: points.map((x) => ({ time: x.at.toISOString(), busy: x.busy, queued: x.queued, runners: x.runners, slots: x.slots, instances: x.instances, ewma: x.ewma })),
    };
  });

  r.put('/clusters/:clusterId', requireUser, validated(ep('updateCluster')), async (ctx) => {
    const { deps, userId } = ctx.state;
    const body = ctx.state.body as ClusterInput;
    await load(ctx, 'update it');
    const { patch, secrets, fields } = await parseClusterBody(deps, body, { update: true, ownerId: userId! });
    if (fields.length === 0) throw badRequest('Nothing to update: give at least one cluster field');
    const cluster = await deps.store.clusters.update(ctx.params.clusterId!, { ...patch, secrets });
    ctx.state.log.info({ clusterId: cluster.id, fields }, 'cluster updated');
    ctx.body = { msg: 'Cluster updated', cluster: presentCluster(cluster, 'owner', await live(deps, cluster.id)) };
  });

  r.delete('/clusters/:clusterId', requireUser, validated(ep('deleteCluster')), async (ctx) => {
    const { cluster } = await load(ctx, 'delete it');
    const out = await ctx.state.deps.store.clusters.softDelete(cluster.id);
    if (!out) throw notFound('Cluster not found');
    ctx.state.log.info({ clusterId: cluster.id, instances: out.instancesMarked.length, tasksCancelled: out.tasksCancelled }, 'cluster deleted');
    ctx.state.deps.hub.instancesChanged();
    ctx.body = { msg: 'Cluster deleted', instances_terminating: out.instancesMarked, tasks_cancelled: out.tasksCancelled };
  });

  r.post('/clusters/:clusterId/terminate', requireUser, validated(ep('terminateClusterInstances')), async (ctx) => {
    const { deps } = ctx.state;
    const body = ctx.state.body!;
    const { cluster } = await load(ctx, 'terminate its instances', true);
    const ids = (body as { instance_ids: string[] }).instance_ids;
    const out = await deps.store.clusters.markKill(cluster.id, ids);
    if (out.unknown.length > 0) {
      throw notFound(`No instance ${out.unknown.map((x) => JSON.stringify(x)).join(', ')} in this cluster; nothing was marked for termination`);
    }
    ctx.state.log.info({ clusterId: cluster.id, marked: out.marked, already: out.already }, 'instances marked KILL');
    deps.hub.instancesChanged();
    ctx.body = { msg: 'Instances scheduled for terminated', marked: out.marked, already: out.already };
  });

  r.post('/clusters/:clusterId/credentials', requireUser, validated(ep('rotateClusterToken')), async (ctx) => {
    const { cluster } = await load(ctx, 'rotate its runner token');
    const token = await ctx.state.deps.store.clusters.rotateToken(cluster.id);
    if (!token) throw notFound('Cluster not found');
    ctx.state.log.info({ clusterId: cluster.id }, 'cluster runner token rotated');
    ctx.body = { msg: 'Runner token rotated: runners holding the old token are refused from now on', id: cluster.id, token };
  });

  r.get('/clusters/:clusterId/credentials', requireUser, validated(ep('getClusterToken')), async (ctx) => {
    await load(ctx);
    throw new HttpError(405, 'Runner tokens are kept only as a hash and cannot be shown again; POST to this URL to rotate the token', {
      code: 'method_not_allowed',
      headers: { Allow: 'POST' },
    });
  });

  return r;
}
