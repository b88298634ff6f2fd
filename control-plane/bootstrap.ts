import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../lib/logger.ts';
import type { Store } from './store/index.ts';

/** What the embedded start creates on first run and shows on every start. */
export interface Bootstrap {
  email: string;
  userId: string;
  projectId: string;
  token: string;
}

/**
 * On an empty store, creates a user, a project and a token, and keeps them in
 * `<dataDir>/bootstrap.json` (mode 0600) so later starts can show them again: the store
 * itself keeps only the token's hash. On a store that already has users, returns what the
 * file holds, if anything.
 */
export async function ensureBootstrap(store: Store, dataDir: string, log: Logger): Promise<Bootstrap | undefined> {
  const file = path.join(dataDir, 'bootstrap.json');
  const users = await store.accounts.listUsers();
  if (users.length > 0) {
    try {
      const b = JSON.parse(fs.readFileSync(file, 'utf8')) as Bootstrap;
      return users.some((u) => u.id === b.userId) ? b : undefined;
    } catch {
      return undefined;
    }
  }
  const user = await store.accounts.createUser('admin@localhost');
  const project = await store.accounts.createProject(user.id, 'default');
  const { token } = await store.accounts.createToken(user.id, 'bootstrap');
  const b: Bootstrap = { email: user.email, userId: user.id, projectId: project.id, token };
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(file, JSON.stringify(b, null, 2) + '\n', { mode: 0o600 });
  log.info({ userId: user.id, projectId: project.id }, 'created the first user, project and token');
  return b;
}

/** Credentials of the cluster the embedded start's local runners join. */
export interface LocalCluster {
  clusterId: string;
  name: string;
  token: string;
}

/**
 * The `default` cluster and a runner token for the local runners, kept in
 * `<dataDir>/local-cluster.json` (mode 0600). Created on first use; when the file is lost
 * or its token no longer works, the cluster's token is rotated and the file rewritten.
 */
export async function ensureLocalCluster(store: Store, dataDir: string, log: Logger, name = 'default'): Promise<LocalCluster> {
  const file = path.join(dataDir, 'local-cluster.json');
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as LocalCluster;
    if (await store.clusters.authenticate(c.clusterId, c.token)) return c;
  } catch {
    /* absent or unreadable: make it anew */
  }
  const existing = await store.clusters.byName(name);
  let out: LocalCluster;
  if (existing) {
    out = { clusterId: existing.id, name, token: (await store.clusters.rotateToken(existing.id))! };
    log.warn({ cluster: name }, 'rotated the cluster token for the local runners (its old token no longer works)');
  } else {
    const { cluster, token } = await store.clusters.create(name);
    out = { clusterId: cluster.id, name, token };
    log.info({ clusterId: cluster.id }, 'created the default cluster');
  }
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n', { mode: 0o600 });
  return out;
}
