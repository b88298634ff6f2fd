import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { CONTAINER_LIMITS, DOCKER_DEFAULT_CAPS, NETWORK_PATTERN } from '../../../lib/container-policy.ts';
import { MAX_USER_TAGS } from '../../store/clusters.ts';
import { AuthQuery, Batch, CLUSTER_NAME_PATTERN, Flag, OAuthQuery, Paging } from './common.ts';
import { endpoint } from './endpoint.ts';
import { Bool, DateTime, Dict, ErrorBody, Id, ID_PATTERN, Int, List, Obj, OneOf, Reply, Str } from './kit.ts';
import { TEMPLATE_VARIABLES, USER_DATA_MAX_BYTES } from '../../../cloud-config/render.ts';

/**
 * The Clusters section under /2/clusters. Cluster bodies refuse unknown fields (a typo in an
 * autoscaling setting must not pass silently); the fields the API presents may be sent back
 * unchanged and are ignored (`readOnly`).
 */

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** EC2's limit on user data, before base64. */
export const MAX_USER_DATA = USER_DATA_MAX_BYTES;

/** Byte sizes the store keeps in MiB. */
const WHOLE_MIB = { multipleOf: MiB, message: { multipleOf: `{field} is in bytes and must be a whole number of MiB (a multiple of ${MiB}), got {value}` } };

const ro = (s: TSchema) => ({ ...s, readOnly: true }) as TSchema;
const RO = () => ro(Type.Unsafe({}));
/** A string matching `pattern`; '' reads as absent (as in the reference's sample). */
const Pat = (maxBytes: number, pattern: string, describe: string, nullable = true) =>
  Str<true>(maxBytes, { nullable: nullable as true, pattern: `^$|${pattern}`, describe });
/** A list of such strings (duplicates dropped). */
const Strings = (max: number, pattern: string, describe: string) =>
  List(Str(256, { pattern: `^$|${pattern}`, describe }), { max, nullable: true, describe: `an array of ${describe}` });

const NO_CONTROL = '^[^\\x00-\\x1f\\x7f]*$';

const Ebs = Obj(
  {
    snapshot_id: Pat(32, '^snap-[0-9a-f]{8,17}$', 'a snapshot id (snap-…)'),
    iops: Int(0, 256000, { nullable: true }),
    encrypted: Bool({ nullable: true }),
    delete_on_termination: Bool({ nullable: true }),
    volume_size: Int(0, 65536, { nullable: true, description: 'GiB' }),
    volume_type: Pat(16, '^(standard|gp2|gp3|io1|io2|st1|sc1)$', 'one of standard, gp2, gp3, io1, io2, st1, sc1'),
  },
  { additional: false, what: 'block device mapping', nullable: true },
);

