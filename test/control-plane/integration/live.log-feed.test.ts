/**
 * The live-log feed on both engines, with the store written as a runner's log stream writes
 * it and the feed woken by the real notification: a follower that stops reading while the
 * log grows past the in-memory window is told `behind` (at its offset, with the log's size),
 * reads the rest from the store byte for byte with no gap or duplicate, and is live again
 * from the window afterwards; another follower of the same log meanwhile gets every byte as
 * it is written, whatever the stalled one does; both end with the task, the log whole.
 * Then through a control plane: a line shown to several WebSocket and SSE followers is the
 * same for each, and log bytes that are not UTF-8 reach a WebSocket text frame as
 * replacement characters (a text frame must be UTF-8), as they reach SSE.
 */
import t from 'tap';
import { crc32 } from '../../../lib/crc32.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { LogFeed, type FollowEvent } from '../../../control-plane/live/log-feed.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';
import { leaseFor, logFrame } from '../../helpers/claims.ts';
import { startTestApi } from '../../helpers/api.ts';
import { openWs, sseEvents } from '../../helpers/live-logs.ts';

const WINDOW = 64 * 1024;
const PIECE = 4096;
const PIECES = 40; // 160 KiB: two and a half windows

/** Piece i's bytes: its number over and over, so a byte out of place shows. */
const piece = (i: number) => Buffer.alloc(PIECE, `${String(i).padStart(3, '0')}|`);

for (const engine of ENGINES) {
  t.test(`a follower behind the window on ${engine}`, async (t) => {
    const store = await freshStore(t, engine);
    const feed = new LogFeed(store.db, { pollMs: 60_000, graceMs: 3000, maxMs: 60_000, bufferBytes: WINDOW }, silentLogger());
    await feed.start();
    t.teardown(() => feed.stop());
    const l = await leaseFor(store, `feed-${engine}`);
    const key = { leaseId: l.leaseId, attempt: l.attempt };
    t.ok((await store.leases.acceptMany(l.runnerId, [key], 60_000)).has(l.leaseId), 'accepted');
    t.ok((await store.leases.startedMany(l.runnerId, [{ ...key, containerId: 'c1', startedAt: new Date() }], 60_000)).has(l.leaseId), 'running');
    const written: Buffer[] = [];
    const write = async (data: Buffer, final = false) => {
      const offset = written.reduce((n, b) => n + b.length, 0);
      written.push(data);
      const whole = Buffer.concat(written);
      const [r] = await store.logs.appendMany(l.runnerId, [logFrame(l, offset, data, final ? { totalBytes: whole.length, crc: crc32(whole) } : undefined)]);
      if (r!.committed !== whole.length) t.fail(`stored up to ${r!.committed}, not ${whole.length}`);
    };
    const stop = new AbortController();
    t.teardown(() => stop.abort());
    /** The data a follower yields until it has `upTo` bytes, checked contiguous from `from`. */
    const readTo = async (f: AsyncGenerator<FollowEvent>, from: number, upTo: number, seen: FollowEvent[] = []) => {
      const parts: Buffer[] = [];
      let pos = from;
      while (pos < upTo) {
        const { value, done } = await f.next();
        if (done) throw new Error(`the follow ended at ${pos} of ${upTo}`);
        seen.push(value);
        if (value.kind !== 'data') continue;
        if (value.offset !== pos) throw new Error(`a piece at ${value.offset}, expected ${pos}: a gap or a duplicate`);
        parts.push(value.data);
        pos += value.data.length;
      }
      return Buffer.concat(parts);
    };

    await write(Buffer.from('first line\n'));
    const slow = feed.follow(l.taskId, l.attempt, 0, stop.signal);
    const head = await readTo(slow, 0, 11);
    t.equal(head.toString(), 'first line\n', 'the slow follower reads the first line, then stops reading');

    // Another follower from the same point keeps up while the log grows by 160 KiB.
    const quick = feed.follow(l.taskId, l.attempt, 0, stop.signal);
    t.equal((await readTo(quick, 0, 11)).toString(), 'first line\n');
    for (let i = 0; i < PIECES; i++) {
      await write(piece(i));
      // Each piece reaches the quick follower as it is written (through the notification).
      const got = await readTo(quick, 11 + i * PIECE, 11 + (i + 1) * PIECE);
      if (!got.equals(piece(i))) t.fail(`piece ${i} reached the quick follower changed`);
    }
    const size = 11 + PIECES * PIECE;
    t.pass(`the quick follower had all ${size} bytes live while the slow one read nothing`);
    t.same(feed.counts(), { logs: 1, followers: 2 }, 'one shared tail, two followers');

    // The slow one now reads on: it is told it fell out of the window, then gets every byte.
    const events: FollowEvent[] = [];
    const rest = await readTo(slow, 11, size, events);
    const behind = events.find((e) => e.kind === 'behind');
    t.same(behind, { kind: 'behind', offset: 11, size }, 'told: behind, at its offset, with the log size');
    t.equal(events.indexOf(behind!), 0, 'before any byte it reads from the store');
    t.equal(events.filter((e) => e.kind === 'behind').length, 1, 'told once');
    t.ok(rest.equals(Buffer.concat(written).subarray(11)), 'every byte from the store, in order, no gap, no duplicate');

    // Caught up, it is live again: a new line reaches both.
    await write(Buffer.from('after\n'));
    t.equal((await readTo(slow, size, size + 6)).toString(), 'after\n', 'the slow follower, caught up, reads live again');
    t.equal((await readTo(quick, size, size + 6)).toString(), 'after\n');

    // The log's last frame, then the task's end: both followers end, the log whole.
    await write(Buffer.from('bye\n'), true);
    const total = size + 10;
    const done = { ...key, outcome: 'succeeded' as const, exitCode: 0, oomKilled: false, msg: '', startedAt: Date.now(), finishedAt: Date.now() };
    t.same((await store.outcomes.completeMany(l.runnerId, [done], { leaseTtlMs: 60_000, runnerLossBudget: 2 })).dispositions, ['recorded'], 'the task completes');
    for (const [name, f] of [['slow', slow], ['quick', quick]] as const) {
      t.equal((await readTo(f, size + 6, total)).toString(), 'bye\n', `${name}: the last line`);
      t.same((await f.next()).value, { kind: 'end', status: 'complete', size: total, logComplete: true }, `${name}: the end, the log whole`);
      t.equal((await f.next()).done, true);
    }
    t.same(feed.counts(), { logs: 0, followers: 0 }, 'nothing left followed');
  });
}

