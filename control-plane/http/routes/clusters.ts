import Router, { type RouterContext } from '@koa/router';
import {
  CONTAINER_LIMITS,
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
  MAX_USER_TAGS,
  type AwsSettings,
  type BlockDeviceMapping,
  type ClusterDetail,
  type ClusterInstance,
  type ClusterPatch,
  type ClusterSecretsInput,
  type NewCluster,
} from '../../store/clusters.ts';
import { requireUser } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { MAX_USER_DATA } from '../schema/clusters.ts';
import { ROUTER_OPTIONS, type ApiDeps, type ApiState } from '../state.ts';
import { CLUSTER_NAME, optInt, optString, pagination, type Obj } from '../validate.ts';
import { clean, type Json } from '../present.ts';

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

// Keys the API presents and clients may send back unchanged: read-only, ignored.
const READ_ONLY_TOP = ['id', 'user_id', 'cpu_share', 'created_at', 'updated_at', 'machines', 'runners_available', 'runners_total'];
const READ_ONLY_AUTOSCALE = ['provider', 'docker_auth_set', 'docker_email_set'];
const READ_ONLY_AWS = ['access_key_id_set', 'secret_access_key_set'];
const AUTOSCALE_KEYS = ['aws', 'disable', 'runners_min', 'runners_max', 'runners_per_instance', 'docker_auth', 'docker_email'];
const AWS_KEYS = [
  'region', 'access_key_id', 'secret_access_key', 'instance_type', 'image_id', 'tags', 'key_name', 'subnet_ids',
  'availability_zones', 'security_groups', 'security_group_ids', 'iam_instance_profile', 'block_device_mappings', 'user_data', 'eips',
];

function onlyKeys(o: Obj, allowed: string[], readOnly: string[], where: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k) && !readOnly.includes(k)) {
      throw badRequest(`${where}${k} is not a cluster field (known: ${allowed.join(', ')})`);
    }
  }
}

function obj(v: unknown, field: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badRequest(`${field} must be an object`);
  return v as Obj;
}

function optBool(o: Obj, key: string, field: string): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw badRequest(`${field} must be true or false`);
  return v;
}

/** A string matching `re` (described by `what`); '' reads as absent, as in the reference's sample. */
function optPattern(o: Obj, key: string, field: string, maxBytes: number, re: RegExp, what: string): string | undefined {
  const v = optString(o, key, field, maxBytes);
  if (v === undefined || v === '') return undefined;
  if (!re.test(v)) throw badRequest(`${field} must be ${what}, got ${JSON.stringify(v.slice(0, 80))}`);
  return v;
}

function optList(o: Obj, key: string, field: string, max: number, re: RegExp, what: string): string[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw badRequest(`${field} must be an array of ${what}`);
  const out: string[] = [];
  v.forEach((x, i) => {
    const s = optPattern({ x }, 'x', `${field}[${i}]`, 256, re, what);
    if (s !== undefined && !out.includes(s)) out.push(s);
  });
  if (out.length > max) throw badRequest(`${field} must hold at most ${max} entries, got ${out.length}`);
  return out;
}

