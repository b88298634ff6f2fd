// kill -9 of the control plane loses nothing it acknowledged: every task and schedule whose
// creation got a 2xx reply is there after a restart, on both engines.
import t from 'tap';
import { freshPgDatabase, tempDir, ENGINES } from '../../helpers/db.ts';
import { kill9, projectCall as call, startGantryProcess } from '../../helpers/process.ts';

for (const engine of ENGINES) {
  t.test(`acknowledged writes survive kill -9 (${engine})`, async (t) => {
    const env: Record<string, string> = { GANTRY_DATA_DIR: tempDir(t, 'gantry-restart-') };
    if (engine === 'postgres') env.DATABASE_URL = await freshPgDatabase(t);

    const first = await startGantryProcess(t, env);
    const token = first.token!;
    t.ok(first.projectId && token, 'the first start prints a project id and a token');

    const form = new FormData();
    form.append('data', JSON.stringify({ name: 'w', image: 'gantry-test/busybox:latest' }));
    const up = await fetch(`${first.url}/2/projects/${first.projectId}/codes`, {
      method: 'POST',
      headers: { Authorization: `OAuth ${token}` },
      body: form,
    });
    t.equal(up.status, 200);

    // Writers keep queueing until the process dies under them; only 2xx replies count.
    const ackedTasks: string[] = [];
    const ackedSchedules: string[] = [];
    let stop = false;
    const writer = async (n: number) => {
      for (let i = 0; !stop; i++) {
        try {
          if (i % 5 === 4) {
            const r = await call(first, token, 'POST', '/schedules', {
              schedules: [{ code_name: 'w', payload: `s${n}-${i}`, run_every: 3600, start_at: '2099-01-01T00:00:00Z' }],
            });
            if (r.status === 200) ackedSchedules.push(r.body.schedules[0].id);
          } else {
            const r = await call(first, token, 'POST', '/tasks', {
              tasks: [{ code_name: 'w', payload: `t${n}-${i}` }, { code_name: 'w', payload: `u${n}-${i}` }],
            });
            if (r.status === 200) ackedTasks.push(...r.body.tasks.map((x: { id: string }) => x.id));
          }
        } catch {
          return; // the connection died with the process
        }
      }
    };
    const writers = [1, 2, 3, 4].map(writer);
    // Kill once a good number of writes were acknowledged: an event, not a timer.
    while (ackedTasks.length < 200) await new Promise((r) => setImmediate(r));
    await kill9(first);
    stop = true;
    await Promise.all(writers);
    t.ok(ackedTasks.length >= 200, `${ackedTasks.length} tasks acknowledged before kill -9`);

    const second = await startGantryProcess(t, env);
    t.equal(second.projectId, first.projectId, 'the restart shows the same project');
    const missing: string[] = [];
    for (const id of ackedTasks) {
      const r = await call(second, token, 'GET', `/tasks/${id}`);
      if (r.status !== 200 || r.body.status !== 'queued') missing.push(id);
    }
    t.same(missing, [], 'every acknowledged task is still there, queued');
    const missingSchedules: string[] = [];
    for (const id of ackedSchedules) {
      const r = await call(second, token, 'GET', `/schedules/${id}`);
      if (r.status !== 200 || r.body.status !== 'scheduled') missingSchedules.push(id);
    }
    t.ok(ackedSchedules.length > 0, `${ackedSchedules.length} schedules acknowledged before kill -9`);
    t.same(missingSchedules, [], 'every acknowledged schedule is still there');
    // And the restarted process accepts new work.
    const again = await call(second, token, 'POST', '/tasks', { tasks: [{ code_name: 'w', payload: 'after' }] });
    t.equal(again.status, 200);
  });
}
