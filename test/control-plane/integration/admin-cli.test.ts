// The `gantry` admin command creates users, projects and tokens against the store, and the
// token it prints works on the API.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { startGantryProcess } from '../../helpers/process.ts';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

async function gantry(env: Record<string, string>, ...args: string[]) {
  try {
    const r = await run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
    });
    return { code: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

t.test('user, project and token commands, then the token works on the API (PostgreSQL)', async (t) => {
  const env = { DATABASE_URL: await freshPgDatabase(t), GANTRY_DATA_DIR: tempDir(t) };
  const u = await gantry(env, 'user', 'create', '--email', 'ops@example.com');
  t.equal(u.code, 0, u.err);
  t.match(u.out, /^user [0-9a-f]{24} ops@example.com/);
  const dup = await gantry(env, 'user', 'create', '--email', 'ops@example.com');
  t.equal(dup.code, 2, 'a duplicate email is refused');
  t.match(dup.err, /already exists/);
  const p = await gantry(env, 'project', 'create', '--user', 'ops@example.com', '--name', 'billing');
  t.equal(p.code, 0, p.err);
  const projectId = /^project ([0-9a-f]{24})/.exec(p.out)![1]!;
  const tok = await gantry(env, 'token', 'create', '--user', 'ops@example.com');
  t.equal(tok.code, 0, tok.err);
  const token = /^token ([0-9a-f]+)/.exec(tok.out)![1]!;
  const missing = await gantry(env, 'project', 'create', '--name', 'x');
  t.equal(missing.code, 2);
  t.match(missing.err, /--user is required/, 'a missing option is named');
  const nobody = await gantry(env, 'token', 'create', '--user', 'nobody@example.com');
  t.match(nobody.err, /No user .*gantry user list/, 'says what to do next');

  const g = await startGantryProcess(t, env);
  t.equal(g.token, undefined, 'users exist already: nothing is bootstrapped');
  const res = await fetch(`${g.url}/2/projects/${projectId}/codes`, { headers: { Authorization: `OAuth ${token}` } });
  t.equal(res.status, 200);
  t.same(await res.json(), { codes: [] });
});

t.test('the embedded data directory cannot be opened by two processes', async (t) => {
  const env = { GANTRY_DATA_DIR: tempDir(t) };
  const g = await startGantryProcess(t, env);
  t.ok(g.token, 'the first start bootstraps a token');
  const second = await gantry(env, 'user', 'list');
  t.equal(second.code, 2);
  t.match(second.err, new RegExp(`in use by process ${g.proc.pid}`));
});

t.test('cluster commands: create prints a token that authenticates; token rotates it', async (t) => {
  const env = { DATABASE_URL: await freshPgDatabase(t), GANTRY_DATA_DIR: tempDir(t) };
  await gantry(env, 'migrate');
  const c = await gantry(env, 'cluster', 'create', '--name', 'high-mem', '--memory', '2048');
  t.equal(c.code, 0, c.err);
  const id = /^cluster ([0-9a-f]{24}) high-mem memory=2048MB/m.exec(c.out)?.[1];
  const token = /^runner token ([0-9a-f]+)/m.exec(c.out)?.[1];
  t.ok(id && token, 'prints the id and the token');
  t.match((await gantry(env, 'cluster', 'create', '--name', 'high-mem')).err, /already exists/);
  t.match((await gantry(env, 'cluster', 'create', '--name', 'bad name')).err, /--name must be/);
  t.match((await gantry(env, 'cluster', 'list')).out, /high-mem memory=2048MB/);
  const r = await gantry(env, 'cluster', 'token', '--name', 'high-mem');
  const rotated = /^runner token ([0-9a-f]+)/m.exec(r.out)?.[1];
  t.ok(rotated && rotated !== token, 'a new token');
  // Check both against the store.
  const { openStore } = await import('../../../control-plane/store/index.ts');
  const { silentLogger } = await import('../../../lib/logger.ts');
  const { systemClock } = await import('../../../lib/clock.ts');
  const { newId } = await import('../../../lib/ids.ts');
  const store = await openStore({ databaseUrl: env.DATABASE_URL, dataDir: env.GANTRY_DATA_DIR, pgPoolMax: 2, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 }, silentLogger(), systemClock, newId);
  t.teardown(() => store.close());
  t.notOk(await store.clusters.authenticate(id!, token!), 'the old token is refused');
  t.ok(await store.clusters.authenticate(id!, rotated!), 'the new one works');
});
