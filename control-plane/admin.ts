import { parseArgs } from 'node:util';
import { QUOTA_MAX, type QuotaLimits } from './config.ts';
import { SecretsUnavailableError } from './store/clusters.ts';
import type { Store } from './store/index.ts';
import { presentFarm } from './http/present.ts';
import { UsageError } from '../lib/errors.ts';

export { UsageError };

/** Usage of the `gantry` command. */
export const USAGE = `Usage: gantry <command> [options]

  start                                  start the control plane (embedded PGlite unless DATABASE_URL is set)
  migrate                                apply database migrations and exit
  user create --email EMAIL              create a user
  user list                              list users
  user quota --email EMAIL [--clusters N] [--codes N] [--schedules N] [--queued-tasks N]
                                         show a user's quotas and usage; with values, set them first
                                         (N: 0 to 2147483647, or default for GANTRY_QUOTA_*; --user takes an id or email)
  project create --user USER --name NAME create a project owned by USER (id or email)
  project list [--user USER]             list projects
  project limit --id PROJECT --max-running N|none
                                         limit the project's running tasks across all replicas (none: no limit)
  token create --user USER [--name NAME] create an OAuth token for USER; printed once
  token list [--user USER]               list the tokens that work (ids, owners, names; never the tokens)
  token revoke --id TOKEN_ID             revoke a token
  cluster create --name NAME [--memory MB]  create a cluster of runners; prints its id and runner token
  cluster token --name NAME              rotate a cluster's runner token (runners with the old one are refused)
  cluster list                           list clusters
  cluster stats --name NAME              queue depth, load, runners and instances of a cluster
  cluster delete --name NAME             delete a cluster: its queued tasks are cancelled, its instances terminated
  runner list [--cluster NAME]           list runners: state, slots, running tasks, last beat, penalty
  runner drain --id RUNNER [--mode finish|hand-back] [--timeout SECONDS] [--wait]
                                         take a runner out of service: no new work; running tasks finish
                                         (up to --timeout, default 3600) or are handed back; it then exits.
                                         With --wait, shows its progress until it has left
  status [--json]                        the whole farm: runners, running tasks, queues by cluster and code
                                         package, the next scheduled runs, counts (GET /2/status, for every user)
  cluster reencrypt                      re-seal every cluster secret with the first key of GANTRY_SECRET_KEYS (key rotation)

Configuration comes from the environment (see README.md: DATABASE_URL, GANTRY_DATA_DIR, GANTRY_PORT, ...).
On the embedded default, the commands also work while \`gantry start\` runs: they go through it.`;

/** The commands, for the message that names an unknown one. */
const COMMANDS = [
  'start', 'migrate', 'user create', 'user list', 'user quota', 'project create', 'project list', 'project limit',
  'token create', 'token list', 'token revoke', 'cluster create', 'cluster token', 'cluster list', 'cluster stats',
  'cluster delete', 'cluster reencrypt', 'runner list', 'runner drain', 'status',
];

/** What an admin command may do besides the store: say what it is doing, and tell dispatch of a change. */
export interface AdminContext {
  /** Progress lines of a long operation (stderr of the command). */
  progress?: (line: string) => void;
  /** Instances were marked KILL (a deleted cluster): the running server's dispatch hears it at once. */
  instancesChanged?: () => void;
  /** Between progress polls; tests shorten it. */
  pollMs?: number;
}

/** `gantry user quota` options and the quotas they set. */
const QUOTA_OPTIONS = [
  ['clusters', 'clusters'],
  ['codes', 'codes'],
  ['schedules', 'schedules'],
  ['queued-tasks', 'queuedTasks'],
] as const satisfies readonly (readonly [string, keyof QuotaLimits])[];

/**
 * Runs one admin command against the store and returns what to print. Separate from
 * main.ts so tests call it in-process.
 */
