// The log store on both engines: contiguous appends, duplicates and gaps answered with the
// committed offset, the final frame's length and CRC closing the log (or dropping it for a
// resend when the CRC disagrees), frames of a lease whose Accept is not processed yet, and
// (on PostgreSQL) concurrent writers of one log racing through the compare-and-set.
import t from 'tap';
import { crc32 } from '../../../lib/crc32.ts';
import { ManualClock } from '../../../lib/clock.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';
import { leaseFor, logFrame as frame } from '../../helpers/claims.ts';

for (const engine of ENGINES) {
  t.test(`log store on ${engine}`, async (t) => {
    const store = await freshStore(t, engine, new ManualClock(Date.UTC(2026, 5, 1)));

    t.test('appends, duplicates, gaps, and a final frame that closes the log', async (t) => {
      const l = await leaseFor(store, 'logs-a');
      // The lease is still `offered` (its Accept not processed): the frames are stored.
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 0, 'hello '), frame(l, 6, 'world')]), [
        { committed: 6, stop: false, complete: false },
        { committed: 11, stop: false, complete: false },
      ]);
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 0, 'hello ')]), [{ committed: 11, stop: false, complete: false }], 'a duplicate is acknowledged');
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 20, 'later')]), [{ committed: 11, stop: false, complete: false }], 'a gap is answered with the committed offset');
      const whole = Buffer.from('hello world!');
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 11, '!', { totalBytes: 12, crc: crc32(whole) })]), [{ committed: 12, stop: false, complete: true }], 'data and the final length and CRC in one frame');
      t.equal((await store.tasks.log(l.taskId)).toString(), 'hello world!');
      t.match(await store.tasks.get((await store.db.query<{ project_id: string }>('SELECT project_id FROM tasks WHERE id = $1', [l.taskId])).rows[0]!.project_id, l.taskId), { logSize: 12 });
      t.same(await store.logs.appendMany('another-runner', [frame(l, 12, 'x')]), [{ committed: 0, stop: true, complete: false }], "another runner's frames are refused");
    });

    t.test('a final frame whose CRC disagrees drops the log for a whole resend', async (t) => {
      const l = await leaseFor(store, 'logs-b');
      await store.logs.appendMany(l.runnerId, [frame(l, 0, 'abc')]);
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 3, '', { totalBytes: 3, crc: 12345 })]), [{ committed: 0, stop: false, complete: false }]);
      t.equal((await store.tasks.log(l.taskId)).length, 0, 'nothing stored');
      t.same(await store.logs.appendMany(l.runnerId, [frame(l, 0, 'abc', { totalBytes: 3, crc: crc32(Buffer.from('abc')) })]), [{ committed: 3, stop: false, complete: true }], 'the resend completes it');
      t.equal((await store.tasks.log(l.taskId)).toString(), 'abc');
    });

    if (engine === 'postgres') {
      t.test('concurrent writers of one log: each byte stored once', async (t) => {
        const l = await leaseFor(store, 'logs-c');
        const parts = Array.from({ length: 20 }, (_, i) => `part-${String(i).padStart(2, '0')};`);
        let offset = 0;
        const frames = parts.map((p) => {
          const f = frame(l, offset, p);
          offset += p.length;
          return f;
        });
        // Four streams deliver the same frames at once, each in its own bursts.
        await Promise.all(
          Array.from({ length: 4 }, async () => {
            for (let i = 0; i < frames.length; i += 4) await store.logs.appendMany(l.runnerId, frames.slice(i, i + 4));
          }),
        );
        t.equal((await store.tasks.log(l.taskId)).toString(), parts.join(''), 'the log holds each part once, in order');
        const n = (await store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM task_log_chunks WHERE task_id = $1', [l.taskId])).rows[0]!.n;
        t.equal(n, parts.length, 'one chunk per part');
      });
    }
  });
}
