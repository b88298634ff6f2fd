// The `gantry` admin command creates users, projects and tokens against the store, and the
// token it prints works on the API.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { startGantryProcess } from '../../helpers/process.ts';
import { until } from '../../helpers/runner.ts';

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

t.test('while the embedded server runs, admin commands go through it; a second server is refused', async (t) => {
  const env = { GANTRY_DATA_DIR: tempDir(t), GANTRY_LOCAL_RUNNERS: '1', GANTRY_LOCAL_EXECUTOR: 'noop', GANTRY_BEAT_INTERVAL_MS: '200' };
  const g = await startGantryProcess(t, env);
  t.ok(g.token, 'the first start bootstraps a token');
  const second = await gantry(env, 'start');
  t.equal(second.code, 2);
  t.match(second.err, new RegExp(`in use by process ${g.proc.pid}`), 'a second server on the same data directory is refused');

  const users = await gantry(env, 'user', 'list');
  t.equal(users.code, 0, users.err);
  t.match(users.out, /^[0-9a-f]{24} \S+@\S+$/m, 'the bootstrap user, read by the running server');
  const created = await gantry(env, 'token', 'create', '--user', /^[0-9a-f]{24} (\S+)$/m.exec(users.out)![1]!, '--name', 'ci');
  t.equal(created.code, 0, created.err);
  const tokenId = /\(id ([0-9a-f]{24});/.exec(created.out)![1]!;
  const tokens = await gantry(env, 'token', 'list');
  t.match(tokens.out, new RegExp(`^${tokenId} \\S+ name="ci" created=`, 'm'), 'token list shows the new token by id');
  t.notMatch(tokens.out, /[0-9a-f]{40}/, 'and never a token itself');
  const refused = await gantry(env, 'token', 'revoke', '--id', 'nope');
  t.equal(refused.code, 2, 'a refusal through the server is a usage error, as when run alone');
  t.match(refused.err, /No active token with id nope/);

  const runnerId = await until('the local runner is listed', async () => {
    const r = await gantry(env, 'runner', 'list');
    return /^(\S+) cluster=default connected slots=\d+ running=0/m.exec(r.out)?.[1];
  }, 60_000, 200);
  const stats = await gantry(env, 'cluster', 'stats', '--name', 'default');
  t.match(stats.out, /^cluster [0-9a-f]{24} default\n  queued 0, load .*\n  runners \d+ slots, \d+ free/);
  const drained = await gantry(env, 'runner', 'drain', '--id', runnerId, '--wait');
  t.equal(drained.code, 0, drained.err);
  t.match(drained.err, /drain requested \(finish\)/, 'progress on stderr');
  t.equal(drained.out.trim(), `runner ${runnerId}: drained and gone`);
  const after = await gantry(env, 'runner', 'list');
  t.match(after.out, new RegExp(`^${runnerId} cluster=default disconnected`, 'm'), 'the drained runner left');
  await until('the server sees its local runner exit on its own', async () => /"exit":"exit 0".*exited on its own/.test(g.output()));
  t.match(g.output(), /"exit":"exit 0"[^\n]*local runner instance exited on its own/, 'the drained runner process exited 0');
});

t.test('an unknown command is named; --help lists every command', async (t) => {
  const env = { GANTRY_DATA_DIR: tempDir(t) };
  const bad = await gantry(env, 'frobnicate', 'now');
  t.equal(bad.code, 2);
  t.match(bad.err, /^gantry: Unknown command: gantry frobnicate now\n/);
  const help = await gantry(env, '--help');
  t.equal(help.code, 0);
  for (const cmd of ['start', 'migrate', 'user create', 'user list', 'user quota', 'project create', 'project list', 'project limit', 'token create',
    'token list', 'token revoke', 'cluster create', 'cluster token', 'cluster list', 'cluster stats', 'cluster delete', 'cluster reencrypt',
    'runner list', 'runner drain', 'status']) {
    t.match(help.out, new RegExp(`^  ${cmd}\\b`, 'm'), `--help lists ${cmd}`);
  }
});

t.test('a DATABASE_URL naming a database that does not exist: one line that says how to create it', async (t) => {
  const url = new URL(process.env.GANTRY_TEST_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres');
  url.pathname = `/gantry_missing_${process.pid}`;
  for (const cmd of [['start'], ['user', 'list']]) {
    const r = await gantry({ DATABASE_URL: url.toString(), GANTRY_DATA_DIR: tempDir(t) }, ...cmd);
    t.equal(r.code, 2, `${cmd.join(' ')}: exit 2`);
    t.equal(r.err, `gantry: the database "gantry_missing_${process.pid}" does not exist on ${url.hostname}:${url.port}; create it with: createdb -h ${url.hostname} -p ${url.port} -U ${url.username} gantry_missing_${process.pid}\n`, 'one line, no stack');
  }
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
  const del = await gantry(env, 'cluster', 'delete', '--name', 'high-mem');
  t.equal(del.code, 0, del.err);
  t.match(del.out, new RegExp(`^cluster ${id} high-mem deleted: 0 queued task\\(s\\) cancelled, 0 instance\\(s\\) to terminate$`, 'm'));
  t.notMatch((await gantry(env, 'cluster', 'list')).out, /high-mem/, 'gone from the list');
  t.notOk(await store.clusters.authenticate(id!, rotated!), 'its runners are refused');
  t.match((await gantry(env, 'cluster', 'delete', '--name', 'high-mem')).err, /No cluster named "high-mem"; list them with: gantry cluster list/);
});
