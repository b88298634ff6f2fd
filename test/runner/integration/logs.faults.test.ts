// Failure injection on the log stream (proto/README.md, 7 Logs): a real runner
// process that silently drops every third log frame it sends. Offsets, acks and the final
// length + CRC-32 must still deliver exactly what the container wrote.
import t from 'tap';
import { crc32 } from '../../../lib/crc32.ts';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { FAST_TIMERS, finalOf, leasesOf, spawnRunnerProcess, queueTasks } from '../../helpers/faults.ts';
import { testCluster, TEST_IMAGE, until } from '../../helpers/runner.ts';

const seq = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => `${from + i}\n`).join('');

t.test('every third log frame dropped: the stored log is exactly the output, and complete', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST_TIMERS });
  const cluster = await testCluster(api);
  // Twenty rounds of stdout and stderr, spread over many flush intervals (so frames are
  // dropped mid-stream, at the end of a burst and across flushes), then one big burst.
  // The pauses keep Docker from reordering stdout against stderr.
  const command = [
    'for i in $(seq 1 20); do seq $(( (i-1)*1000+1 )) $((i*1000)); sleep 0.03; echo "err $i" >&2; sleep 0.03; done',
    'seq 1 30000',
    'sleep 0.03',
    'echo bye >&2',
  ].join('; ');
  // Streams kept apart: what is checked is each stream's bytes, and the combined order.
  t.equal((await uploadCode(api.user, { name: 'chatty', image: TEST_IMAGE, command, log_streams: 'separate' })).status, 200);
  let stdout = '';
  let stderr = '';
  let combined = '';
  for (let i = 1; i <= 20; i++) {
    const out = seq((i - 1) * 1000 + 1, i * 1000);
    stdout += out;
    stderr += `err ${i}\n`;
    combined += `${out}err ${i}\n`;
  }
  stdout += seq(1, 30000);
  stderr += 'bye\n';
  combined += `${seq(1, 30000)}bye\n`;

  const r = await spawnRunnerProcess(t, api, cluster, { GANTRY_RUNNER_FAULT_DROP_LOG_EVERY: '3', LOG_LEVEL: 'debug' });
  const [id] = await queueTasks(api, 'chatty');
  const row = await finalOf(api, id!);
  t.match(row, { status: 'complete', run_times: 1 });
  // The task's result can be recorded before its log is whole; the log completes after.
  const log = await until('the log to be complete', async () => {
    const { rows } = await api.store.db.query<{ log_complete: boolean; log_size: string; log_crc: string }>(
      'SELECT log_complete, log_size, log_crc FROM tasks WHERE id = $1',
      [id],
    );
    return rows[0]!.log_complete ? rows[0]! : undefined;
  }).catch((err) => {
    t.comment(r.output().split('\n').slice(-20).join('\n'));
    throw err;
  });
  t.equal(log.log_complete, true, 'the log is complete: the final length and CRC-32 matched');

  const all = (await api.user.project('GET', `/tasks/${id}/log`)).text;
  t.equal(all.length, combined.length, `the whole log arrived (${combined.length} bytes)`);
  t.ok((await api.user.project('GET', `/tasks/${id}/log`, { query: { stream: 'stdout' } })).text === stdout, 'stdout apart equals the output exactly');
  t.equal((await api.user.project('GET', `/tasks/${id}/log`, { query: { stream: 'stderr' } })).text, stderr, 'stderr apart equals the output exactly');
  // The combined log is the two streams interleaved as Docker delivered them: stored chunks
  // are contiguous from 0 with no gap or overlap, and the CRC-32 the runner computed over
  // what it received matched (log_complete). Docker keeps the write order here unless the
  // machine is very loaded, so byte equality with the write order is only reported.
  const chunks = (
    await api.store.db.query<{ byte_offset: string; data: Uint8Array }>('SELECT byte_offset, data FROM task_log_chunks WHERE task_id = $1 ORDER BY byte_offset', [id])
  ).rows;
  let end = 0;
  for (const c of chunks) {
    if (Number(c.byte_offset) !== end) break;
    end += c.data.length;
  }
  t.equal(end, Buffer.byteLength(combined), 'stored chunks are contiguous and cover the whole log');
  t.equal(Number(log.log_size), Buffer.byteLength(combined));
  t.equal(Number(log.log_crc), crc32(Buffer.from(all)) >>> 0, 'the stored CRC-32 is that of the log served');
  t.comment(all === combined ? 'the combined log equals the output in write order' : 'Docker interleaved stdout and stderr differently from the write order');
  t.equal((await leasesOf(api, id!)).length, 1, 'one lease: the drops cost no rerun');
  const resends = r.output().split('\n').filter((l) => l.includes('"log resend"')).length;
  t.ok(resends > 0, `frames were really dropped and resent (${resends} resends)`);
});