const Aws = Obj(
  {
    region: Pat(32, '^[a-z]{2}(-[a-z]+)+-\\d{1,2}$', 'an AWS region like us-east-1'),
    access_key_id: Str(128, { nullable: true, pattern: '^$|^[A-Z0-9]{16,128}$', describe: 'an AWS access key id (16 to 128 capital letters and digits)', description: 'write-only: replies say access_key_id_set' }),
    secret_access_key: Str(256, { nullable: true, pattern: '^$|^[\\x21-\\x7e]+$', describe: 'printable ASCII without spaces', description: 'write-only: replies say secret_access_key_set' }),
    instance_type: Pat(64, '^[a-z][a-z0-9-]*\\.[a-z0-9-]+$', 'an EC2 instance type like c5.xlarge'),
    image_id: Pat(32, '^ami-[0-9a-f]{8,17}$', 'an AMI id (ami-…)'),
    tags: Dict(
      Str<true>(256, {
        nullable: true,
        pattern: NO_CONTROL,
        describe: 'a string of at most 256 characters without control characters',
        message: { type: '{field} must be a string of at most 256 characters without control characters (or null to remove it, on update)' },
      }),
      {
      nullable: true,
      maxProperties: MAX_USER_TAGS,
      message: { maxProperties: `{field} must hold at most ${MAX_USER_TAGS} tags, got {count}` },
      keyPattern: '^[^\\x00-\\x1f\\x7f]{1,128}$',
      keyDescribe: 'a tag key of 1 to 128 characters without control characters',
      description: 'instance tags; keys starting with aws: or gantry: are reserved; on update, null removes a tag',
      },
    ),
    key_name: Pat(255, '^[\\x20-\\x7e]{1,255}$', 'a key pair name of printable ASCII'),
    subnet_ids: Strings(64, '^subnet-[0-9a-f]{8,17}$', 'subnet ids (subnet-…)'),
    availability_zones: Strings(32, '^[a-z]{2}-[a-z0-9-]+[a-z]$', 'availability zones like us-east-1a'),
    security_groups: Strings(16, '^[\\x20-\\x7e]{1,255}$', 'security group names'),
    security_group_ids: Strings(16, '^sg-[0-9a-f]{8,17}$', 'security group ids (sg-…)'),
    iam_instance_profile: Obj(
      {
        name: Pat(128, '^[\\w+=,.@-]{1,128}$', 'an instance profile name'),
        arn: Pat(2048, '^arn:aws[\\w-]*:iam::\\d{12}:instance-profile\\/[\\w+=,.@/-]{1,1024}$', 'an instance profile ARN (arn:aws:iam::<account>:instance-profile/<name>)'),
      },
      { additional: false, what: 'instance profile', nullable: true },
    ),
    block_device_mappings: List(
      Obj(
        {
          device_name: Pat(32, '^(\\/dev\\/)?[a-z][a-z0-9]{1,15}$', 'a device name like /dev/sdh or xvdh', false),
          no_device: Str(32, { nullable: true }),
          virtual_name: Pat(16, '^ephemeral\\d{1,2}$', 'ephemeral0 to ephemeral99'),
          ebs: Ebs,
        },
        { additional: false, what: 'block device mapping', required: ['device_name'] },
      ),
      { max: 16, nullable: true, describe: 'an array of block device mappings' },
    ),
    user_data: Str(MAX_USER_DATA, { nullable: true, description: `user data for new instances (${TEMPLATE_VARIABLES.map((v) => `{{.${v}}}`).join(', ')} are filled in); default: the Flatcar cloud-config that starts the runner` }),
    eips: Strings(256, '^(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)(\\.(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)){3}$', 'Elastic IP addresses (IPv4)'),
    access_key_id_set: RO(),
    secret_access_key_set: RO(),
  },
  { additional: false, what: 'cluster', nullable: true, description: 'EC2 settings; null is refused on update (delete the cluster, or set disable)' },
);

const AutoscaleCommon = {
  disable: Bool({ nullable: true, description: 'stop autoscaling (instances stay)' }),
  runners_min: Int(0, 100000, { nullable: true }),
  runners_max: Int(0, 100000, { nullable: true }),
  runners_per_instance: Int(0, 1024, { nullable: true }),
  // Neither message repeats the value: both are write-only secrets.
  docker_auth: Str(4096, {
    nullable: true,
    pattern: '^$|^[A-Za-z0-9+/]+={0,2}$',
    message: { pattern: `{field} must be base64 of username:password (as in a Docker config's "auth")` },
    description: 'base64 of username:password for the image registry (write-only: replies say docker_auth_set)',
  }),
  docker_email: Str(254, {
    nullable: true,
    pattern: `^$|^[^\\s"'\\\\<>@]{1,64}@[^\\s"'\\\\<>@]{1,189}$`,
    message: { pattern: '{field} must be an email address without spaces or quotes' },
    description: 'write-only: replies say docker_email_set',
  }),
};

