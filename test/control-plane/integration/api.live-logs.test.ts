/**
 * Live logs with real runner agents and Docker: a task that prints a line every 100 ms,
 * followed through Server-Sent Events, a WebSocket and a plain follow at once, each cut in
 * the middle and resumed (Last-Event-ID, ?offset=), and asserted byte for byte against the
 * stored log with no gap or duplicate. On PGlite one replica; on PostgreSQL two, the runner
 * connected to one and every follower on the other (the fan-out is PostgreSQL's NOTIFY).
 * Also: the 400s, the 426 of a socket route without an upgrade, a token refused before any
 * upgrade, and a follow of a finished task that ends at once.
 */
import t, { type Test } from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane, type ControlPlane } from '../../../control-plane/start.ts';
import { openStore, type Store } from '../../../control-plane/store/index.ts';
import { freshStoreOptions, type Engine } from '../../helpers/db.ts';
import { FAST_TIMERS } from '../../helpers/faults.ts';
import { openWs, sseEvents, type SseEvent } from '../../helpers/live-logs.ts';
import { TEST_IMAGE, startTestRunner, until } from '../../helpers/runner.ts';
import type { TestApi } from '../../helpers/api.ts';

const LINES = 25;
const EXPECTED = Array.from({ length: LINES }, (_, i) => (i % 5 === 4 ? `err ${i} <script>x</script>\n` : `line ${i} é\n`)).join('');
// A line every 100 ms; every fifth on stderr (merged into the combined log in order).
const COMMAND = `i=0; while [ $i -lt ${LINES} ]; do if [ $((i % 5)) -eq 4 ]; then echo "err $i <script>x</script>" >&2; else echo "line $i é"; fi; i=$((i+1)); sleep 0.1; done`;

interface Rig {
  writer: ControlPlane;
  reader: ControlPlane;
  store: Store;
  token: string;
  projectId: string;
}

async function rig(t: Test, engine: Engine): Promise<Rig> {
  const opts = await freshStoreOptions(t, engine);
  const open = async () => {
    const s = await openStore(opts, silentLogger(), systemClock, newId);
    t.teardown(() => s.close());
    return s;
  };
  const start = async (store: Store) => {
    // No safety poll within the test: only notifications deliver.
    const config = loadConfig({
      GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent', ...FAST_TIMERS,
      GANTRY_LOG_FOLLOW_GRACE_MS: '1000', GANTRY_LOG_FOLLOW_POLL_MS: '60000',
    });
    const cp = await startControlPlane(config, silentLogger(), { store, scheduler: false });
    t.teardown(() => cp.stop());
    return cp;
  };
  const store = await open();
  const writer = await start(store);
  // PGlite is one process's database: one replica. PostgreSQL: a second replica on its own pool.
  const reader = engine === 'postgres' ? await start(await open()) : writer;
  const user = await store.accounts.createUser(`live-${engine}@example.com`);
  const project = await store.accounts.createProject(user.id, 'live');
  const { token } = await store.accounts.createToken(user.id, 'live');
  const { cluster, token: ctoken } = await store.clusters.create('default', { memoryMb: 128 });
  // The runner knows only the writer: its log stream reaches the writer alone.
  const runner = await startTestRunner(t, { cp: writer } as TestApi, { cluster: { id: cluster.id, token: ctoken }, env: { GANTRY_RUNNER_SLOTS: '1' } });
  await until('the runner connected', async () => writer.dispatcher.session(runner.agent.runnerId)?.state === 'open');
  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'ticker', image: TEST_IMAGE, command: COMMAND }));
  const res = await fetch(`${writer.url}/2/projects/${project.id}/codes`, { method: 'POST', headers: { Authorization: `OAuth ${token}` }, body: form });
  if (res.status !== 200) throw new Error(`upload: ${res.status} ${await res.text()}`);
  return { writer, reader, store, token, projectId: project.id };
}

