// No outcome delivery is lost to kill -9 of the control plane: one recorded but not yet sent
// (its first attempt failed), and one killed mid-send (the receiver had the request and no
// answer went back), are both delivered by the restarted process, under their first ids.
import t from 'tap';
import { freshPgDatabase, tempDir, ENGINES } from '../../helpers/db.ts';
import { kill9, projectCall as call, startGantryProcess } from '../../helpers/process.ts';
import { startReceiver, type Received } from '../../helpers/receiver.ts';
import { until } from '../../helpers/runner.ts';

for (const engine of ENGINES) {
  t.test(`deliveries survive kill -9 before and during their send (${engine})`, async (t) => {
    const env: Record<string, string> = {
      GANTRY_DATA_DIR: tempDir(t, 'gantry-outbox-'),
      GANTRY_WEBHOOK_ALLOW: '127.0.0.0/8',
      GANTRY_WEBHOOK_TIMEOUT_MS: '2000',
      GANTRY_WEBHOOK_RETRY_BASE_MS: '500',
      GANTRY_WEBHOOK_RETRY_MAX_MS: '1000',
      GANTRY_WEBHOOK_POLL_MS: '200',
    };
    if (engine === 'postgres') env.DATABASE_URL = await freshPgDatabase(t);
    const first = await startGantryProcess(t, env);
    const token = first.token!;
    t.equal((await call(first, token, 'POST', '/webhook_secret', {})).status, 200);
    const form = new FormData();
    form.append('data', JSON.stringify({ name: 'w', image: 'gantry-test/busybox:latest' }));
    const up = await fetch(`${first.url}/2/projects/${first.projectId}/codes`, { method: 'POST', headers: { Authorization: `OAuth ${token}` }, body: form });
    t.equal(up.status, 200);

    const rx = await startReceiver(t);
    // /held: the first request is held unanswered (the process is killed while it waits);
    // /refused: refused until the receiver is told otherwise.
    let accept = false;
    rx.answer((r) => (r.path === '/held' && !rx.received.slice(0, -1).some((x) => x.path === '/held') ? { hang: true } : r.path === '/refused' && !accept ? { status: 503 } : { status: 200 }));

    const queued = await call(first, token, 'POST', '/tasks', {
      tasks: [
        { code_name: 'w', delay: 3600, webhooks: { finishes: [`${rx.url}/refused`] } },
        { code_name: 'w', delay: 3600, webhooks: { finishes: [`${rx.url}/held`] } },
      ],
    });
    const [refusedTask, heldTask] = queued.body.tasks.map((x: { id: string }) => x.id);
    for (const id of [refusedTask, heldTask]) t.equal((await call(first, token, 'POST', `/tasks/${id}/cancel`)).status, 200);
    await rx.waitFor('the held request and a refused attempt', (all) => all.some((r) => r.path === '/held') && all.some((r) => r.path === '/refused'));
    await kill9(first);

    accept = true;
    const refusedBefore = rx.received.filter((r) => r.path === '/refused').length;
    const second = await startGantryProcess(t, env);
    const done = await rx.waitFor(
      'both delivered after the restart',
      (all) => all.filter((r) => r.path === '/held').length >= 2 && all.filter((r) => r.path === '/refused').length > refusedBefore,
      60000,
    );
    const ids = (path: string) => new Set(done.filter((r: Received) => r.path === path).map((r) => r.headers['webhook-id']));
    t.equal(ids('/held').size, 1, 'the mid-send delivery came again under its first id (a receiver drops the repeat by it)');
    t.equal(ids('/refused').size, 1, 'the unsent one under its id too');
    for (const id of [refusedTask, heldTask]) {
      const d = await until(`task ${id}'s delivery recorded`, async () => {
        const r = await call(second, token, 'GET', `/tasks/${id}/deliveries`);
        return r.body.deliveries[0]?.state === 'delivered' ? r.body.deliveries[0] : undefined;
      }, 60000);
      t.equal(d.attempts.at(-1).status_code, 200);
    }
  });
}