export async function runAdmin(store: Store, argv: string[], ctx: AdminContext = {}): Promise<string> {
  // `status` is one word; every other command is a noun and a verb.
  const [noun, verb, ...rest] = argv[0] === 'status' ? ['status', '', ...argv.slice(1)] : argv;
  if (!COMMANDS.includes(noun === 'status' ? 'status' : `${noun} ${verb}`)) {
    const what = [noun, verb].filter(Boolean).join(' ');
    throw new UsageError(`${what ? `Unknown command: gantry ${what}` : 'No command given'}\n\n${USAGE}`);
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      email: { type: 'string' },
      user: { type: 'string' },
      name: { type: 'string' },
      id: { type: 'string' },
      memory: { type: 'string' },
      'max-running': { type: 'string' },
      clusters: { type: 'string' },
      codes: { type: 'string' },
      schedules: { type: 'string' },
      'queued-tasks': { type: 'string' },
      cluster: { type: 'string' },
      mode: { type: 'string' },
      timeout: { type: 'string' },
      wait: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const need = (k: Exclude<keyof typeof values, 'wait' | 'json'>) => {
    const v = values[k];
    if (!v) throw new UsageError(`gantry ${noun} ${verb}: --${k} is required\n\n${USAGE}`);
    return v;
  };
  const clusterOf = async (name: string) => {
    const c = await store.clusters.byName(name);
    if (!c) throw new UsageError(`No cluster named ${JSON.stringify(name)}; list them with: gantry cluster list`);
    return c;
  };
  const userOf = async (ref: string) => {
    const u = await store.accounts.findUser(ref);
    if (!u) throw new UsageError(`No user with id or email ${JSON.stringify(ref)}; list them with: gantry user list`);
    return u;
  };
  const command = noun === 'status' ? 'status' : `${noun} ${verb}`;
  switch (command) {
    case 'user create': {
      const email = need('email');
      if (await store.accounts.findUser(email)) throw new UsageError(`A user with email ${email} already exists`);
      const u = await store.accounts.createUser(email);
      return `user ${u.id} ${u.email}`;
    }
    case 'user list':
      return (await store.accounts.listUsers()).map((u) => `${u.id} ${u.email}`).join('\n') || '(no users)';
    case 'user quota': {
      const ref = values.email ?? values.user;
      if (!ref) throw new UsageError(`gantry user quota: --email is required\n\n${USAGE}`);
      const u = await userOf(ref);
      const patch: { [K in keyof QuotaLimits]?: number | null } = {};
      for (const [opt, key] of QUOTA_OPTIONS) {
        const raw = values[opt];
        if (raw === undefined) continue;
        const n = raw === 'default' ? null : Number(raw);
        if (n !== null && (!/^\d+$/.test(raw) || n > QUOTA_MAX)) {
          throw new UsageError(`--${opt} must be a whole number from 0 to ${QUOTA_MAX}, or default`);
        }
        patch[key] = n;
      }
      await store.quotas.set(u.id, patch);
      const q = await store.quotas.get(u.id);
      const lines = [`quotas of ${u.email} (user ${u.id})`];
      for (const [opt, key] of QUOTA_OPTIONS) {
        const set = q.overrides[key] !== undefined ? `set by an operator; default ${store.quotas.defaults[key]}` : 'default';
        lines.push(`  ${opt.padEnd(13)} ${String(q.limits[key]).padStart(10)} (${set}), in use ${q.usage[key]}`);
      }
      return lines.join('\n');
    }
    case 'project create': {
      const u = await userOf(need('user'));
      const p = await store.accounts.createProject(u.id, need('name'));
      return `project ${p.id} ${p.name} (owner ${u.email})`;
    }
    case 'project list': {
      const u = values.user ? await userOf(values.user) : undefined;
      return (
        (await store.accounts.listProjects(u?.id))
          .map((p) => `${p.id} ${p.name} owner=${p.userId}${p.maxRunning ? ` max_running=${p.maxRunning}` : ''}`)
          .join('\n') || '(no projects)'
      );
    }
    case 'project limit': {
      const raw = need('max-running');
      const max = raw === 'none' ? null : Number(raw);
      if (max !== null && (!Number.isInteger(max) || max < 1 || max > 1_000_000)) {
        throw new UsageError('--max-running must be a whole number from 1 to 1000000, or none');
      }
      if (!(await store.accounts.setProjectLimit(need('id'), max))) throw new UsageError(`No project with id ${values.id}; list them with: gantry project list`);
      return `project ${values.id} max_running=${max ?? 'none'}`;
    }
    case 'token create': {
      const u = await userOf(need('user'));
      const t = await store.accounts.createToken(u.id, values.name ?? '');
      return `token ${t.token}\n(id ${t.id}; shown only now: Gantry keeps only its hash)`;
    }
    case 'token list': {
      const u = values.user ? await userOf(values.user) : undefined;
      const rows = await store.accounts.listTokens(u?.id);
      return rows.map((x) => `${x.id} ${x.email}${x.name ? ` name=${JSON.stringify(x.name)}` : ''} created=${x.createdAt.toISOString()}`).join('\n') || '(no tokens)';
    }
    case 'token revoke': {
      const ok = await store.accounts.revokeToken(need('id'));
      if (!ok) throw new UsageError(`No active token with id ${values.id}`);
      return `token ${values.id} revoked`;
    }
    case 'cluster create': {
      const name = need('name');
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new UsageError('--name must be 1 to 64 letters, digits, ".", "_" or "-"');
      if (await store.clusters.byName(name)) throw new UsageError(`A cluster named ${name} already exists`);
      const memory = values.memory === undefined ? 512 : Number(values.memory);
      if (!Number.isInteger(memory) || memory < 16 || memory > 1048576) throw new UsageError('--memory must be a whole number of MB from 16 to 1048576');
      const { cluster, token } = await store.clusters.create(name, { memoryMb: memory });
      return `cluster ${cluster.id} ${cluster.name} memory=${cluster.memoryMb}MB\nrunner token ${token}\n(shown only now: Gantry keeps only its hash)`;
    }
    case 'cluster token': {
      const c = await store.clusters.byName(need('name'));
      if (!c) throw new UsageError(`No cluster named ${values.name}; list them with: gantry cluster list`);
      return `cluster ${c.id} ${c.name}\nrunner token ${await store.clusters.rotateToken(c.id)}\n(the old token no longer works)`;
    }
    case 'cluster list':
      return (await store.clusters.list()).map((c) => `${c.id} ${c.name} memory=${c.memoryMb}MB`).join('\n') || '(no clusters)';
    case 'cluster stats': {
      const c = await clusterOf(need('name'));
      const s = (await store.clusters.stats(c.id))!;
      const lines = [
        `cluster ${c.id} ${c.name}`,
        `  queued ${s.queued}, load (EWMA of busy + queued) ${Math.round(s.ewma * 100) / 100}`,
        `  runners ${s.runnersTotal} slots, ${s.runnersAvailable} free`,
      ];
      for (const i of s.instances) lines.push(`  instance ${i.instanceId} ${i.type} ${i.provider} runners=${i.runnersTotal} free=${i.runnersAvailable}`);
      return lines.join('\n');
    }
    case 'cluster delete': {
      const c = await clusterOf(need('name'));
      const out = await store.clusters.softDelete(c.id);
      if (!out) throw new UsageError(`No cluster named ${JSON.stringify(values.name)}; list them with: gantry cluster list`);
      ctx.instancesChanged?.();
      return `cluster ${c.id} ${c.name} deleted: ${out.tasksCancelled} queued task(s) cancelled, ${out.instancesMarked.length} instance(s) to terminate`;
    }
    case 'status': {
      const f = await store.status.farm({ all: true });
      if (values.json) return JSON.stringify(presentFarm(f), null, 2);
      const t = f.counts.tasks;
      const lines = [
        `runners: ${f.hosts.filter((h) => h.connected).length} connected, ${f.hosts.filter((h) => h.available).length} available`,
        ...f.hosts.map(
          (h) =>
            `  ${h.runnerId} cluster=${h.cluster} ${h.available ? 'available' : h.draining ? 'draining' : h.penalised ? `penalised until ${h.penaltyUntil!.toISOString()} (${h.lastError})` : h.connected ? 'busy' : 'disconnected'} slots=${h.slots} busy=${h.busy}${h.hostname ? ` host=${h.hostname}` : ''}`,
        ),
        `running: ${f.running.length}`,
        ...f.running.map((r) => `  task ${r.taskId} ${r.codeName} on ${r.runnerId} (${r.cluster}) ${r.state} since ${r.since.toISOString()}`),
        'queues (queued / delayed / running):',
        ...f.queues.clusters.map((c) => `  cluster ${c.cluster}: ${c.queued} / ${c.delayed} / ${c.running}`),
        ...f.queues.codes.map((c) => `  code ${c.codeName} (project ${c.projectId}): ${c.queued} / ${c.delayed} / ${c.running}`),
        `next scheduled runs:${f.upcoming.length === 0 ? ' none' : ''}`,
        ...f.upcoming.map((u) => `  ${u.nextStart.toISOString()} ${u.codeName} (schedule ${u.scheduleId})`),
        `counts: ${f.counts.codes} code packages, ${f.counts.schedules} schedules; tasks ${Object.entries(t).map(([k, v]) => `${k}=${v}`).join(' ')}`,
      ];
      return lines.join('\n');
    }
    case 'runner list': {
      const c = values.cluster ? await clusterOf(values.cluster) : undefined;
      const rows = await store.runners.list(c ? { clusterId: c.id } : {});
      const now = Date.now();
      return (
        rows
          .map((r) => {
            const penalty = r.penaltyUntil && r.penaltyUntil.getTime() > now ? ` penalised until ${r.penaltyUntil.toISOString()} (${r.penaltyReason})` : '';
            const beat = r.lastBeatAt ? ` last beat ${r.lastBeatAt.toISOString()}` : '';
            return `${r.id} cluster=${r.cluster} ${r.state} slots=${r.slots} running=${r.busy}${r.hostname ? ` host=${r.hostname}` : ''}${beat}${penalty}`;
          })
          .join('\n') || '(no runners)'
      );
    }
    case 'runner drain': {
      const id = need('id');
      const mode = values.mode ?? 'finish';
      if (mode !== 'finish' && mode !== 'hand-back') throw new UsageError('--mode must be finish (running tasks finish) or hand-back (they are stopped and queued again)');
      const timeout = values.timeout === undefined ? 3600 : Number(values.timeout);
      if (!Number.isInteger(timeout) || timeout < 0 || timeout > 7 * 86400) throw new UsageError('--timeout must be a whole number of seconds from 0 to 604800');
      if (!(await store.runners.requestDrain(id, mode === 'finish' ? 'finish' : 'hand_back', timeout))) {
        throw new UsageError(`No runner with id ${JSON.stringify(id)}; list them with: gantry runner list`);
      }
      const asked = `runner ${id}: drain requested (${mode}); it hears it at its next beat, finishes or hands back its tasks, then leaves`;
      if (!values.wait) return asked;
      ctx.progress?.(asked);
      for (let last = '';;) {
        const [r] = await store.runners.list({ runnerId: id });
        if (!r || r.state === 'disconnected') return `runner ${id}: drained and gone`;
        const line = `runner ${id}: ${r.state}, ${r.busy} task(s) running`;
        if (line !== last) ctx.progress?.(line);
        last = line;
        await new Promise((resolve) => setTimeout(resolve, ctx.pollMs ?? 1000));
      }
    }
    case 'cluster reencrypt': {
      // Rotation: put the new key first in GANTRY_SECRET_KEYS (old ones after it), run this,
      // then drop the old keys. Values that cannot be opened are listed; keep the old keys then.
      // Projects' webhook signing secrets are sealed with the same keys.
      const unavailable = (err: unknown) => {
        throw err instanceof SecretsUnavailableError ? new UsageError(err.message) : err;
      };
      const r = await store.clusters.reencryptSecrets().catch(unavailable);
      const p = await store.deliveries.reencryptSecrets().catch(unavailable);
      const lines = [`re-encrypted ${r.rewritten + p.rewritten} secret(s); ${r.current + p.current} already under the first key`];
      for (const f of r.failed) lines.push(`cannot re-encrypt ${f.field} of cluster ${f.clusterId}: ${f.error}`);
      for (const f of p.failed) lines.push(`cannot re-encrypt the ${f.field} signing secret of project ${f.projectId}: ${f.error}`);
      if (r.failed.length + p.failed.length > 0) throw new UsageError(`${lines.join('\n')}\n(keep the old keys until these are fixed)`);
      return lines.join('\n');
    }
    default:
      throw new UsageError(USAGE);
  }
}