const Container = Obj(
  {
    cap_add: List(Str(64), {
      max: 64,
      nullable: true,
      describe: `an array of capability names from ${DOCKER_DEFAULT_CAPS.join(', ')}`,
      description: "capabilities added back after all are dropped: only from Docker's default set, with or without CAP_, any case",
    }),
    pids_limit: Int(CONTAINER_LIMITS.pidsLimit.min, CONTAINER_LIMITS.pidsLimit.max, { nullable: true, description: 'most processes and threads at once (default 1024)' }),
    read_only_rootfs: Bool({ nullable: true, description: 'read-only root filesystem with a writable tmpfs /tmp (default false)' }),
    tmp_size: Int(CONTAINER_LIMITS.tmpSizeMb.min * MiB, CONTAINER_LIMITS.tmpSizeMb.max * MiB, { nullable: true, ...WHOLE_MIB, description: 'bytes of the /tmp tmpfs when the root filesystem is read-only, a whole number of MiB (default 64 MiB)' }),
    user: Str(65, { nullable: true, description: "uid, uid:gid, name or name:group; null: the image's own user" }),
    nofile: Int(CONTAINER_LIMITS.nofile.min, CONTAINER_LIMITS.nofile.max, { nullable: true, description: 'open files per process, soft and hard (default 4096)' }),
    network: Str(128, {
      nullable: true,
      pattern: `^$|${NETWORK_PATTERN}`,
      describe: "none, bridge, host or a Docker network's name (letters, digits, \"_\", \".\" or \"-\")",
      description:
        "the network task containers join: bridge (default: the engine's default bridge, outbound network as with docker run), none (loopback only), host (the host's network: no isolation, tasks reach the runner's and the host's services), or a network made on the runners' engines; null or \"\": bridge. A runner's GANTRY_RUNNER_NETWORK overrides it",
    }),
  },
  { additional: false, what: 'container', nullable: true, description: "what the cluster's task containers may do" },
);

/** A cluster body, for create and update (on update only the fields given change; null removes an optional one). */
export const ClusterBody = Obj(
  {
    name: Str(64, { nullable: true, pattern: CLUSTER_NAME_PATTERN, describe: '1 to 64 letters, digits, ".", "_" or "-"' }),
    memory: Int(16 * MiB, 1024 * GiB, { nullable: true, ...WHOLE_MIB, description: 'bytes of memory per task, a whole number of MiB (default 512 MiB)' }),
    disk: Int(GiB, 64 * 1024 * GiB, { nullable: true, description: 'bytes of disk per instance (default 10 GiB)' }),
    disk_space: Int(GiB, 64 * 1024 * GiB, { nullable: true, description: 'the same as disk' }),
    shared_to: List(Str(24, { pattern: ID_PATTERN, describe: 'user ids' }), { max: 100, nullable: true, describe: 'an array of user ids', description: 'users who may queue tasks onto the cluster' }),
    autoscale: Obj(
      { aws: Aws, ...AutoscaleCommon, provider: RO(), docker_auth_set: RO(), docker_email_set: RO() },
      { additional: false, what: 'cluster', nullable: true },
    ),
    ...AutoscaleCommon,
    container: Container,
    id: RO(),
    user_id: RO(),
    cpu_share: RO(),
    created_at: RO(),
    updated_at: RO(),
    machines: RO(),
    runners_available: RO(),
    runners_total: RO(),
  },
  { additional: false, what: 'cluster' },
);
/** A cluster body as it reaches the handler: every field typed and bounded by the schema. */
export type ClusterInput = Static<typeof ClusterBody>;

const Instance = Reply(
  {
    instance_id: Type.String(),
    type: OneOf(['ADD', 'LIVE', 'KILL', 'TERMINATE'] as const),
    provider: OneOf(['ec2', 'local'] as const),
    runners_total: Type.Integer({ minimum: 0 }),
    runners_available: Type.Integer({ minimum: 0 }),
    version: Type.String(),
    subnet_id: Type.String(),
    launched_at: DateTime(),
    live_at: DateTime(),
    kill_at: DateTime(),
    terminated_at: DateTime(),
    created_at: DateTime(),
    updated_at: DateTime(),
  },
  ['version', 'subnet_id', 'launched_at', 'live_at', 'kill_at', 'terminated_at'],
  { title: 'ClusterInstance' },
);

const SummaryProps = {
  id: Id(),
  name: Type.String(),
  user_id: Id(),
  memory: Type.Integer({ minimum: 0 }),
  disk_space: Type.Integer({ minimum: 0 }),
  created_at: DateTime(),
  updated_at: DateTime(),
};
const ClusterSummary = Reply(SummaryProps, [], { title: 'ClusterSummary' });

