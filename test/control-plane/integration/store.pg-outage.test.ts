// When PostgreSQL goes away the API answers 503 with Retry-After, quickly, without hanging
// or crashing; when it comes back the same process serves again without a restart.
import t, { type Test } from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import { PgInstance } from '../../helpers/pg-instance.ts';
import { tempDir } from '../../helpers/db.ts';
import { startGantryProcess } from '../../helpers/process.ts';

/** A control plane on its own private PostgreSQL, with a user, project and token. */
async function onPrivatePostgres(t: Test, env: Record<string, string>) {
  const pg = await PgInstance.create(t);
  const config = loadConfig({
    DATABASE_URL: pg.url,
    GANTRY_PORT: '0',
    GANTRY_GRPC_PORT: '0',
    GANTRY_LOCAL_RUNNERS: '0',
    GANTRY_DATA_DIR: tempDir(t),
    GANTRY_SCHEDULER_TICK_MS: '100',
    ...env,
  });
  const cp = await startControlPlane(config, silentLogger());
  t.teardown(() => cp.stop());
  const user = await cp.store.accounts.createUser(`outage-${Math.random()}@example.com`);
  const project = await cp.store.accounts.createProject(user.id, 'p');
  const { token } = await cp.store.accounts.createToken(user.id);
  return { pg, cp, base: `${cp.url}/2/projects/${project.id}`, headers: { Authorization: `OAuth ${token}` } };
}

t.test('database outage: 503 while down, recovery without restart', async (t) => {
  const { pg, cp, base, headers } = await onPrivatePostgres(t, { GANTRY_PG_CONNECT_TIMEOUT_MS: '2000' });

  const form = () => {
    const f = new FormData();
    f.append('data', JSON.stringify({ name: 'w', image: 'gantry-test/busybox:latest' }));
    return f;
  };
  t.equal((await fetch(`${base}/codes`, { method: 'POST', headers, body: form() })).status, 200);
  const queue = () =>
    fetch(`${base}/tasks`, {
      method: 'POST',
      headers: { ...headers, 'Content-Type': 'application/json' },
      body: JSON.stringify({ tasks: [{ code_name: 'w', payload: 'p' }] }),
    });
  const before = await queue();
  t.equal(before.status, 200);
  const beforeId = ((await before.json()) as any).tasks[0].id;

  pg.stop();

  for (const [what, req] of [
    ['GET tasks', () => fetch(`${base}/tasks`, { headers })],
    ['POST tasks', queue],
    ['GET codes', () => fetch(`${base}/codes`, { headers })],
    ['upload', () => fetch(`${base}/codes`, { method: 'POST', headers, body: form() })],
  ] as const) {
    const started = performance.now();
    const res = await req();
    const ms = performance.now() - started;
    t.equal(res.status, 503, `${what} answers 503 while the database is down`);
    t.ok(Number(res.headers.get('retry-after')) > 0, `${what} carries Retry-After`);
    t.match(await res.json(), { msg: /unavailable/ }, `${what} says the service is unavailable`);
    t.ok(ms < 5000, `${what} answered in ${Math.round(ms)} ms, not hanging`);
  }
  const ready = await fetch(`${cp.url}/readyz`);
  t.equal(ready.status, 503, '/readyz reports not ready');

  pg.start();

  // The pool reconnects by itself: poll until the API serves again (bounded).
  const deadline = Date.now() + 30000;
  let status = 0;
  while (Date.now() < deadline) {
    status = (await fetch(`${base}/tasks`, { headers })).status;
    if (status === 200) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(status, 200, 'the same process serves again once the database is back');
  const after = await queue();
  t.equal(after.status, 200, 'and accepts writes');
  const got = await fetch(`${base}/tasks/${beforeId}`, { headers });
  t.equal(got.status, 200, 'the task acknowledged before the outage is there');
  t.equal((await fetch(`${cp.url}/readyz`)).status, 200, '/readyz is ready again');
  t.equal(cp.state, 'running', 'the control plane never stopped');
});

t.test('a database that stops answering (SIGSTOP) gives 503 within the timeouts, not a hang', async (t) => {
  const { pg, base, headers } = await onPrivatePostgres(t, { GANTRY_PG_CONNECT_TIMEOUT_MS: '1000', GANTRY_PG_QUERY_TIMEOUT_MS: '1500' });
  const url = `${base}/tasks`;
  t.equal((await fetch(url, { headers })).status, 200);

  pg.freeze();
  t.teardown(() => {
    try {
      pg.thaw();
    } catch {
      /* already gone */
    }
  });
  const replies = await Promise.all(
    [1, 2, 3].map(async () => {
      const started = performance.now();
      const res = await fetch(url, { headers });
      return { status: res.status, ms: performance.now() - started };
    }),
  );
  for (const r of replies) {
    t.equal(r.status, 503, 'a frozen database answers 503');
    t.ok(r.ms < 6000, `answered in ${Math.round(r.ms)} ms, bounded by the configured timeouts`);
  }

  pg.thaw();
  const deadline = Date.now() + 30000;
  let status = 0;
  while (Date.now() < deadline) {
    status = (await fetch(url, { headers })).status;
    if (status === 200) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(status, 200, 'serves again once the database answers');
});

t.test('a replica started before its database waits for it, then serves', async (t) => {
  const pg = await PgInstance.create(t);
  pg.stop();
  let started = false;
  const g = await startGantryProcess(t, { DATABASE_URL: pg.url, GANTRY_DATA_DIR: tempDir(t) }, 60000, (out) => {
    // Bring the database up once the process says it is waiting for it.
    if (!started && /waiting for it/.test(out)) {
      started = true;
      pg.start();
    }
  });
  t.ok(started, 'the process waited for the database instead of exiting');
  t.ok(g.token, 'then it bootstrapped and printed a token');
  const res = await fetch(`${g.url}/2/projects/${g.projectId}/codes`, { headers: { Authorization: `OAuth ${g.token}` } });
  t.equal(res.status, 200);
});
