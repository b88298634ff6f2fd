import { parseArgs } from 'node:util';
import type { Store } from './store/index.ts';

/** Usage of the `gantry` command. */
export const USAGE = `Usage: gantry <command> [options]

  start                                  start the control plane (embedded PGlite unless DATABASE_URL is set)
  migrate                                apply database migrations and exit
  user create --email EMAIL              create a user
  user list                              list users
  project create --user USER --name NAME create a project owned by USER (id or email)
  project list [--user USER]             list projects
  token create --user USER [--name NAME] create an OAuth token for USER; printed once
  token revoke --id TOKEN_ID             revoke a token

Configuration comes from the environment (see README.md: DATABASE_URL, GANTRY_DATA_DIR, GANTRY_PORT, ...).`;

export class UsageError extends Error {}

/**
 * Runs one admin command against the store and returns what to print. Separate from
 * main.ts so tests call it in-process.
 */
export async function runAdmin(store: Store, argv: string[]): Promise<string> {
  const [noun, verb, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: { email: { type: 'string' }, user: { type: 'string' }, name: { type: 'string' }, id: { type: 'string' } },
    strict: true,
  });
  const need = (k: keyof typeof values) => {
    const v = values[k];
    if (!v) throw new UsageError(`gantry ${noun} ${verb}: --${k} is required\n\n${USAGE}`);
    return v;
  };
  const userOf = async (ref: string) => {
    const u = await store.accounts.findUser(ref);
    if (!u) throw new UsageError(`No user with id or email ${JSON.stringify(ref)}; list them with: gantry user list`);
    return u;
  };
  switch (`${noun} ${verb}`) {
    case 'user create': {
      const email = need('email');
      if (await store.accounts.findUser(email)) throw new UsageError(`A user with email ${email} already exists`);
      const u = await store.accounts.createUser(email);
      return `user ${u.id} ${u.email}`;
    }
    case 'user list':
      return (await store.accounts.listUsers()).map((u) => `${u.id} ${u.email}`).join('\n') || '(no users)';
    case 'project create': {
      const u = await userOf(need('user'));
      const p = await store.accounts.createProject(u.id, need('name'));
      return `project ${p.id} ${p.name} (owner ${u.email})`;
    }
    case 'project list': {
      const u = values.user ? await userOf(values.user) : undefined;
      return (await store.accounts.listProjects(u?.id)).map((p) => `${p.id} ${p.name} owner=${p.user_id}`).join('\n') || '(no projects)';
    }
    case 'token create': {
      const u = await userOf(need('user'));
      const t = await store.accounts.createToken(u.id, values.name ?? '');
      return `token ${t.token}\n(id ${t.id}; shown only now: Gantry keeps only its hash)`;
    }
    case 'token revoke': {
      const ok = await store.accounts.revokeToken(need('id'));
      if (!ok) throw new UsageError(`No active token with id ${values.id}`);
      return `token ${values.id} revoked`;
    }
    default:
      throw new UsageError(USAGE);
  }
}