async function queue(r: Rig): Promise<string> {
  const res = await fetch(`${r.writer.url}/2/projects/${r.projectId}/tasks`, {
    method: 'POST',
    headers: { Authorization: `OAuth ${r.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ tasks: [{ code_name: 'ticker' }] }),
  });
  return ((await res.json()) as { tasks: { id: string }[] }).tasks[0]!.id;
}

/** Log events of an SSE follow, checked to be contiguous from `from`; stops after `stopAfter` log events (or at the end). */
async function sseRun(t: Test, url: string, headers: Record<string, string>, from: number, stopAfter = Infinity) {
  const ac = new AbortController();
  let text = '';
  let at = from;
  let logs = 0;
  let end: Record<string, unknown> | undefined;
  const seen: SseEvent[] = [];
  for await (const e of sseEvents(url, headers, ac.signal)) {
    seen.push(e);
    if (e.event === 'log') {
      const d = JSON.parse(e.data) as { offset: number; stream: string; text: string };
      if (d.offset !== at) t.fail(`an SSE event starts at ${d.offset}, not at ${at} where the last ended`);
      text += d.text;
      at += Buffer.byteLength(d.text);
      if (Number(e.id) !== at) t.fail(`the event's id ${e.id} is not the offset after it (${at})`);
      if (++logs >= stopAfter) {
        ac.abort();
        break;
      }
    } else if (e.event === 'end') {
      end = JSON.parse(e.data);
    }
  }
  return { text, at, end, seen };
}

for (const engine of ['pglite', 'postgres'] as const) {
  t.test(`live logs on ${engine}${engine === 'postgres' ? ', followed on another replica than the runner’s' : ''}`, async (t) => {
    const r = await rig(t, engine);
    if (engine === 'postgres') {
      // The replicas' listening connections are cut: each listens again by itself.
      const listeners = async () =>
        (await r.store.db.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN "gantry_log"'`)).rows.map((x) => x.pid);
      const before = await until('both replicas listening', async () => ((await listeners()).length === 2 ? listeners() : undefined));
      await r.store.db.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [before]);
      await until('both replicas listening again', async () => {
        const now = await listeners();
        return now.length === 2 && now.every((p) => !before.includes(p));
      });
    }
    const id = await queue(r);
    const base = `${r.reader.url}/2/projects/${r.projectId}/tasks/${id}`;
    const auth = { Authorization: `OAuth ${r.token}` };

    const sse = (async () => {
      const first = await sseRun(t, `${base}/log`, auth, 0, 5);
      t.equal(first.seen[0]?.event, 'start', 'the first event says what is followed');
      const running = (await (await fetch(`${base}`, { headers: auth })).json()) as { status: string };
      t.equal(running.status, 'running', 'lines arrived while the task ran');
      // Cut, then resumed as EventSource does: Last-Event-ID is the id of the last event seen.
      const rest = await sseRun(t, `${base}/log`, { ...auth, 'Last-Event-ID': String(first.at) }, first.at);
      return { text: first.text + rest.text, end: rest.end };
    })();

    const ws = (async () => {
      const url = `${base.replace('http', 'ws')}/log/ws`;
      const a = await openWs(url, auth);
      await a.received(4);
      a.close();
      await a.closed;
      const got = a.messages.join('');
      // Resumed from the bytes received, with ?oauth= instead of the header.
      const b = await openWs(`${url}?offset=${Buffer.byteLength(got)}&oauth=${r.token}`);
      const closed = await b.closed;
      t.same(closed, { code: 1000, reason: 'done' }, 'the socket closes with reason done once the task is final');
      return got + b.messages.join('');
    })();

    const plain = (async () => {
      const res = await fetch(`${base}/log?follow=1`, { headers: auth });
      t.match(res.headers.get('content-type'), /^text\/plain/);
      return res.text();
    })();

    const [s, w, p] = await Promise.all([sse, ws, plain]);
    const stored = await (await fetch(`${base}/log`, { headers: auth })).text();
    t.equal(stored, EXPECTED, 'the stored log is what the task printed');
    t.equal(s.text, EXPECTED, 'SSE, cut and resumed: the whole log, byte for byte, no gap, no duplicate');
    t.match(s.end, { status: 'complete', size: Buffer.byteLength(EXPECTED) }, 'the last event says the outcome');
    t.equal(w, EXPECTED, 'WebSocket, cut and resumed: the whole log, byte for byte');
    t.equal(p, EXPECTED, 'the plain follow: the whole log, then the reply ends');

    // The execution's own log, followed after the end: everything at once, then the end.
    const e1 = await sseRun(t, `${base}/executions/1/log`, auth, 0);
    t.equal(e1.text, EXPECTED);
    t.match(e1.end, { status: 'complete', log_complete: true });
    const e1ws = await openWs(`${base.replace('http', 'ws')}/executions/1/log/ws?format=json&stream=stdout`, auth);
    t.same((await e1ws.closed).reason, 'done');
    const msgs = e1ws.messages.map((m) => JSON.parse(m) as { type: string; text?: string });
    t.equal(msgs[0]!.type, 'start');
    t.equal(msgs.at(-1)!.type, 'end');
    // The package merges stderr into stdout (log_streams: merged, the default): stdout is all of it.
    t.equal(msgs.filter((m) => m.type === 'log').map((m) => m.text).join(''), EXPECTED, 'one stream alone');
    t.equal((await sseRun(t, `${base}/log`, { ...auth, 'Last-Event-ID': '0' }, 0)).text, EXPECTED);
    t.equal(await (await fetch(`${base}/log?follow=1&stream=stderr`, { headers: auth })).text(), '', 'stderr alone: nothing');
    t.equal(await (await fetch(`${base}/log?follow=1&offset=${Buffer.byteLength(EXPECTED) - 8}`, { headers: auth })).text(), EXPECTED.slice(-8), 'from an offset');

    // Bad input: a clear 400 naming the field; a socket route without an upgrade: 426.
    const bad = await fetch(`${base}/log?follow=1&offset=-1`, { headers: auth });
    t.equal(bad.status, 400);
    t.match(await bad.text(), /offset/);
    const badId = await fetch(`${base}/log`, { headers: { ...auth, Accept: 'text/event-stream', 'Last-Event-ID': 'x1' } });
    t.equal(badId.status, 400);
    t.match(((await badId.json()) as { msg: string }).msg, /^Last-Event-ID must be a byte offset/);
    const noUpgrade = await fetch(`${base}/log/ws`, { headers: auth });
    t.equal(noUpgrade.status, 426);
    t.match(((await noUpgrade.json()) as { msg: string }).msg, /WebSocket/);
    const refused = (url: string, h: Record<string, string>) => openWs(url, h).then(() => 0, (err: { status?: number }) => err.status);
    t.equal(await refused(`${base.replace('http', 'ws')}/log/ws`, { Authorization: 'OAuth nope' }), 401, 'a bad token is refused before the upgrade');
    t.equal(await refused(`${base.replace('http', 'ws')}/log/ws?offset=x`, auth), 400, 'a bad offset too');
    await until('every follow released', async () => r.reader.feed.counts().followers === 0 && r.writer.feed.counts().followers === 0);
  });
}
