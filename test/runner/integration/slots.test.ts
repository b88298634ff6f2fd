/**
 * A runner started without GANTRY_RUNNER_SLOTS derives its slots from the host's CPUs and
 * memory, divided by the cluster's memory per task as the control plane names it in
 * Welcome; the control plane's record follows.
 */
import os from 'node:os';
import t from 'tap';
import { deriveSlots } from '../../../runner/slots.ts';
import { StatsSampler } from '../../../runner/stats.ts';
import { startTestApi } from '../../helpers/api.ts';
import { startTestRunner, testCluster, until } from '../../helpers/runner.ts';

const cpus = os.availableParallelism();

t.test("slots from CPUs and the cluster's memory per task", async (t) => {
  const api = await startTestApi(t, 'pglite');
  const memoryMb = await StatsSampler.totalMemoryMb();
  for (const [name, taskMb, perCpu] of [
    // Tasks as large as the host: memory allows one, whatever the CPUs.
    ['big-tasks', memoryMb, 1],
    // Tiny tasks: memory would allow hundreds; the CPUs decide.
    ['tiny-tasks', 16, 3],
  ] as const) {
    const cluster = await testCluster(api, name, taskMb);
    const want = deriveSlots({ cpus, memoryMb, taskMemoryMb: taskMb, slotsPerCpu: perCpu });
    t.equal(want.limitedBy, name === 'big-tasks' ? 'memory' : 'cpus', `${name}: the case is limited as meant`);
    const r = await startTestRunner(t, api, { cluster, env: { GANTRY_RUNNER_SLOTS: '0', GANTRY_RUNNER_SLOTS_PER_CPU: String(perCpu) } });
    await until(`${name}: the runner derives its slots for the cluster's memory`, async () => r.agent.slots === want.slots);
    const row = () => api.store.db.query<{ slots: number }>('SELECT slots FROM runners WHERE id = $1', [r.agent.runnerId]);
    await until(`${name}: the control plane records ${want.slots} slots`, async () => (await row()).rows[0]?.slots === want.slots);
    t.equal((await row()).rows[0]!.slots, want.slots, `${name}: ${want.slots} slots (${cpus} CPUs, ${memoryMb} MB, ${taskMb} MB a task)`);
    await r.stop();
  }
});

t.test('a configured task memory is used instead of the cluster\'s', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const memoryMb = await StatsSampler.totalMemoryMb();
  const cluster = await testCluster(api, 'configured', 16);
  const r = await startTestRunner(t, api, { cluster, env: { GANTRY_RUNNER_SLOTS: '0', GANTRY_RUNNER_TASK_MEMORY_MB: String(memoryMb) } });
  // A beat with stats comes after the Welcome that named the cluster's 16 MB.
  await until('the runner has beaten since its Welcome', async () => (await api.store.db.query('SELECT 1 FROM runners WHERE id = $1 AND stats IS NOT NULL', [r.agent.runnerId])).rowCount > 0);
  t.equal(r.agent.slots, 1, 'host-sized tasks as configured: one slot, though the cluster says 16 MB');
});