const AwsOut = Type.Object(
  {
    region: Type.String(),
    instance_type: Type.String(),
    image_id: Type.Optional(Type.String()),
    tags: Type.Optional(Type.Record(Type.String(), Type.String())),
    key_name: Type.Optional(Type.String()),
    subnet_ids: Type.Optional(Type.Array(Type.String())),
    availability_zones: Type.Optional(Type.Array(Type.String())),
    security_groups: Type.Optional(Type.Array(Type.String())),
    security_group_ids: Type.Optional(Type.Array(Type.String())),
    iam_instance_profile: Type.Optional(Type.Object({ name: Type.Optional(Type.String()), arn: Type.Optional(Type.String()) }, { additionalProperties: false })),
    block_device_mappings: Type.Optional(Type.Array(Type.Record(Type.String(), Type.Unknown()))),
    eips: Type.Optional(Type.Array(Type.String())),
    user_data: Type.Optional(Type.String()),
    access_key_id_set: Type.Boolean(),
    secret_access_key_set: Type.Boolean(),
  },
  { additionalProperties: false },
);

const ContainerOut = Type.Object(
  {
    cap_add: Type.Array(OneOf(DOCKER_DEFAULT_CAPS)),
    pids_limit: Type.Integer(),
    read_only_rootfs: Type.Boolean(),
    tmp_size: Type.Integer(),
    user: Type.Union([Type.String(), Type.Null()]),
    nofile: Type.Integer(),
    network: Type.String(),
  },
  { additionalProperties: false },
);

const Cluster = Reply(
  {
    ...SummaryProps,
    runners_total: Type.Integer({ minimum: 0 }),
    runners_available: Type.Integer({ minimum: 0 }),
    machines: Type.Array(Instance),
    shared_to: Type.Array(Id()),
    container: ContainerOut,
    autoscale: Type.Object(
      {
        disable: Type.Boolean(),
        runners_min: Type.Integer({ minimum: 0 }),
        runners_max: Type.Integer({ minimum: 0 }),
        runners_per_instance: Type.Integer({ minimum: 0 }),
        docker_auth_set: Type.Boolean(),
        docker_email_set: Type.Boolean(),
        provider: Type.Optional(OneOf(['ec2', 'local'] as const)),
        aws: Type.Optional(AwsOut),
      },
      { additionalProperties: false },
    ),
  },
  ['shared_to', 'autoscale', 'container'],
  { title: 'Cluster', description: 'sharing and autoscale settings are shown to the owner only; secrets never, only whether each is set' },
);

const errors = {
  400: { description: 'invalid input: the message names the field and the limit', schema: ErrorBody },
  401: { description: 'no valid OAuth token', schema: ErrorBody },
  403: { description: "only the cluster's owner may do this, or a quota is reached", schema: ErrorBody },
  404: { description: 'no such cluster (or not visible to this user)', schema: ErrorBody },
};
const bodyErrors = {
  406: { description: 'the body is not sent as application/json', schema: ErrorBody },
  409: { description: 'the name is taken, or the change conflicts with the cluster state', schema: ErrorBody },
  413: { description: 'the body is larger than the limit', schema: ErrorBody },
};
const ClusterParams = { clusterId: Id('the cluster id') };
const maxClusterBody = (c: { maxJsonBody: number }) => Math.min(c.maxJsonBody, 256 * 1024);
const Token = Type.String({ description: 'the runner token, shown once: runners authenticate with it' });

