import t, { type Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { ENGINES, type Engine } from '../../helpers/db.ts';
import { startTestApi, type ApiUser, type Reply, type TestApi } from '../../helpers/api.ts';
import { codeOk, isError } from '../../helpers/assert.ts';
import { claimableIds, probeClaim } from '../../helpers/claims.ts';

/**
 * The Tasks endpoints of the IronWorker v2 API over HTTP, on both engines. One control
 * plane per engine (a fresh database with a virtual clock and a long-running cluster
 * configured); each subtest uses its own code packages, and list tests their own project,
 * so subtests do not see each other's tasks.
 */

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const ID = /^[0-9a-f]{24}$/;

async function taskCount(api: TestApi): Promise<number> {
  return (await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks')).rows[0]!.n;
}

async function row(api: TestApi, id: string): Promise<Record<string, any>> {
  const r = await api.store.db.query<Record<string, any>>('SELECT * FROM tasks WHERE id = $1', [id]);
  if (!r.rows[0]) throw new Error(`no task row ${id}`);
  return r.rows[0];
}

async function setStatus(api: TestApi, id: string, status: string) {
  await api.store.db.query('UPDATE tasks SET status = $2 WHERE id = $1', [id, status]);
}

async function queue(u: ApiUser, tasks: unknown[]): Promise<Reply> {
  return u.project('POST', '/tasks', { json: { tasks } });
}

async function queueOne(t: Test, u: ApiUser, task: Record<string, unknown>): Promise<string> {
  const r = await queue(u, [task]);
  t.equal(r.status, 200, r.text);
  return r.body.tasks[0].id;
}

function ids(r: Reply): string[] {
  return (r.body.tasks as { id: string }[]).map((x) => x.id);
}

for (const engine of ENGINES) {
  t.test(`tasks API on ${engine}`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1, 12, 0, 0));
    const api = await startTestApi(t, engine as Engine, { clock, env: { GANTRY_CLUSTER_MAX_TIMEOUTS: 'long=86400' } });
    const u = api.user;
    // The operator's clusters the tasks below name (a name no cluster has is refused).
    for (const name of ['high-mem', 'long', 'other', `delay-${engine}`, `prio-${engine}`]) await api.store.clusters.create(name);

    t.test('queue: several tasks in one request', async (t) => {
      const c = await codeOk(t, u, 'q-many');
      const before = await taskCount(api);
      const r = await queue(u, [
        { code_name: 'q-many', payload: '{"n":1}' },
        { code_name: 'q-many', payload: '{"n":2}', priority: 1, label: 'second' },
        { code_name: 'q-many', payload: 'three', cluster: 'high-mem', timeout: 60, delay: 5 },
      ]);
      t.equal(r.status, 200, r.text);
      t.match(r.headers.get('content-type') ?? '', /application\/json/);
      t.same(Object.keys(r.body), ['msg', 'tasks']);
      t.equal(r.body.msg, 'Queued up');
      t.equal(r.body.tasks.length, 3);
      for (const x of r.body.tasks) {
        t.same(Object.keys(x), ['id']);
        t.match(x.id, ID);
      }
      t.equal(new Set(ids(r)).size, 3, 'distinct ids');
      t.equal(await taskCount(api), before + 3);
      const [a, b, c3] = await Promise.all(ids(r).map((id) => row(api, id)));
      t.match(a, { code_id: c.id, code_name: 'q-many', status: 'queued', payload: '{"n":1}', priority: 0, cluster: 'default', timeout: 3600, delay: 0, label: null });
      t.match(b, { payload: '{"n":2}', priority: 1, label: 'second', cluster: 'default' });
      t.match(c3, { payload: 'three', cluster: 'high-mem', timeout: 60, delay: 5 });
      t.equal(new Date(c3!.eligible_at).getTime(), clock.now().getTime() + 5000, 'eligible_at = created_at + delay');
    });

    t.test('queue: all or nothing', async (t) => {
      await codeOk(t, u, 'q-aon');
      const before = await taskCount(api);
      const cases: { tasks: unknown[]; status: number; re: RegExp }[] = [
        { tasks: [{ code_name: 'q-aon' }, { code_name: 'no-such-code' }], status: 404, re: /tasks\[1\]\.code_name.*no-such-code/ },
        { tasks: [{ code_name: 'q-aon' }, { payload: 'x' }], status: 400, re: /^tasks\[1\]\.code_name is required/ },
        { tasks: [{ code_name: 'q-aon' }, { code_name: '' }], status: 400, re: /^tasks\[1\]\.code_name is required/ },
        { tasks: [{ code_name: 'q-aon' }, { code_name: 42 }], status: 400, re: /^tasks\[1\]\.code_name must be a string/ },
        { tasks: [{ code_name: 'q-aon' }, { code_name: 'q-aon' }, { code_name: 'q-aon', priority: 3 }], status: 400, re: /^tasks\[2\]\.priority .*0 to 2/ },
        { tasks: [{ code_name: 'q-aon' }, 'not an object'], status: 400, re: /^tasks\[1\] must be an object/ },
        { tasks: [{ code_name: 'q-aon' }, null], status: 400, re: /^tasks\[1\] must be an object/ },
        { tasks: [{ code_name: 'q-aon', payload: 'x'.repeat(65537) }, { code_name: 'q-aon' }], status: 400, re: /^tasks\[0\]\.payload .*65536/ },
      ];
      for (const c of cases) {
        isError(t, await queue(u, c.tasks), c.status, c.re);
      }
      t.equal(await taskCount(api), before, 'no row inserted by any refused request');
    });

    t.test('queue: the request itself', async (t) => {
      await codeOk(t, u, 'q-req');
      const before = await taskCount(api);
      isError(t, await u.project('POST', '/tasks', { json: {} }), 400, /^tasks is required/);
      isError(t, await u.project('POST', '/tasks', { json: { tasks: [] } }), 400, /^tasks is required/);
      isError(t, await u.project('POST', '/tasks', { json: { tasks: { code_name: 'q-req' } } }), 400, /^tasks is required/);
      isError(t, await u.project('POST', '/tasks', { json: [{ code_name: 'q-req' }] }), 400, /JSON object/);
      const tooMany = Array.from({ length: 1001 }, () => ({ code_name: 'q-req' }));
      isError(t, await u.project('POST', '/tasks', { json: { tasks: tooMany } }), 400, /at most 1000/);
      isError(
        t,
        await u.project('POST', '/tasks', { body: '{"tasks":[{"code_name":"q-req"', headers: { 'Content-Type': 'application/json' } }),
        400,
        /not valid JSON/,
      );
      // IronWorker: without Content-Type: application/json the reply is 406.
      const body = JSON.stringify({ tasks: [{ code_name: 'q-req' }] });
      isError(t, await u.project('POST', '/tasks', { body, headers: { 'Content-Type': 'text/plain' } }), 406, /application\/json/);
      isError(t, await u.project('POST', '/tasks', { body }), 406, /application\/json/);
      t.equal(await taskCount(api), before);
      // a charset parameter is fine
      const ok = await u.project('POST', '/tasks', { body, headers: { 'Content-Type': 'application/json; charset=utf-8' } });
      t.equal(ok.status, 200, ok.text);
      t.equal(await taskCount(api), before + 1);
    });

    t.test('queue: payload', async (t) => {
      await codeOk(t, u, 'q-payload');
      const before = await taskCount(api);
      // 65536 bytes exactly (two-byte characters: the limit counts bytes, not characters)
      const max = 'é'.repeat(32768);
      const id = await queueOne(t, u, { code_name: 'q-payload', payload: max });
      t.equal((await row(api, id)).payload, max);
      isError(t, await queue(u, [{ code_name: 'q-payload', payload: max + 'a' }]), 400, /^tasks\[0\]\.payload must be at most 65536 bytes, got 65537/);
      isError(t, await queue(u, [{ code_name: 'q-payload', payload: { x: 1 } }]), 400, /^tasks\[0\]\.payload must be a string/);
      isError(t, await queue(u, [{ code_name: 'q-payload', payload: 12 }]), 400, /^tasks\[0\]\.payload must be a string/);
      isError(t, await queue(u, [{ code_name: 'q-payload', payload: ['a'] }]), 400, /^tasks\[0\]\.payload must be a string/);
      // PostgreSQL text cannot hold NUL: a client error, never a 500
      isError(t, await queue(u, [{ code_name: 'q-payload', payload: 'a\u0000b' }]), 400, /^tasks\[0\]\.payload .*NUL/);
      isError(t, await queue(u, [{ code_name: 'q-payload', label: 'a\u0000b' }]), 400, /^tasks\[0\]\.label .*NUL/);
      isError(t, await queue(u, [{ code_name: 'q-payload\u0000' }]), 400, /^tasks\[0\]\.code_name .*NUL/);
      t.equal(await taskCount(api), before + 1);
      // omitted payload: an empty string
      const empty = await queueOne(t, u, { code_name: 'q-payload' });
      t.equal((await row(api, empty)).payload, '');
      const g = await u.project('GET', `/tasks/${empty}`);
      t.equal(g.body.payload, '');
    });

    t.test('queue: priority defaults to the code package default', async (t) => {
      await codeOk(t, u, 'q-prio0');
      await codeOk(t, u, 'q-prio2', { default_priority: 2 });
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-prio0' }))).priority, 0);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-prio2' }))).priority, 2);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-prio2', priority: 0 }))).priority, 0);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-prio0', priority: 1 }))).priority, 1);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-prio0', priority: 2 }))).priority, 2);
      const before = await taskCount(api);
      for (const p of [3, -1, 1.5, 'high', true]) {
        isError(t, await queue(u, [{ code_name: 'q-prio0', priority: p }]), 400, /^tasks\[0\]\.priority must be an integer from 0 to 2/);
      }
      t.equal(await taskCount(api), before);
    });

    t.test('queue: cluster', async (t) => {
      await codeOk(t, u, 'q-cluster');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-cluster' }))).cluster, 'default');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-cluster', cluster: '' }))).cluster, 'default');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-cluster', cluster: 'high-mem' }))).cluster, 'high-mem');
      const queuedBefore = await taskCount(api);
      isError(t, await queue(u, [{ code_name: 'q-cluster' }, { code_name: 'q-cluster', cluster: 'no-such-pool' }]), 400,
        /^tasks\[1\]\.cluster: no cluster named "no-such-pool"; create it with POST \/2\/clusters, or use "default"$/);
      isError(t, await u.project('POST', '/tasks/webhook?code_name=q-cluster&cluster=no-such-pool', { body: 'x' }), 400, /^cluster: no cluster named "no-such-pool"/);
      t.equal(await taskCount(api), queuedBefore, 'a task naming a cluster no one has would wait forever: refused, and nothing of the request is queued');
      const before = await taskCount(api);
      for (const c of ['bad name', 'a/b', 'x'.repeat(65), 'ü']) {
        isError(t, await queue(u, [{ code_name: 'q-cluster', cluster: c }]), 400, /^tasks\[0\]\.cluster /);
      }
      isError(t, await queue(u, [{ code_name: 'q-cluster', cluster: 7 }]), 400, /^tasks\[0\]\.cluster must be a string/);
      t.equal(await taskCount(api), before);
    });

    t.test('queue: timeout', async (t) => {
      await codeOk(t, u, 'q-timeout');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout' }))).timeout, 3600, 'default 3600');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout', timeout: 1 }))).timeout, 1);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout', timeout: 3600 }))).timeout, 3600);
      // a named long-running cluster has a higher ceiling (GANTRY_CLUSTER_MAX_TIMEOUTS)
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout', cluster: 'long', timeout: 7200 }))).timeout, 7200);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout', cluster: 'long', timeout: 86400 }))).timeout, 86400);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-timeout', cluster: 'long' }))).timeout, 3600, 'default stays 3600');
      const before = await taskCount(api);
      isError(t, await queue(u, [{ code_name: 'q-timeout', timeout: 7200 }]), 400, /^tasks\[0\]\.timeout must be an integer from 1 to 3600, got 7200/);
      isError(t, await queue(u, [{ code_name: 'q-timeout', cluster: 'default', timeout: 3601 }]), 400, /^tasks\[0\]\.timeout .*3600/);
      isError(t, await queue(u, [{ code_name: 'q-timeout', cluster: 'other', timeout: 7200 }]), 400, /^tasks\[0\]\.timeout .*3600/);
      isError(t, await queue(u, [{ code_name: 'q-timeout', cluster: 'long', timeout: 86401 }]), 400, /^tasks\[0\]\.timeout must be an integer from 1 to 86400/);
      isError(t, await queue(u, [{ code_name: 'q-timeout', timeout: 0 }]), 400, /^tasks\[0\]\.timeout /);
      isError(t, await queue(u, [{ code_name: 'q-timeout', timeout: -5 }]), 400, /^tasks\[0\]\.timeout /);
      isError(t, await queue(u, [{ code_name: 'q-timeout', timeout: 'soon' }]), 400, /^tasks\[0\]\.timeout /);
      t.equal(await taskCount(api), before);
    });

    t.test('queue: delay and label', async (t) => {
      await codeOk(t, u, 'q-delay');
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-delay' }))).delay, 0);
      t.equal((await row(api, await queueOne(t, u, { code_name: 'q-delay', delay: 604800 }))).delay, 604800);
      const labelled = await queueOne(t, u, { code_name: 'q-delay', label: 'nightly run' });
      t.equal((await row(api, labelled)).label, 'nightly run');
      t.equal((await u.project('GET', `/tasks/${labelled}`)).body.label, 'nightly run');
      const before = await taskCount(api);
      isError(t, await queue(u, [{ code_name: 'q-delay', delay: 604801 }]), 400, /^tasks\[0\]\.delay must be an integer from 0 to 604800/);
      isError(t, await queue(u, [{ code_name: 'q-delay', delay: -1 }]), 400, /^tasks\[0\]\.delay /);
      isError(t, await queue(u, [{ code_name: 'q-delay', label: 'x'.repeat(256) }]), 400, /^tasks\[0\]\.label must be at most 255 bytes/);
      isError(t, await queue(u, [{ code_name: 'q-delay', label: 5 }]), 400, /^tasks\[0\]\.label must be a string/);
      t.equal(await taskCount(api), before);
    });

    t.test('queue from a webhook', async (t) => {
      await codeOk(t, u, 'hook');
      await codeOk(t, u, 'hook-p2', { default_priority: 2 });
      const hook = (body: string | Buffer | undefined, query: Record<string, string | number> = {}, headers: Record<string, string> = {}) =>
        u.project('POST', '/tasks/webhook', { query: { code_name: 'hook', ...query }, ...(body === undefined ? {} : { body }), headers });
      const payloadOf = async (r: Reply) => {
        t.equal(r.status, 200, r.text);
        t.same(Object.keys(r.body), ['id', 'msg']);
        t.match(r.body.id, ID);
        t.equal(r.body.msg, 'Queued up.');
        return (await row(api, r.body.id)).payload as string;
      };
      // the raw body, byte for byte, whatever its content type
      const json = '{ "ref" : "refs/heads/main",\n  "commits": [] }\n';
      t.equal(await payloadOf(await hook(json, {}, { 'Content-Type': 'application/json' })), json);
      const text = 'héllo wörld ✓ \r\n\ttabs  ';
      t.equal(await payloadOf(await hook(text, {}, { 'Content-Type': 'text/plain; charset=utf-8' })), text);
      const form = 'a=1&b=%20x+y&c=';
      t.equal(await payloadOf(await hook(form, {}, { 'Content-Type': 'application/x-www-form-urlencoded' })), form);
      const xml = '<?xml version="1.0"?><a b="c"/>';
      t.equal(await payloadOf(await hook(Buffer.from(xml), {}, { 'Content-Type': 'application/xml' })), xml);
      // no content type at all
      t.equal(await payloadOf(await hook(Buffer.from('no type'))), 'no type');
      t.equal(await payloadOf(await hook(undefined)), '', 'empty body: empty payload');
      // a byte order mark is part of the body too
      const bom = Buffer.from([0xef, 0xbb, 0xbf, 0x7b, 0x7d, 0x0a]);
      const bomId = (await hook(bom, {}, { 'Content-Type': 'application/json' })).body.id as string;
      const stored = await api.store.db.query<{ hex: string }>(
        `SELECT encode(convert_to(payload, 'UTF8'), 'hex') AS hex FROM tasks WHERE id = $1`,
        [bomId],
      );
      t.equal(stored.rows[0]!.hex, bom.toString('hex'), 'BOM stored');
      // PGlite's own protocol parser drops a leading BOM; the store puts it back (store/db.ts)
      t.same(Buffer.from((await row(api, bomId)).payload), bom, 'BOM read back');
      const bomGet = await u.project('GET', `/tasks/${bomId}`);
      t.equal(bomGet.status, 200);
      t.same(Buffer.from(bomGet.body.payload as string), bom, 'BOM read back over the API');
      // Any text column, in or out of a transaction, next to NULLs and BOMs that do not lead.
      const echo = 'SELECT $1::text AS a, $2::varchar AS b, NULL::text AS c, $3::text AS d, $4::jsonb AS e';
      const args = ['\uFEFF', '\uFEFF\uFEFFx', 'x\uFEFF', '"\uFEFF"'];
      const want = { a: '\uFEFF', b: '\uFEFF\uFEFFx', c: null, d: 'x\uFEFF', e: '\uFEFF' };
      t.same((await api.store.db.query(echo, args)).rows, [want], 'every text column keeps a leading BOM');
      t.same(await api.store.db.tx(async (q) => (await q.query(echo, args)).rows), [want], 'inside a transaction too');
      // the payload reads back unchanged over the API too
      const r = await hook(text, {}, { 'Content-Type': 'text/plain' });
      t.equal((await u.project('GET', `/tasks/${r.body.id}`)).body.payload, text);

      // options come from the query
      const opts = await hook('x', { priority: 2, delay: 10, cluster: 'high-mem', timeout: 120 });
      t.match(await row(api, opts.body.id), { code_name: 'hook', priority: 2, delay: 10, cluster: 'high-mem', timeout: 120, status: 'queued' });
      t.match(await row(api, (await hook('x', { cluster: 'long', timeout: 7200 })).body.id), { cluster: 'long', timeout: 7200 });
      t.match(await row(api, (await hook('x')).body.id), { priority: 0, delay: 0, cluster: 'default', timeout: 3600 });
      t.match(await row(api, (await hook('x', { code_name: 'hook-p2' })).body.id), { code_name: 'hook-p2', priority: 2 });

      const before = await taskCount(api);
      isError(t, await u.project('POST', '/tasks/webhook', { body: 'x' }), 400, /^code_name is required/);
      isError(t, await hook('x', { code_name: 'nope' }), 404, /^code_name: .*nope/);
      isError(t, await hook('x', { priority: 5 }), 400, /^priority must be an integer from 0 to 2/);
      isError(t, await hook('x', { timeout: 7200 }), 400, /^timeout .*3600/);
      isError(t, await hook('x', { delay: 604801 }), 400, /^delay /);
      isError(t, await hook('x', { cluster: 'no spaces' }), 400, /^cluster /);
      // over 64 KB: 413
      const max = Buffer.alloc(65536, 'a');
      isError(t, await hook(Buffer.concat([max, Buffer.from('b')])), 413, /65536/);
      isError(t, await hook(Buffer.alloc(200 * 1024, 'z')), 413, /65536/);
      // chunked, without a Content-Length to refuse early on: the limit holds while reading
      const chunked = async (total: number) => {
        const chunk = new Uint8Array(8192).fill(0x61);
        let sent = 0;
        const body = new ReadableStream<Uint8Array>({
          pull(c) {
            if (sent >= total) return c.close();
            const n = Math.min(chunk.length, total - sent);
            sent += n;
            c.enqueue(chunk.subarray(0, n));
          },
        });
        const res = await fetch(`${api.url}/2/projects/${u.projectId}/tasks/webhook?code_name=hook`, {
          method: 'POST',
          headers: { Authorization: `OAuth ${u.token}`, 'Content-Type': 'application/octet-stream' },
          body,
          duplex: 'half',
        } as RequestInit);
        return { status: res.status, body: (await res.json()) as { msg?: string; id?: string } };
      };
      const big = await chunked(65537);
      t.equal(big.status, 413, JSON.stringify(big.body));
      t.match(big.body, { msg: /65536/ });
      // bytes that text cannot hold are refused, not mangled or a 500
      isError(t, await hook(Buffer.from([0x61, 0xff, 0x62])), 400, /UTF-8/);
      isError(t, await hook(Buffer.from([0x61, 0x00, 0x62])), 400, /NUL/);
      t.equal(await taskCount(api), before, 'nothing queued by refused webhooks');
      t.equal(await payloadOf(await hook(max)), max.toString(), 'exactly 64 KB is accepted');
      const fits = await chunked(65536);
      t.equal(fits.status, 200, JSON.stringify(fits.body));
      t.equal((await row(api, fits.body.id!)).payload, 'a'.repeat(65536), 'exactly 64 KB, chunked');
    });

    t.test('list', async (t) => {
      const lu = await api.newUser();
      await codeOk(t, lu, 'list-a');
      await codeOk(t, lu, 'list-b');
      const empty = await lu.project('GET', '/tasks');
      t.equal(empty.status, 200);
      t.same(empty.body, { tasks: [] }, 'a project without tasks: an empty list, as JSON');

      // three batches, 100 s apart on the virtual clock
      const t0 = clock.now();
      const a = ids(await queue(lu, [{ code_name: 'list-a', payload: 'p' }, { code_name: 'list-b', payload: 'p' }]));
      clock.advance(100_000);
      const t1 = clock.now();
      const b = ids(await queue(lu, [{ code_name: 'list-a', payload: 'p' }, { code_name: 'list-a', payload: 'p' }]));
      clock.advance(100_000);
      const t2 = clock.now();
      const c = ids(await queue(lu, [{ code_name: 'list-b', payload: 'p' }]));
      const all = [...a, ...b, ...c];
      const newestFirst = [...all].reverse();

      const l = await lu.project('GET', '/tasks');
      t.equal(l.status, 200);
      t.match(l.headers.get('content-type') ?? '', /application\/json/);
      t.same(Object.keys(l.body), ['tasks']);
      t.same(l.body.tasks.map((x: any) => x.id), newestFirst, 'newest first');
      for (const x of l.body.tasks) {
        t.notOk('payload' in x, 'list items omit the payload');
        t.equal(x.project_id, lu.projectId);
        t.equal(x.status, 'queued');
        t.match(x.created_at, ISO);
      }
      const first = l.body.tasks[0];
      t.match(first, { id: c[0], code_name: 'list-b', code_rev: '1', status: 'queued', priority: 0, cluster: 'default', timeout: 3600, created_at: t2.toISOString() });

      // pagination
      const page = async (q: Record<string, string | number>) => (await lu.project('GET', '/tasks', { query: q })).body.tasks.map((x: any) => x.id);
      t.same(await page({ per_page: 2 }), newestFirst.slice(0, 2));
      t.same(await page({ per_page: 2, page: 1 }), newestFirst.slice(2, 4));
      t.same(await page({ per_page: 2, page: 2 }), newestFirst.slice(4, 5));
      t.same(await page({ per_page: 2, page: 3 }), []);
      t.same(await page({ page: 1 }), [], 'default per_page 30');
      t.same(await page({ per_page: 100 }), newestFirst);
      isError(t, await lu.project('GET', '/tasks', { query: { per_page: 101 } }), 400, /^per_page must be an integer from 1 to 100/);
      isError(t, await lu.project('GET', '/tasks', { query: { per_page: 0 } }), 400, /^per_page /);
      isError(t, await lu.project('GET', '/tasks', { query: { page: 101 } }), 400, /^page must be an integer from 0 to 100/);
      isError(t, await lu.project('GET', '/tasks', { query: { page: -1 } }), 400, /^page /);
      isError(t, await lu.project('GET', '/tasks', { query: { page: 'two' } }), 400, /^page /);

      // code_name filter
      t.same(await page({ code_name: 'list-a' }), [b[1], b[0], a[0]]);
      t.same(await page({ code_name: 'list-b' }), [c[0], a[1]]);
      t.same(await page({ code_name: 'list-c' }), []);

      // from_time / to_time: epoch seconds
      const s = (d: Date) => Math.floor(d.getTime() / 1000);
      t.same(await page({ from_time: s(t1) }), newestFirst.slice(0, 3));
      t.same(await page({ to_time: s(t1) }), newestFirst.slice(1));
      t.same(await page({ from_time: s(t1), to_time: s(t1) }), [b[1], b[0]]);
      t.same(await page({ from_time: s(t0), to_time: s(t0) }), [a[1], a[0]]);
      t.same(await page({ from_time: s(t2) + 1 }), []);
      t.same(await page({ from_time: s(t1), code_name: 'list-b' }), [c[0]]);
      isError(t, await lu.project('GET', '/tasks', { query: { from_time: 'yesterday' } }), 400, /^from_time /);
      isError(t, await lu.project('GET', '/tasks', { query: { to_time: 'soon' } }), 400, /^to_time /);
    });

    t.test('list: status filters', async (t) => {
      const lu = await api.newUser();
      await codeOk(t, lu, 'status-w');
      const statuses = ['queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'];
      const byStatus: Record<string, string> = {};
      const made = ids(await queue(lu, statuses.map(() => ({ code_name: 'status-w' }))));
      for (const [i, st] of statuses.entries()) {
        byStatus[st] = made[i]!;
        await setStatus(api, made[i]!, st);
      }
      const list = async (q: Record<string, string>) =>
        ((await lu.project('GET', '/tasks', { query: q })).body.tasks as { id: string; status: string }[]).map((x) => x.status).sort();
      for (const st of statuses) {
        t.same(await list({ [st]: '1' }), [st], `${st}=1`);
        t.same(await list({ [st]: 'true' }), [st], `${st}=true`);
      }
      t.same(await list({ queued: '1', cancelled: 'true' }), ['cancelled', 'queued'], 'combinable, mixing 1 and true');
      t.same(await list({ complete: '1', error: '1', cancelled: '1' }), ['cancelled', 'complete', 'error']);
      t.same(await list({}), [...statuses].sort(), 'no filter: every status');
      t.same(await list({ queued: '0' }), [...statuses].sort(), '0 is not a filter');
      t.same(await list({ queued: 'false', running: '1' }), ['running']);
      t.same(await list({ running: '1', code_name: 'status-w' }), ['running']);
      t.same(await list({ running: '1', code_name: 'other' }), []);
      t.same(((await lu.project('GET', '/tasks', { query: { killed: '1' } })).body.tasks as { id: string }[]).map((x) => x.id), [byStatus.killed]);
    });

    t.test('get: every documented field', async (t) => {
      const c1 = await codeOk(t, u, 'get-w');
      const c2 = await codeOk(t, u, 'get-w', { default_priority: 1 });
      t.equal(c2.rev, 2);
      t.equal(c2.id, c1.id);
      const id = await queueOne(t, u, { code_name: 'get-w', payload: '{"foo":"bar"}', timeout: 600, delay: 7, cluster: 'high-mem', label: 'optionalLabel' });
      const r = await u.project('GET', `/tasks/${id}`);
      t.equal(r.status, 200, r.text);
      t.match(r.headers.get('content-type') ?? '', /application\/json/);
      const now = clock.now().toISOString();
      t.same(r.body, {
        id,
        project_id: u.projectId,
        code_id: c1.id,
        code_name: 'get-w',
        code_rev: '2',
        code_history_id: c2.latest_history_id,
        status: 'queued',
        msg: `delayed until ${new Date(clock.now().getTime() + 7000).toISOString()}`,
        priority: 1,
        timeout: 600,
        delay: 7,
        payload: '{"foo":"bar"}',
        cluster: 'high-mem',
        label: 'optionalLabel',
        retry_count: 0,
        log_size: 0,
        created_at: now,
        updated_at: now,
      });
      t.type(r.body.code_rev, 'string');
      t.match(r.body.created_at, ISO);
      t.not(c2.latest_history_id, c1.latest_history_id);

      isError(t, await u.project('GET', '/tasks/0123456789abcdef01234567'), 404, /Task not found/);
      isError(t, await u.project('GET', '/tasks/not-an-id'), 404, /Task not found/);
      // another user's task is not found from their project, and not reachable from ours
      const other = await api.newUser();
      isError(t, await other.project('GET', `/tasks/${id}`), 404, /Task not found/);
      isError(t, await api.request('GET', `/2/projects/${other.projectId}/tasks/${id}`), 404, /Project not found/);
    });

    t.test('log', async (t) => {
      await codeOk(t, u, 'log-w');
      const id = await queueOne(t, u, { code_name: 'log-w' });
      const log = (q: Record<string, string> = {}) => u.project('GET', `/tasks/${id}/log`, { query: q });
      let r = await log();
      t.equal(r.status, 200);
      t.match(r.headers.get('content-type') ?? '', /^text\/plain/);
      t.equal(r.text, '', 'no output yet: an empty log');

      // chunks as the runner's log stream writes them: stream 1 stdout, 2 stderr, each at its
      // byte offset in the combined log (inserted out of order on purpose)
      const chunks: [number, number, string][] = [
        [1, 0, 'out one\n'],
        [1, 16, 'out two\n'],
        [2, 8, 'err one\n'],
        [2, 32, 'err two\n'],
        [1, 24, 'out ✓\n'],
      ];
      for (const [stream, offset, data] of chunks) {
        await api.store.db.query('INSERT INTO task_log_chunks (task_id, attempt, stream, byte_offset, data) VALUES ($1, 0, $2, $3, $4)', [
          id,
          stream,
          offset,
          Buffer.from(data),
        ]);
      }
      r = await log();
      t.equal(r.status, 200);
      t.match(r.headers.get('content-type') ?? '', /^text\/plain/);
      t.equal(r.text, 'out one\nerr one\nout two\nout ✓\nerr two\n', 'both streams, in combined-offset order');
      r = await log({ stream: 'stdout' });
      t.equal(r.status, 200);
      t.match(r.headers.get('content-type') ?? '', /^text\/plain/);
      t.equal(r.text, 'out one\nout two\nout ✓\n');
      r = await log({ stream: 'stderr' });
      t.equal(r.text, 'err one\nerr two\n');
      isError(t, await log({ stream: 'both' }), 400, /^stream must be stdout or stderr/);
      isError(t, await log({ stream: '' }), 400, /^stream must be stdout or stderr/);
      isError(t, await u.project('GET', '/tasks/0123456789abcdef01234567/log'), 404, /Task not found/);
      const other = await api.newUser();
      isError(t, await other.project('GET', `/tasks/${id}/log`), 404, /Task not found/);
    });

    t.test('cancel', async (t) => {
      await codeOk(t, u, 'cancel-w');
      const [queued, complete, running, errored, killed, timedOut] = ids(
        await queue(u, Array.from({ length: 6 }, () => ({ code_name: 'cancel-w' }))),
      ) as [string, string, string, string, string, string];
      clock.advance(1000);
      const at = clock.now();

      // queued: cancelled at once
      let r = await u.project('POST', `/tasks/${queued}/cancel`);
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Cancelled' });
      let g = (await u.project('GET', `/tasks/${queued}`)).body;
      t.equal(g.status, 'cancelled');
      t.equal(g.end_time, at.toISOString());
      t.equal(g.updated_at, at.toISOString());
      // cancelling again is fine, and changes nothing
      clock.advance(1000);
      r = await u.project('POST', `/tasks/${queued}/cancel`, { json: {} });
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Cancelled' });
      g = (await u.project('GET', `/tasks/${queued}`)).body;
      t.equal(g.status, 'cancelled');
      t.equal(g.end_time, at.toISOString());

      // a final state is never overwritten
      for (const [id, st] of [[complete, 'complete'], [errored, 'error'], [killed, 'killed'], [timedOut, 'timeout']] as const) {
        await setStatus(api, id, st);
        const before = await row(api, id);
        isError(t, await u.project('POST', `/tasks/${id}/cancel`), 400, new RegExp(`already finished with status ${st}`));
        const after = await row(api, id);
        t.equal(after.status, st, `${st} stays ${st}`);
        t.equal(after.end_time, null);
        t.equal(after.cancel_requested_at, null);
        t.same(after.updated_at, before.updated_at);
      }

      // running: the runner is asked to stop; the task stays running until it does
      await setStatus(api, running, 'running');
      const requestedAt = clock.now();
      r = await u.project('POST', `/tasks/${running}/cancel`);
      t.equal(r.status, 200, r.text);
      t.same(Object.keys(r.body), ['msg']);
      let rr = await row(api, running);
      t.equal(rr.status, 'running');
      t.same(new Date(rr.cancel_requested_at), requestedAt);
      t.equal(rr.end_time, null);
      clock.advance(5000);
      r = await u.project('POST', `/tasks/${running}/cancel`);
      t.equal(r.status, 200, r.text);
      rr = await row(api, running);
      t.equal(rr.status, 'running');
      t.same(new Date(rr.cancel_requested_at), requestedAt, 'the first request time is kept');

      isError(t, await u.project('POST', '/tasks/0123456789abcdef01234567/cancel'), 404, /Task not found/);
      const other = await api.newUser();
      const o = await codeOk(t, other, 'cancel-w');
      t.ok(o.id);
      const theirs = await queueOne(t, other, { code_name: 'cancel-w' });
      isError(t, await u.project('POST', `/tasks/${theirs}/cancel`), 404, /Task not found/);
      t.equal((await row(api, theirs)).status, 'queued', "another project's task is untouched");
    });

    t.test('progress', async (t) => {
      await codeOk(t, u, 'progress-w');
      const [id, done] = ids(await queue(u, [{ code_name: 'progress-w' }, { code_name: 'progress-w' }])) as [string, string];
      await setStatus(api, id, 'running');
      const progress = (tid: string, json: unknown) => u.project('POST', `/tasks/${tid}/progress`, { json });
      let r = await progress(id, { percent: 50, msg: 'half way' });
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Progress set' });
      let g = (await u.project('GET', `/tasks/${id}`)).body;
      t.equal(g.percent, 50);
      t.equal(g.msg, 'half way');
      r = await progress(id, { percent: 100 });
      t.equal(r.status, 200, r.text);
      g = (await u.project('GET', `/tasks/${id}`)).body;
      t.equal(g.percent, 100);
      t.equal(g.msg, 'half way', 'msg kept when only percent is sent');
      r = await progress(id, { msg: 'almost' });
      t.equal(r.status, 200, r.text);
      g = (await u.project('GET', `/tasks/${id}`)).body;
      t.equal(g.percent, 100, 'percent kept when only msg is sent');
      t.equal(g.msg, 'almost');
      t.equal((await progress(id, { percent: 0 })).status, 200);
      t.equal((await u.project('GET', `/tasks/${id}`)).body.percent, 0);

      for (const p of [101, -1, 50.5, 'lots']) {
        isError(t, await progress(id, { percent: p }), 400, /^percent must be an integer from 0 to 100/);
      }
      isError(t, await progress(id, { msg: 'x'.repeat(4097) }), 400, /^msg must be at most 4096 bytes/);
      isError(t, await progress(id, { msg: 3 }), 400, /^msg must be a string/);
      isError(t, await progress(id, {}), 400, /percent .*msg/);
      t.equal((await u.project('GET', `/tasks/${id}`)).body.percent, 0, 'unchanged by refused requests');
      isError(
        t,
        await u.project('POST', `/tasks/${id}/progress`, { body: '{"percent":10}', headers: { 'Content-Type': 'text/plain' } }),
        406,
        /application\/json/,
      );
      isError(t, await u.project('POST', `/tasks/${id}/progress`, { body: '{"percent":10}' }), 406, /application\/json/);
      t.equal((await u.project('GET', `/tasks/${id}`)).body.percent, 0);

      // a queued task takes progress too; a final one does not
      t.equal((await progress(done, { percent: 5 })).status, 200);
      await setStatus(api, done, 'complete');
      isError(t, await progress(done, { percent: 60, msg: 'late' }), 400, /finished with status complete/);
      const d = await row(api, done);
      t.equal(d.percent, 5);
      t.equal(d.msg, null);
      t.equal(d.status, 'complete');
      isError(t, await progress('0123456789abcdef01234567', { percent: 1 }), 404, /Task not found/);
    });

    t.test('retry', async (t) => {
      await codeOk(t, u, 'retry-w');
      const orig = await queueOne(t, u, { code_name: 'retry-w', payload: '{"again":true}', priority: 2, cluster: 'high-mem', timeout: 99, label: 'L' });
      const before = await taskCount(api);
      // only final tasks
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { json: {} }), 400, /only finished tasks can be retried/);
      await setStatus(api, orig, 'running');
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { json: {} }), 400, /only finished tasks can be retried/);
      t.equal(await taskCount(api), before, 'no task queued');
      t.equal((await row(api, orig)).retry_task_id, null);

      await setStatus(api, orig, 'error');
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { body: '{}' }), 406, /application\/json/);
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { body: '{}', headers: { 'Content-Type': 'text/plain' } }), 406, /application\/json/);
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { json: { delay: 604801 } }), 400, /^delay must be an integer from 0 to 604800/);
      isError(t, await u.project('POST', `/tasks/${orig}/retry`, { json: { delay: -1 } }), 400, /^delay /);
      t.equal(await taskCount(api), before);

      // a new revision since: the retry runs the latest one
      const c2 = await codeOk(t, u, 'retry-w');
      let r = await u.project('POST', `/tasks/${orig}/retry`, { json: {} });
      t.equal(r.status, 200, r.text);
      t.same(Object.keys(r.body), ['msg', 'tasks']);
      t.equal(r.body.msg, 'Queued up');
      t.equal(r.body.tasks.length, 1);
      const retry1 = r.body.tasks[0].id as string;
      t.match(retry1, ID);
      t.not(retry1, orig, 'a new task');
      t.equal(await taskCount(api), before + 1);
      const g = (await u.project('GET', `/tasks/${retry1}`)).body;
      t.match(g, {
        id: retry1,
        status: 'queued',
        code_name: 'retry-w',
        code_rev: '2',
        code_history_id: c2.latest_history_id,
        payload: '{"again":true}',
        priority: 2,
        cluster: 'high-mem',
        timeout: 99,
        label: 'L',
        delay: 0,
        original_task_id: orig,
        retry_count: 1,
      });
      const o = (await u.project('GET', `/tasks/${orig}`)).body;
      t.equal(o.retry_task_id, retry1, 'the original names its retry');
      t.equal(o.status, 'error', 'the original keeps its state');
      t.equal(o.retry_count, 0);

      // retry of a retry, with a delay
      await setStatus(api, retry1, 'cancelled');
      r = await u.project('POST', `/tasks/${retry1}/retry`, { json: { delay: 60 } });
      t.equal(r.status, 200, r.text);
      const retry2 = r.body.tasks[0].id as string;
      const r2 = await row(api, retry2);
      t.match(r2, { original_task_id: retry1, retry_count: 2, delay: 60, payload: '{"again":true}', status: 'queued' });
      t.equal(new Date(r2.eligible_at).getTime(), clock.now().getTime() + 60_000);
      t.equal((await row(api, retry1)).retry_task_id, retry2);

      // without a body at all, as cancel takes it: no delay
      await setStatus(api, retry2, 'error');
      r = await u.project('POST', `/tasks/${retry2}/retry`);
      t.equal(r.status, 200, `a retry without a body is queued: ${r.text}`);
      t.match(await row(api, r.body.tasks[0].id), { original_task_id: retry2, retry_count: 3, delay: 0, status: 'queued' });
      isError(t, await u.project('POST', '/tasks/0123456789abcdef01234567/retry', { json: {} }), 404, /Task not found/);
    });

    t.test('delayed tasks become eligible after their delay', async (t) => {
      await codeOk(t, u, 'delay-w');
      const cluster = `delay-${engine}`;
      const [now0, later] = ids(
        await queue(u, [
          { code_name: 'delay-w', cluster },
          { code_name: 'delay-w', cluster, delay: 30 },
        ]),
      );
      const eligible = () => claimableIds(api.store, cluster, 100);
      t.same(await eligible(), [now0], 'the delayed task waits');
      clock.advance(29_999);
      t.same(await eligible(), [now0], 'not before 30 s');
      clock.advance(1);
      t.same(await eligible(), [now0, later], 'eligible once 30 s have passed');
      clock.advance(3600_000);
      t.same(await eligible(), [now0, later]);
      // a cancelled task leaves the queue
      t.equal((await u.project('POST', `/tasks/${now0}/cancel`)).status, 200);
      t.same(await eligible(), [later]);
    });

    t.test('eligible(): priority 2, then 1, then 0; oldest first within one', async (t) => {
      await codeOk(t, u, 'prio-w');
      const cluster = `prio-${engine}`;
      const made = ids(
        await queue(u, [0, 1, 2, 0, 2, 1].map((priority) => ({ code_name: 'prio-w', cluster, priority }))),
      ) as [string, string, string, string, string, string];
      clock.advance(1000);
      const late2 = await queueOne(t, u, { code_name: 'prio-w', cluster, priority: 2 });
      const got = (await probeClaim(api.store, cluster, 100)).map((x) => [x.taskId, x.priority]);
      t.same(got, [
        [made[2], 2],
        [made[4], 2],
        [late2, 2],
        [made[1], 1],
        [made[5], 1],
        [made[0], 0],
        [made[3], 0],
      ]);
      t.same(await claimableIds(api.store, cluster, 2), [made[2], made[4]], 'limit');
      t.same(await probeClaim(api.store, `${cluster}-none`, 100), [], 'per cluster');
    });
  });
}
