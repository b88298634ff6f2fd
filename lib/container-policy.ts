/**
 * What a task container may do beyond running its command: the per-cluster container policy.
 * The control plane validates and stores it (Clusters API `container`), sends it with every
 * Offer, and the runner's Docker executor applies it. Both ends share these definitions so
 * that a runner enforces the same bounds even when an offer carries something else: no
 * cluster can give a task more than a plain `docker run` would, and the defaults (used when
 * an older control plane sends no policy) are the locked-down ones.
 */

/**
 * Docker's default capability set (moby oci/caps/defaults.go), without the `CAP_` prefix:
 * the only capabilities a cluster may add back after every capability is dropped.
 */
export const DOCKER_DEFAULT_CAPS = [
  'AUDIT_WRITE',
  'CHOWN',
  'DAC_OVERRIDE',
  'FOWNER',
  'FSETID',
  'KILL',
  'MKNOD',
  'NET_BIND_SERVICE',
  'NET_RAW',
  'SETFCAP',
  'SETGID',
  'SETPCAP',
  'SETUID',
  'SYS_CHROOT',
] as const;

export type AddableCap = (typeof DOCKER_DEFAULT_CAPS)[number];

/** A cluster's container policy, normalised. */
export interface ContainerPolicy {
  /**
   * Capabilities added back (all others dropped): names from DOCKER_DEFAULT_CAPS, sorted,
   * unique. Only a task running as root holds them: Docker gives a non-root user none.
   */
  capAdd: AddableCap[];
  /** Most processes (threads count) the container may hold at once. */
  pidsLimit: number;
  /** Root filesystem read-only; `/tmp` is then a tmpfs of tmpSizeMb. */
  readOnlyRootfs: boolean;
  /** Size of the `/tmp` tmpfs when the root filesystem is read-only (its pages count as the task's memory). */
  tmpSizeMb: number;
  /** `uid[:gid]` or `name[:group]` the task runs as; null: the image's own user. */
  user: string | null;
  /** Open files per process, soft and hard limit alike (RLIMIT_NOFILE). */
  nofile: number;
  /**
   * The network the container joins: `bridge` (the engine's default bridge, as `docker run`
   * gives: outbound network), `none` (loopback only), `host` (the host's own network: no
   * isolation), or the name of a network made on the runner's engine (`docker network create`).
   */
  network: string;
}

/**
 * A policy as received (an Offer's ContainerPolicy message, a caller's object), not yet
 * checked: resolveContainerPolicy turns it into a ContainerPolicy.
 */
export interface ContainerPolicyInput {
  capAdd?: readonly string[];
  pidsLimit?: number;
  readOnlyRootfs?: boolean;
  tmpSizeMb?: number;
  user?: string | null;
  nofile?: number;
  network?: string;
}

/** The policy of a cluster that sets nothing, and of an offer that carries no policy. */
export const CONTAINER_DEFAULTS: Readonly<ContainerPolicy> = Object.freeze({
  capAdd: [],
  pidsLimit: 1024,
  readOnlyRootfs: false,
  tmpSizeMb: 64,
  user: null,
  nofile: 4096,
  network: 'bridge',
});

/**
 * A network as a cluster or a runner may name it: none, bridge, host, or a user-made
 * network's name (Docker's rule: a letter or digit, then letters, digits, `_`, `.`, `-`).
 * `container:<id>` (another container's namespace) is never accepted.
 */
export const NETWORK_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$';
const NETWORK_RE = new RegExp(NETWORK_PATTERN);

export function isValidNetwork(s: string): boolean {
  return NETWORK_RE.test(s);
}

/**
 * Inclusive bounds. pids: fewer than 16 cannot run a shell pipeline next to the init
 * process; the top is still a bound (the kernel's pid_max can be 2^22). nofile: below 64
 * common runtimes fail to start; 2^20 is the kernel's default fs.nr_open, the most
 * setrlimit accepts on a host that did not raise it. tmp: 1 MiB to 1 TiB, like `memory`.
 */