export const clusterEndpoints = [
  endpoint({
    id: 'listClusters',
    method: 'GET',
    path: '/2/clusters',
    tag: 'clusters',
    summary: "List the user's clusters and those shared to them; with all=true, every cluster (operators only)",
    auth: 'user',
    query: Obj({ ...Paging, all: Flag('every live cluster, whoever owns it (operators, GANTRY_OPERATORS, only; 403 for others)'), ...OAuthQuery }),
    responses: {
      200: { description: 'the clusters', schema: Type.Object({ clusters: Type.Array(ClusterSummary) }, { additionalProperties: false }) },
      ...errors,
      403: { description: 'all=true from a user who is not an operator', schema: ErrorBody },
    },
  }),
  endpoint({
    id: 'createCluster',
    method: 'POST',
    path: '/2/clusters',
    tag: 'clusters',
    summary: 'Create a cluster',
    auth: 'user',
    query: AuthQuery,
    body: { kind: 'json', schema: ClusterBody, maxBytes: maxClusterBody },
    responses: {
      200: {
        description: 'created; the runner token is shown only here',
        schema: Type.Object({ msg: Type.String(), id: Id(), token: Token, cluster: Cluster }, { additionalProperties: false }),
      },
      ...errors,
      ...bodyErrors,
    },
  }),
  endpoint({
    id: 'getCluster',
    method: 'GET',
    path: '/2/clusters/:clusterId',
    tag: 'clusters',
    summary: 'Get a cluster (its owner, a user it is shared to, or an operator)',
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    responses: { 200: { description: 'the cluster', schema: Type.Object({ cluster: Cluster }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'getClusterStats',
    method: 'GET',
    path: '/2/clusters/:clusterId/stats',
    tag: 'clusters',
    summary: "A cluster's load and instances now",
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    responses: {
      200: {
        description: 'load and instances',
        schema: Type.Object(
          {
            cluster: Type.Object(
              {
                id: Id(),
                name: Type.String(),
                ewma: Type.Number({ minimum: 0 }),
                queued: Type.Integer({ minimum: 0 }),
                runners_available: Type.Integer({ minimum: 0 }),
                runners_total: Type.Integer({ minimum: 0 }),
                instances: Type.Array(Instance),
              },
              { additionalProperties: false },
            ),
          },
          { additionalProperties: false },
        ),
      },
      ...errors,
    },
  }),
  endpoint({
    id: 'updateCluster',
    method: 'PUT',
    path: '/2/clusters/:clusterId',
    tag: 'clusters',
    summary: "Update a cluster's settings (only the fields given)",
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    body: { kind: 'json', schema: ClusterBody, maxBytes: maxClusterBody },
    responses: {
      200: { description: 'updated', schema: Type.Object({ msg: Type.String(), cluster: Cluster }, { additionalProperties: false }) },
      ...errors,
      ...bodyErrors,
    },
  }),
  endpoint({
    id: 'deleteCluster',
    method: 'DELETE',
    path: '/2/clusters/:clusterId',
    tag: 'clusters',
    summary: 'Delete a cluster: its instances are terminated and its queued tasks cancelled',
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    responses: {
      200: {
        description: 'deleted',
        schema: Type.Object(
          { msg: Type.String(), instances_terminating: Type.Array(Type.String()), tasks_cancelled: Type.Integer({ minimum: 0 }) },
          { additionalProperties: false },
        ),
      },
      ...errors,
    },
  }),
  endpoint({
    id: 'terminateClusterInstances',
    method: 'POST',
    path: '/2/clusters/:clusterId/terminate',
    tag: 'clusters',
    summary: 'Mark instances KILL (the owner or an operator): their runners finish their tasks, then they are terminated',
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    body: {
      kind: 'json',
      maxBytes: maxClusterBody,
      schema: Obj(
        {
          instance_ids: Batch(
            Str(128, {
              pattern: '^[\\x21-\\x7e]{1,128}$',
              describe: 'an instance id (1 to 128 printable characters)',
              message: { type: '{field} must be an instance id (1 to 128 printable characters)' },
            }),
            1000,
            'instance ids',
            'ids',
          ),
        },
        { required: ['instance_ids'] },
      ),
    },
    responses: {
      200: {
        description: 'marked',
        schema: Type.Object({ msg: Type.String(), marked: Type.Array(Type.String()), already: Type.Array(Type.String()) }, { additionalProperties: false }),
      },
      ...errors,
      ...bodyErrors,
    },
  }),
  endpoint({
    id: 'rotateClusterToken',
    method: 'POST',
    path: '/2/clusters/:clusterId/credentials',
    tag: 'clusters',
    summary: "Rotate the cluster's runner token (runners with the old one are refused)",
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    responses: { 200: { description: 'the new token, shown once', schema: Type.Object({ msg: Type.String(), id: Id(), token: Token }, { additionalProperties: false }) }, ...errors },
  }),
  endpoint({
    id: 'getClusterToken',
    method: 'GET',
    path: '/2/clusters/:clusterId/credentials',
    tag: 'clusters',
    summary: 'Always 405: runner tokens are kept only as a hash; POST rotates',
    auth: 'user',
    params: ClusterParams,
    query: AuthQuery,
    responses: { 405: { description: 'tokens cannot be shown again', schema: ErrorBody }, ...errors },
  }),
];