t.test('WebSocket and SSE followers get the same text; bytes that are not UTF-8 as replacement characters', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const l = await leaseFor(api.store, 'feed-ws');
  const { token } = await api.store.accounts.createToken(l.userId);
  const base = `${api.url}/2/projects/${l.projectId}/tasks/${l.taskId}/log`;
  const auth = { Authorization: `OAuth ${token}` };
  const sockets = await Promise.all([0, 1, 2].map(() => openWs(`${base.replace('http', 'ws')}/ws`, auth)));
  const stop = new AbortController();
  t.teardown(() => stop.abort());
  const sse = sseEvents(base, auth, stop.signal);
  t.equal((await sse.next()).value?.event, 'start');
  const text = Buffer.concat([Buffer.from('ok é '), Buffer.from([0xff, 0xfe]), Buffer.from(' end\n')]);
  const [r] = await api.store.logs.appendMany(l.runnerId, [logFrame(l, 0, text)]);
  t.equal(r!.committed, text.length);
  for (const s of sockets) await s.received(1);
  t.same(sockets.map((s) => s.messages), [0, 1, 2].map(() => ['ok é \ufffd\ufffd end\n']), 'each socket: the line, the bad bytes replaced');
  const ev = (await sse.next()).value!;
  t.same(JSON.parse(ev.data), { offset: 0, stream: 'stdout', text: 'ok é \ufffd\ufffd end\n' }, 'SSE: the same text');
  t.equal(ev.id, String(text.length), 'its id the byte offset after it');
  const good = Buffer.from('plain line\n');
  await api.store.logs.appendMany(l.runnerId, [logFrame(l, text.length, good)]);
  for (const s of sockets) await s.received(2);
  t.same(sockets.map((s) => s.messages[1]), ['plain line\n', 'plain line\n', 'plain line\n'], 'a UTF-8 line as it is');
  for (const s of sockets) s.close();
});