export const CONTAINER_LIMITS = Object.freeze({
  pidsLimit: { min: 16, max: 1_048_576 },
  nofile: { min: 64, max: 1_048_576 },
  tmpSizeMb: { min: 1, max: 1_048_576 },
});

const NAME = '[A-Za-z_][A-Za-z0-9_.-]{0,31}';
const USER_RE = new RegExp(`^(\\d{1,10}|${NAME})(:(\\d{1,10}|${NAME}))?$`);
const MAX_ID = 2 ** 31 - 1;

/** `chown`, `CAP_CHOWN`, `Cap_Chown` → `CHOWN`; undefined for a name outside Docker's default set. */
export function normaliseCap(name: string): AddableCap | undefined {
  const n = name.trim().toUpperCase().replace(/^CAP_/, '');
  return (DOCKER_DEFAULT_CAPS as readonly string[]).includes(n) ? (n as AddableCap) : undefined;
}

/** Sorted and without duplicates, so that equal lists compare equal. */
export function sortCaps(caps: Iterable<AddableCap>): AddableCap[] {
  return [...new Set(caps)].sort();
}

/**
 * A user as Docker's `--user` takes it: `uid`, `uid:gid`, `name` or `name:group` (names
 * resolved in the image's /etc/passwd and /etc/group; numeric ids need no entry), ids at
 * most 2^31-1.
 */
export function isValidUser(s: string): boolean {
  if (!USER_RE.test(s)) return false;
  return s.split(':').every((part) => !/^\d+$/.test(part) || Number(part) <= MAX_ID);
}

/**
 * The policy a runner applies: the defaults for what is absent (a zero number or an empty
 * user, as a protobuf message without the field reads), values outside the bounds clamped,
 * capabilities outside Docker's default set left out (that only takes privileges away;
 * `ignored` names them, for a log line). A malformed user is an `error`: running the task
 * as some other user than the cluster asked for is not a safe guess.
 */
export function resolveContainerPolicy(p: ContainerPolicyInput | undefined): {
  policy: ContainerPolicy;
  ignored: string[];
  error?: string;
} {
  const d = CONTAINER_DEFAULTS;
  const ignored: string[] = [];
  if (!p) return { policy: { ...d, capAdd: [] }, ignored };
  let error: string | undefined;
  const caps: AddableCap[] = [];
  for (const c of Array.isArray(p.capAdd) ? (p.capAdd as unknown[]) : []) {
    const n = typeof c === 'string' ? normaliseCap(c) : undefined;
    if (n) caps.push(n);
    else ignored.push(`cap_add ${JSON.stringify(c)}`);
  }
  const num = (v: unknown, def: number, b: { min: number; max: number }) =>
    typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.min(b.max, Math.max(b.min, Math.floor(v))) : def;
  let user: string | null = null;
  if (typeof p.user === 'string' && p.user !== '') {
    if (isValidUser(p.user)) user = p.user;
    else error = `the container user ${JSON.stringify(p.user.slice(0, 80))} is not uid[:gid] or name[:group]`;
  }
  let network = d.network;
  if (typeof p.network === 'string' && p.network !== '') {
    if (isValidNetwork(p.network)) network = p.network;
    else error ??= `the container network ${JSON.stringify(p.network.slice(0, 80))} is not none, bridge, host or a network's name`;
  }
  return {
    policy: {
      capAdd: sortCaps(caps),
      pidsLimit: num(p.pidsLimit, d.pidsLimit, CONTAINER_LIMITS.pidsLimit),
      readOnlyRootfs: p.readOnlyRootfs === true,
      tmpSizeMb: num(p.tmpSizeMb, d.tmpSizeMb, CONTAINER_LIMITS.tmpSizeMb),
      user,
      nofile: num(p.nofile, d.nofile, CONTAINER_LIMITS.nofile),
      network,
    },
    ignored,
    ...(error ? { error } : {}),
  };
}