const PRINTABLE = /^[\x21-\x7e]+$/;
const RE = {
  region: /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/,
  accessKeyId: /^[A-Z0-9]{16,128}$/,
  instanceType: /^[a-z][a-z0-9-]*\.[a-z0-9-]+$/,
  imageId: /^ami-[0-9a-f]{8,17}$/,
  subnet: /^subnet-[0-9a-f]{8,17}$/,
  zone: /^[a-z]{2}-[a-z0-9-]+[a-z]$/,
  sgId: /^sg-[0-9a-f]{8,17}$/,
  sgName: /^[\x20-\x7e]{1,255}$/,
  keyName: /^[\x20-\x7e]{1,255}$/,
  profileName: /^[\w+=,.@-]{1,128}$/,
  profileArn: /^arn:aws[\w-]*:iam::\d{12}:instance-profile\/[\w+=,.@/-]{1,1024}$/,
  ipv4: /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/,
  device: /^(\/dev\/)?[a-z][a-z0-9]{1,15}$/,
  virtualName: /^ephemeral\d{1,2}$/,
  snapshot: /^snap-[0-9a-f]{8,17}$/,
  volumeType: /^(standard|gp2|gp3|io1|io2|st1|sc1)$/,
  email: /^[^\s"'\\<>@]{1,64}@[^\s"'\\<>@]{1,189}$/,
  base64: /^[A-Za-z0-9+/]+={0,2}$/,
  tagKey: /^[^\x00-\x1f\x7f]{1,128}$/,
};

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

function parseTags(v: unknown, field: string, allowNull: boolean): Record<string, string | null> | undefined {
  if (v === undefined || v === null) return undefined;
  const o = obj(v, field);
  const out: Record<string, string | null> = {};
  const keys = Object.keys(o);
  if (keys.length > MAX_USER_TAGS) throw badRequest(`${field} must hold at most ${MAX_USER_TAGS} tags, got ${keys.length}`);
  for (const k of keys) {
    if (!RE.tagKey.test(k)) throw badRequest(`${field}: a tag key must be 1 to 128 characters without control characters`);
    if (/^(aws|gantry):/i.test(k)) throw badRequest(`${field}.${k}: keys starting with aws: or gantry: are reserved`);
    const val = o[k];
    if (val === null && allowNull) out[k] = null;
    else if (typeof val !== 'string' || val.length > 256 || /[\x00-\x1f\x7f]/.test(val)) {
      throw badRequest(`${field}.${k} must be a string of at most 256 characters without control characters${allowNull ? ' (or null to remove it)' : ''}`);
    } else out[k] = val;
  }
  return out;
}

function parseProfile(v: unknown, field: string): { name?: string; arn?: string } | undefined {
  if (v === undefined || v === null) return undefined;
  const o = obj(v, field);
  onlyKeys(o, ['name', 'arn'], [], `${field}.`);
  const name = optPattern(o, 'name', `${field}.name`, 128, RE.profileName, 'an instance profile name');
  const arn = optPattern(o, 'arn', `${field}.arn`, 2048, RE.profileArn, 'an instance profile ARN (arn:aws:iam::<account>:instance-profile/<name>)');
  if (name && arn) throw badRequest(`${field}: give name or arn, not both`);
  return name ? { name } : arn ? { arn } : undefined;
}

function parseMappings(v: unknown, field: string): BlockDeviceMapping[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw badRequest(`${field} must be an array of block device mappings`);
  if (v.length > 16) throw badRequest(`${field} must hold at most 16 mappings, got ${v.length}`);
  return v.map((x, i) => {
    const f = `${field}[${i}]`;
    const o = obj(x, f);
    onlyKeys(o, ['device_name', 'no_device', 'virtual_name', 'ebs'], [], `${f}.`);
    const device = optPattern(o, 'device_name', `${f}.device_name`, 32, RE.device, 'a device name like /dev/sdh or xvdh');
    if (!device) throw badRequest(`${f}.device_name is required`);
    const m: BlockDeviceMapping = { device_name: device };
    const noDevice = optString(o, 'no_device', `${f}.no_device`, 32);
    if (noDevice !== undefined && noDevice !== '') m.no_device = noDevice;
    const vn = optPattern(o, 'virtual_name', `${f}.virtual_name`, 16, RE.virtualName, 'ephemeral0 to ephemeral99');
    if (vn) m.virtual_name = vn;
    if (o.ebs !== undefined && o.ebs !== null) {
      const e = obj(o.ebs, `${f}.ebs`);
      onlyKeys(e, ['snapshot_id', 'iops', 'encrypted', 'delete_on_termination', 'volume_size', 'volume_type'], [], `${f}.ebs.`);
      const ebs: NonNullable<BlockDeviceMapping['ebs']> = {};
      const snap = optPattern(e, 'snapshot_id', `${f}.ebs.snapshot_id`, 32, RE.snapshot, 'a snapshot id (snap-…)');
      if (snap) ebs.snapshot_id = snap;
      const iops = optInt(e, 'iops', `${f}.ebs.iops`, 0, 256000);
      if (iops) ebs.iops = iops;
      const size = optInt(e, 'volume_size', `${f}.ebs.volume_size`, 0, 65536);
      if (size) ebs.volume_size = size;
      const type = optPattern(e, 'volume_type', `${f}.ebs.volume_type`, 16, RE.volumeType, 'one of standard, gp2, gp3, io1, io2, st1, sc1');
      if (type) ebs.volume_type = type;
      const enc = optBool(e, 'encrypted', `${f}.ebs.encrypted`);
      if (enc !== undefined) ebs.encrypted = enc;
      const del = optBool(e, 'delete_on_termination', `${f}.ebs.delete_on_termination`);
      if (del !== undefined) ebs.delete_on_termination = del;
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

/** `autoscale.aws`: every field typed and bounded; on update, null removes optional fields. */
function parseAws(o: Obj, f: string, update: boolean): ParsedAws {
  onlyKeys(o, AWS_KEYS, READ_ONLY_AWS, `${f}.`);
  const s: NonNullable<ClusterPatch['aws']> = {};
  const put = <K extends keyof AwsSettings>(k: K, v: AwsSettings[K] | undefined, required = false) => {
    if (v !== undefined) s[k] = v as never;
    else if (update && o[k] === null) {
      if (required) throw badRequest(`${f}.${k} cannot be removed`);
      s[k] = null as never;
    }
  };
  put('region', optPattern(o, 'region', `${f}.region`, 32, RE.region, 'an AWS region like us-east-1'), true);
  put('instance_type', optPattern(o, 'instance_type', `${f}.instance_type`, 64, RE.instanceType, 'an EC2 instance type like c5.xlarge'), true);
  put('image_id', optPattern(o, 'image_id', `${f}.image_id`, 32, RE.imageId, 'an AMI id (ami-…)'));
  put('key_name', optPattern(o, 'key_name', `${f}.key_name`, 255, RE.keyName, 'a key pair name of printable ASCII'));
  put('subnet_ids', optList(o, 'subnet_ids', `${f}.subnet_ids`, 64, RE.subnet, 'subnet ids (subnet-…)'));
  put('availability_zones', optList(o, 'availability_zones', `${f}.availability_zones`, 32, RE.zone, 'availability zones like us-east-1a'));
  put('security_groups', optList(o, 'security_groups', `${f}.security_groups`, 16, RE.sgName, 'security group names'));
  put('security_group_ids', optList(o, 'security_group_ids', `${f}.security_group_ids`, 16, RE.sgId, 'security group ids (sg-…)'));
  put('eips', optList(o, 'eips', `${f}.eips`, 256, RE.ipv4, 'Elastic IP addresses (IPv4)'));
  put('iam_instance_profile', parseProfile(o.iam_instance_profile, `${f}.iam_instance_profile`));
  put('block_device_mappings', parseMappings(o.block_device_mappings, `${f}.block_device_mappings`));
  const tags = parseTags(o.tags, `${f}.tags`, update);
  if (tags) s.tags = tags;
  const out: ParsedAws = { settings: s };
  if ('user_data' in o) {
    const ud = optString(o, 'user_data', `${f}.user_data`, MAX_USER_DATA);
    if (ud) checkUserData(ud, `${f}.user_data`);
    if (ud) out.userData = ud;
    else if (update) out.userData = null;
  }
  const key = optString(o, 'access_key_id', `${f}.access_key_id`, 128);
  if (key !== undefined && key !== '') {
    if (!RE.accessKeyId.test(key)) throw badRequest(`${f}.access_key_id must be an AWS access key id (16 to 128 capital letters and digits)`);
    out.accessKeyId = key;
  }
  const secret = optString(o, 'secret_access_key', `${f}.secret_access_key`, 256);
  if (secret !== undefined && secret !== '') {
    if (!PRINTABLE.test(secret)) throw badRequest(`${f}.secret_access_key must be printable ASCII without spaces`);
    out.secretAccessKey = secret;
  }
  if (update && (o.access_key_id === null || o.secret_access_key === null)) {
    throw badRequest(`${f}.access_key_id and secret_access_key cannot be removed; give new values to replace them`);
  }
  return out;
}

const CONTAINER_KEYS = ['cap_add', 'pids_limit', 'read_only_rootfs', 'tmp_size', 'user', 'nofile'];
const ALLOWED_CAPS = `${DOCKER_DEFAULT_CAPS.join(', ')} (Docker's default set; with or without CAP_, any case)`;

/**
 * `container`: the task containers' policy, each setting typed and bounded. Only the
 * settings given change (cap_add as a whole list); `user` null or "" is the image's own user.
 */
function parseContainer(o: Obj, f: string): Partial<ContainerPolicy> {
  onlyKeys(o, CONTAINER_KEYS, [], `${f}.`);
  const out: Partial<ContainerPolicy> = {};
  if (o.cap_add !== undefined && o.cap_add !== null) {
    if (!Array.isArray(o.cap_add)) throw badRequest(`${f}.cap_add must be an array of capability names from ${ALLOWED_CAPS}`);
    if (o.cap_add.length > 64) throw badRequest(`${f}.cap_add must hold at most 64 entries, got ${o.cap_add.length}`);
    out.capAdd = sortCaps(
      o.cap_add.map((c: unknown, i) => {
        const n = typeof c === 'string' ? normaliseCap(c) : undefined;
        if (!n) throw badRequest(`${f}.cap_add[${i}]: ${JSON.stringify(c)?.slice(0, 40)} cannot be added; allowed: ${ALLOWED_CAPS}`);
        return n;
      }),
    );
  }
  const L = CONTAINER_LIMITS;
  const pids = optInt(o, 'pids_limit', `${f}.pids_limit`, L.pidsLimit.min, L.pidsLimit.max);
  if (pids !== undefined) out.pidsLimit = pids;
  const ro = optBool(o, 'read_only_rootfs', `${f}.read_only_rootfs`);
  if (ro !== undefined) out.readOnlyRootfs = ro;
  const tmp = optInt(o, 'tmp_size', `${f}.tmp_size`, L.tmpSizeMb.min * MiB, L.tmpSizeMb.max * MiB);
  if (tmp !== undefined) {
    if (tmp % MiB !== 0) throw badRequest(`${f}.tmp_size is in bytes and must be a whole number of MiB (a multiple of ${MiB}), got ${tmp}`);
    out.tmpSizeMb = tmp / MiB;
  }
  const nofile = optInt(o, 'nofile', `${f}.nofile`, L.nofile.min, L.nofile.max);
  if (nofile !== undefined) out.nofile = nofile;
  if ('user' in o) {
    const user = optString(o, 'user', `${f}.user`, 65);
    if (user === undefined || user === '') out.user = null;
    else if (!isValidUser(user)) {
      throw badRequest(
        `${f}.user must be uid, uid:gid, name or name:group (ids up to 2147483647, names of up to 32 letters, digits, "_", "." or "-"; e.g. "1000:1000" or "nobody"), or null for the image's own user; got ${JSON.stringify(user.slice(0, 80))}`,
      );
    } else out.user = user;
  }
  return out;
}

/**
 * A field of `autoscale` that clients also send at the top level (disable, runners_*,
 * docker_*): either place is read, not both.
 */
function autoscaleField(body: Obj, as: Obj | undefined, key: string): { o: Obj; field: string } {
  const inAs = as !== undefined && key in as;
  if (inAs && key in body) throw badRequest(`give ${key} in autoscale or at the top level, not both`);
  return inAs ? { o: as!, field: `autoscale.${key}` } : { o: body, field: key };
}

export interface ParsedCluster {
  patch: ClusterPatch;
  secrets: ClusterSecretsInput;
  /** Names of the fields given (for logs: never values). */
  fields: string[];
}

/** Parses a create or update body. Nothing is read from the store here except users in shared_to. */
export async function parseClusterBody(deps: ApiDeps, body: Obj, o: { update: boolean; ownerId: string }): Promise<ParsedCluster> {
  onlyKeys(body, ['name', 'memory', 'disk', 'disk_space', 'shared_to', 'autoscale', 'container', ...AUTOSCALE_KEYS.filter((k) => k !== 'aws')], READ_ONLY_TOP, '');
  const patch: ClusterPatch = {};
  const secrets: ClusterSecretsInput = {};
  const name = optString(body, 'name', 'name', 64);
  if (name !== undefined || !o.update) {
    if (!name) throw badRequest('name is required: 1 to 64 letters, digits, ".", "_" or "-"');
    if (!CLUSTER_NAME.test(name)) throw badRequest(`name must be 1 to 64 letters, digits, ".", "_" or "-", got ${JSON.stringify(name)}`);
    if (name === 'default' || deps.config.clusterMaxTimeouts[name] !== undefined) {
      throw badRequest(`name ${JSON.stringify(name)} is reserved for a cluster the operator runs`);
    }
    if (isId(name)) throw badRequest('name must not look like a cluster id (24 hex characters): tasks may name a cluster by id');
    patch.name = name;
  }
  const memory = optInt(body, 'memory', 'memory', 16 * MiB, 1024 * GiB);
  if (memory !== undefined) {
    if (memory % MiB !== 0) throw badRequest(`memory is in bytes and must be a whole number of MiB (a multiple of ${MiB}), got ${memory}`);
    patch.memoryMb = memory / MiB;
  }
  if ('disk' in body && 'disk_space' in body) throw badRequest('give disk or disk_space, not both');
  const diskKey = 'disk_space' in body ? 'disk_space' : 'disk';
  const disk = optInt(body, diskKey, diskKey, GiB, 64 * 1024 * GiB);
  if (disk !== undefined) patch.diskBytes = disk;
  if (body.shared_to !== undefined && body.shared_to !== null) {
    const ids = optList(body, 'shared_to', 'shared_to', 100, /^[0-9a-f]{24}$/, 'user ids');
    for (const [i, id] of (ids ?? []).entries()) {
      if (id === o.ownerId) throw badRequest(`shared_to[${i}] is the owner of the cluster`);
      if (!(await deps.store.accounts.findUser(id))) throw badRequest(`shared_to[${i}]: no user with id ${id}`);
    }
    patch.sharedTo = ids ?? [];
  } else if (body.shared_to === null && o.update) {
    patch.sharedTo = [];
  }
  if (body.container !== undefined && body.container !== null) {
    const container = parseContainer(obj(body.container, 'container'), 'container');
    if (Object.keys(container).length > 0) patch.container = container;
  }
  const as = body.autoscale === undefined || body.autoscale === null ? undefined : obj(body.autoscale, 'autoscale');
  if (as) onlyKeys(as, AUTOSCALE_KEYS, READ_ONLY_AUTOSCALE, 'autoscale.');
  if (as?.aws !== undefined) {
    if (as.aws === null) throw badRequest('autoscale.aws cannot be removed; delete the cluster, or set autoscale.disable to stop autoscaling');
    const aws = parseAws(obj(as.aws, 'autoscale.aws'), 'autoscale.aws', o.update);
    patch.aws = aws.settings;
    if (aws.userData !== undefined) patch.userData = aws.userData;
    if (aws.accessKeyId) secrets.awsAccessKeyId = aws.accessKeyId;
    if (aws.secretAccessKey) secrets.awsSecretAccessKey = aws.secretAccessKey;
  }
  const f = (k: string) => autoscaleField(body, as, k);
  const dis = f('disable');
  const disable = optBool(dis.o, 'disable', dis.field);
  if (disable !== undefined) patch.disable = disable;
  for (const [key, max, prop] of [
    ['runners_min', 100000, 'runnersMin'],
    ['runners_max', 100000, 'runnersMax'],
    ['runners_per_instance', 1024, 'runnersPerInstance'],
  ] as const) {
    const x = f(key);
    const n = optInt(x.o, key, x.field, 0, max);
    if (n !== undefined) patch[prop] = n;
  }
  const da = f('docker_auth');
  const auth = optString(da.o, 'docker_auth', da.field, 4096);
  if (auth) {
    const decoded = RE.base64.test(auth) ? Buffer.from(auth, 'base64').toString('utf8') : '';
    if (!decoded.includes(':')) throw badRequest(`${da.field} must be base64 of username:password (as in a Docker config's "auth")`);
    secrets.dockerAuth = auth;
  } else if (o.update && (auth === '' || da.o.docker_auth === null)) secrets.dockerAuth = null;
  const de = f('docker_email');
  const email = optString(de.o, 'docker_email', de.field, 254);
  if (email) {
    if (!RE.email.test(email)) throw badRequest(`${de.field} must be an email address without spaces or quotes`);
    secrets.dockerEmail = email;
  } else if (o.update && (email === '' || de.o.docker_email === null)) secrets.dockerEmail = null;
  const fields = [...Object.keys(patch), ...Object.keys(secrets)];
  return { patch, secrets, fields };
}


export function presentInstance(i: ClusterInstance): Json {
  return clean({
    instance_id: i.instance_id,
    type: i.type,
    provider: i.provider,
    runners_total: i.runners_total,
    runners_available: i.runners_available,
    version: i.version,
    subnet_id: i.subnet_id,
    launched_at: i.launched_at,
    live_at: i.live_at,
    kill_at: i.kill_at,
    terminated_at: i.terminated_at,
    created_at: i.created_at,
    updated_at: i.updated_at,
  });
}

/** The list form (as the reference's List Clusters). */
export function presentClusterSummary(c: ClusterDetail): Json {
  return clean({
    id: c.id,
    name: c.name,
    user_id: c.user_id,
    memory: c.memory_mb * MiB,
    disk_space: c.disk_bytes,
    created_at: c.created_at,
    updated_at: c.updated_at,
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
  };
}

/**
 * The full form (as Get Cluster). Only the owner sees sharing and autoscale settings; no
 * one sees a secret, only whether it is set.
 */
export function presentCluster(c: ClusterDetail, access: 'owner' | 'shared', live?: { total: number; available: number; instances: ClusterInstance[] }): Json {
  const out: Json = {
    ...presentClusterSummary(c),
    runners_total: live?.total ?? 0,
    runners_available: live?.available ?? 0,
    machines: (live?.instances ?? []).filter((i) => i.type !== 'TERMINATE').map(presentInstance),
    // Shown to shared users too: it decides what their tasks may do.
    container: presentContainer(c.container),
  };
  if (access !== 'owner') return out;
  out.shared_to = c.shared_to;
  const autoscale: Json = {
    disable: c.disable,
    runners_min: c.runners_min,
    runners_max: c.runners_max,
    runners_per_instance: c.runners_per_instance,
    docker_auth_set: c.secrets.docker_auth,
    docker_email_set: c.secrets.docker_email,
  };
  if (c.provider) autoscale.provider = c.provider;
  if (c.aws) {
    autoscale.aws = clean({
      ...c.aws,
      user_data: c.user_data,
      access_key_id_set: c.secrets.aws_access_key_id,
      secret_access_key_set: c.secrets.aws_secret_access_key,
    });
  }
  out.autoscale = autoscale;
  return out;
}

type Ctx = RouterContext<ApiState>;

export function clustersRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  /** The cluster in the path, if this user may see it (404 otherwise), or change it (403 for a shared user). */
  const load = async (ctx: Ctx, owner?: string) => {
    const id = ctx.params.clusterId ?? '';
    const got = isId(id) ? await ctx.state.deps.store.clusters.getForUser(ctx.state.userId!, id) : undefined;
    if (!got) throw notFound('Cluster not found');
    if (owner && got.access !== 'owner') throw new HttpError(403, `Only the cluster's owner can ${owner}`, { code: 'forbidden' });
    return got;
  };

  const live = async (deps: ApiDeps, id: string) => {
    const s = await deps.store.clusters.stats(id);
    return s && { total: s.runners_total, available: s.runners_available, instances: s.instances };
  };

  r.get('/clusters', requireUser, validated(ep('listClusters')), async (ctx) => {
    const list = await ctx.state.deps.store.clusters.listForUser(ctx.state.userId!, pagination(ctx.state.query!));
    ctx.body = { clusters: list.map(presentClusterSummary) };
  });

  r.post('/clusters', requireUser, validated(ep('createCluster')), async (ctx) => {
    const { deps, userId } = ctx.state;
    const body = ctx.state.body!;
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
    ctx.state.log.info({ clusterId: cluster.id, name: cluster.name, fields }, 'cluster created');
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
        runners_available: s.runners_available,
        runners_total: s.runners_total,
        instances: s.instances.map(presentInstance),
      },
    };
  });

  r.put('/clusters/:clusterId', requireUser, validated(ep('updateCluster')), async (ctx) => {
    const { deps, userId } = ctx.state;
    const body = ctx.state.body!;
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
    const { cluster } = await load(ctx, 'terminate its instances');
    const ids = body.instance_ids;
    if (!Array.isArray(ids) || ids.length === 0) throw badRequest('instance_ids is required: an array of 1 to 1000 instance ids');
    if (ids.length > 1000) throw badRequest(`instance_ids must hold at most 1000 ids, got ${ids.length}`);
    ids.forEach((x, i) => {
      if (typeof x !== 'string' || !/^[\x21-\x7e]{1,128}$/.test(x)) throw badRequest(`instance_ids[${i}] must be an instance id (1 to 128 printable characters)`);
    });
    const out = await deps.store.clusters.markKill(cluster.id, ids as string[]);
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
