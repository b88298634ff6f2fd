import { createHash } from 'node:crypto';
import t from 'tap';
import type { Test } from 'tap';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, uploadCode, type ApiUser, type Reply, type TestApi } from '../../helpers/api.ts';
import { isError, sendChunked } from '../../helpers/assert.ts';

/**
 * Authentication, tenancy and the generic HTTP behaviour IronWorker clients rely on, over
 * HTTP on both engines: OAuth header and ?oauth=, 401s, other users' projects and ids as
 * 404s, {"msg"} error bodies, 404/405/406/413/400, JSON on every 2xx GET, hashed tokens,
 * 24-hex ids.
 */

const ID = /^[0-9a-f]{24}$/;
const MAX_JSON = 65536;
/** An empty zip archive: just the end-of-central-directory record. */
const EMPTY_ZIP = Buffer.concat([Buffer.from([0x50, 0x4b, 0x05, 0x06]), Buffer.alloc(18)]);

async function taskCount(api: TestApi, projectId: string): Promise<number> {
  return (await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks WHERE project_id = $1', [projectId]))
    .rows[0]!.n;
}

interface World {
  codeId: string;
  taskId: string;
  scheduleId: string;
}

/** A code package (with a zip), a queued task and a schedule in the user's project. */
async function populate(t: Test, u: ApiUser, name: string): Promise<World> {
  const up = await uploadCode(u, { name }, { data: EMPTY_ZIP, name: 'code.zip' });
  t.equal(up.status, 200, up.text);
  const q = await u.project('POST', '/tasks', { json: { tasks: [{ code_name: name, payload: '{"hello":"world"}' }] } });
  t.equal(q.status, 200, q.text);
  const s = await u.project('POST', '/schedules', {
    json: {
      schedules: [{ code_name: name, payload: '{}', start_at: new Date(Date.now() + 86400_000).toISOString(), run_every: 3600 }],
    },
  });
  t.equal(s.status, 200, s.text);
  return { codeId: up.body.id, taskId: q.body.tasks[0].id, scheduleId: s.body.schedules[0].id };
}

for (const engine of ENGINES) {
  t.test(`auth, tenancy and HTTP behaviour on ${engine}`, async (t) => {
    const api = await startTestApi(t, engine, { env: { GANTRY_MAX_JSON_BODY: String(MAX_JSON) } });
    const a = api.user;
    const b = await api.newUser();
    const mine = await populate(t, a, 'a-code');
    const theirs = await populate(t, b, 'b-code');
    const nowhere = 'e'.repeat(24); // a well-formed id no project has

    t.test('tokens: OAuth header, ?oauth=, and the 401s', async (t) => {
      const ok = await a.project('GET', '/codes');
      t.equal(ok.status, 200, 'Authorization: OAuth <token>');
      t.equal(ok.body.codes.length, 1);

      const viaQuery = await a.project('GET', '/codes', { token: null, query: { oauth: a.token } });
      t.equal(viaQuery.status, 200, '?oauth=<token>');
      t.same(viaQuery.body, ok.body);
      const postViaQuery = await a.project('POST', '/tasks', {
        token: null,
        query: { oauth: a.token },
        json: { tasks: [{ code_name: 'a-code' }] },
      });
      t.equal(postViaQuery.status, 200, `?oauth= on a POST: ${postViaQuery.text}`);
      t.equal((await a.project('GET', `/codes/${mine.codeId}`, { headers: { Authorization: `OAuth   ${a.token}` } })).status, 200, 'extra spaces');

      for (const scheme of ['Oauth', 'oauth', 'OAUTH', 'Bearer', 'Token']) {
        isError(
          t,
          await a.project('GET', '/codes', { token: null, headers: { Authorization: `${scheme} ${a.token}` } }),
          401,
          undefined,
          `Authorization: ${scheme} <token>`,
        );
      }
      isError(t, await a.project('GET', '/codes', { token: null, headers: { Authorization: a.token } }), 401, undefined, 'bare token');
      isError(t, await a.project('GET', '/codes', { token: null, headers: { Authorization: 'OAuth' } }), 401, undefined, 'OAuth without token');
      isError(t, await a.project('GET', '/codes', { token: null }), 401, /Missing OAuth token/, 'no token');
      isError(t, await a.project('GET', '/codes', { token: null, query: { oauth: '' } }), 401, /Missing OAuth token/, 'empty ?oauth=');
      isError(t, await a.project('GET', '/codes', { token: 'not-a-token' }), 401, 'Invalid OAuth token', 'bad token');
      isError(t, await a.project('GET', '/codes', { token: a.token.toUpperCase() }), 401, 'Invalid OAuth token', 'token in the wrong case');
      isError(t, await a.project('GET', '/codes', { token: null, query: { oauth: 'nope' } }), 401, 'Invalid OAuth token', 'bad ?oauth=');
      isError(t, await api.request('GET', `/2/projects/${nowhere}/codes`, { token: 'bad' }), 401, undefined, 'auth is checked before the project');
      isError(t, await a.project('POST', '/tasks', { token: null, json: { tasks: [{ code_name: 'a-code' }] } }), 401, undefined, 'POST without token');
      isError(t, await uploadCode({ ...a, project: (m, p, o = {}) => a.project(m, p, { ...o, token: null }) }, { name: 'x' }), 401, undefined, 'upload without token');

      // A second token works until it is revoked; the first one is not affected.
      const second = await api.store.accounts.createToken(a.userId, 'second');
      t.equal((await a.project('GET', '/codes', { token: second.token })).status, 200, 'a second token works');
      t.equal(await api.store.accounts.revokeToken(second.id), true);
      isError(t, await a.project('GET', '/codes', { token: second.token }), 401, 'Invalid OAuth token', 'revoked token');
      isError(t, await a.project('GET', '/codes', { token: null, query: { oauth: second.token } }), 401, 'Invalid OAuth token', 'revoked ?oauth=');
      isError(t, await api.request('GET', '/2/stacks', { token: second.token }), 401, undefined, 'revoked token on /stacks');
      t.equal((await a.project('GET', '/codes')).status, 200, 'the first token still works');

      // A token is the user's: it works on every project of theirs.
      const p2 = await api.store.accounts.createProject(a.userId, 'second project');
      const other = await api.request('GET', `/2/projects/${p2.id}/codes`);
      t.equal(other.status, 200);
      t.same(other.body, { codes: [] });
    });

    t.test("another user's project is 404, exactly like one that does not exist", async (t) => {
      const tasksBefore = await taskCount(api, b.projectId);
      const calls: [string, string, (p: string) => Promise<Reply>][] = [
        ['GET', '/codes', (p) => api.request('GET', `/2/projects/${p}/codes`)],
        ['GET', '/codes/{id}', (p) => api.request('GET', `/2/projects/${p}/codes/${theirs.codeId}`)],
        ['DELETE', '/codes/{id}', (p) => api.request('DELETE', `/2/projects/${p}/codes/${theirs.codeId}`)],
        ['GET', '/codes/{id}/download', (p) => api.request('GET', `/2/projects/${p}/codes/${theirs.codeId}/download`)],
        ['GET', '/codes/{id}/revisions', (p) => api.request('GET', `/2/projects/${p}/codes/${theirs.codeId}/revisions`)],
        ['GET', '/codes/{id}/stats', (p) => api.request('GET', `/2/projects/${p}/codes/${theirs.codeId}/stats`)],
        ['POST', '/codes/{id}/pause_task_queue', (p) => api.request('POST', `/2/projects/${p}/codes/${theirs.codeId}/pause_task_queue`)],
        [
          'POST',
          '/codes',
          (p) => {
            const form = new FormData();
            form.append('data', JSON.stringify({ name: 'intruder', image: 'busybox' }));
            return api.request('POST', `/2/projects/${p}/codes`, { body: form });
          },
        ],
        ['GET', '/tasks', (p) => api.request('GET', `/2/projects/${p}/tasks`)],
        ['POST', '/tasks', (p) => api.request('POST', `/2/projects/${p}/tasks`, { json: { tasks: [{ code_name: 'b-code' }] } })],
        ['POST', '/tasks/webhook', (p) => api.request('POST', `/2/projects/${p}/tasks/webhook`, { query: { code_name: 'b-code' }, body: 'x' })],
        ['GET', '/tasks/{id}', (p) => api.request('GET', `/2/projects/${p}/tasks/${theirs.taskId}`)],
        ['GET', '/tasks/{id}/log', (p) => api.request('GET', `/2/projects/${p}/tasks/${theirs.taskId}/log`)],
        ['POST', '/tasks/{id}/cancel', (p) => api.request('POST', `/2/projects/${p}/tasks/${theirs.taskId}/cancel`)],
        ['GET', '/schedules', (p) => api.request('GET', `/2/projects/${p}/schedules`)],
        [
          'POST',
          '/schedules',
          (p) => api.request('POST', `/2/projects/${p}/schedules`, { json: { schedules: [{ code_name: 'b-code', run_every: 3600 }] } }),
        ],
        ['GET', '/schedules/{id}', (p) => api.request('GET', `/2/projects/${p}/schedules/${theirs.scheduleId}`)],
        ['POST', '/schedules/{id}/cancel', (p) => api.request('POST', `/2/projects/${p}/schedules/${theirs.scheduleId}/cancel`)],
      ];
      for (const [method, path, call] of calls) {
        const foreign = await call(b.projectId);
        const missing = await call(nowhere);
        isError(t, foreign, 404, 'Project not found', `${method} ${path} on another user's project`);
        t.equal(foreign.status, missing.status, `${method} ${path}: same status as a nonexistent project`);
        t.same(foreign.body, missing.body, `${method} ${path}: same body as a nonexistent project`);
      }

      // None of it touched B's things.
      const code = await b.project('GET', `/codes/${theirs.codeId}`);
      t.equal(code.status, 200);
      t.equal(code.body.paused, false);
      t.equal((await b.project('GET', '/codes')).body.codes.length, 1, 'no code uploaded into B');
      t.equal(await taskCount(api, b.projectId), tasksBefore, 'no task queued into B');
      t.equal((await b.project('GET', `/tasks/${theirs.taskId}`)).body.status, 'queued');
      t.equal((await b.project('GET', `/schedules/${theirs.scheduleId}`)).body.status, 'scheduled');
      t.equal((await b.project('GET', '/schedules')).body.schedules.length, 1);
    });

    t.test("another user's ids under your own project are 404", async (t) => {
      const c = theirs.codeId;
      const checks: [string, string, unknown?][] = [
        ['GET', `/codes/${c}`],
        ['DELETE', `/codes/${c}`],
        ['GET', `/codes/${c}/download`],
        ['GET', `/codes/${c}/revisions`],
        ['GET', `/codes/${c}/stats`],
        ['POST', `/codes/${c}/pause_task_queue`],
        ['POST', `/codes/${c}/resume_task_queue`],
      ];
      for (const [method, path] of checks) {
        isError(t, await a.project(method, path), 404, 'Code package not found', `${method} ${path} (B's code in A's project)`);
      }
      const tk = theirs.taskId;
      for (const [method, path, json] of [
        ['GET', `/tasks/${tk}`],
        ['GET', `/tasks/${tk}/log`],
        ['POST', `/tasks/${tk}/cancel`],
        ['POST', `/tasks/${tk}/progress`, { percent: 50 }],
        ['POST', `/tasks/${tk}/retry`, {}],
      ] as [string, string, unknown?][]) {
        isError(t, await a.project(method, path, json === undefined ? {} : { json }), 404, 'Task not found', `${method} ${path} (B's task)`);
      }
      for (const [method, path] of [
        ['GET', `/schedules/${theirs.scheduleId}`],
        ['POST', `/schedules/${theirs.scheduleId}/cancel`],
      ] as const) {
        isError(t, await a.project(method, path), 404, 'Schedule not found', `${method} ${path} (B's schedule)`);
      }
      // Queueing by name only ever sees your own packages.
      isError(t, await a.project('POST', '/tasks', { json: { tasks: [{ code_name: 'b-code' }] } }), 404, /tasks\[0\]\.code_name/, "B's code name");

      // B's things are untouched, and A's own ids work.
      const bc = await b.project('GET', `/codes/${c}`);
      t.equal(bc.status, 200);
      t.equal(bc.body.paused, false, 'not paused by A');
      const bt = await b.project('GET', `/tasks/${tk}`);
      t.equal(bt.body.status, 'queued', 'not cancelled by A');
      t.notOk('percent' in bt.body, 'no progress set by A');
      t.equal((await b.project('GET', `/schedules/${theirs.scheduleId}`)).body.status, 'scheduled', 'not cancelled by A');
      t.equal((await a.project('GET', `/codes/${mine.codeId}`)).status, 200);
      t.equal((await a.project('GET', `/tasks/${mine.taskId}`)).status, 200);
      t.equal((await a.project('GET', `/schedules/${mine.scheduleId}`)).status, 200);
    });

    t.test('malformed ids are 404', async (t) => {
      const real = mine.codeId;
      const badIds = ['xyz', '123', real.toUpperCase(), real.slice(0, 23), `${real}0`, `${real.slice(0, 23)}g`, 'null', '%20'];
      for (const id of badIds) {
        isError(t, await api.request('GET', `/2/projects/${id}/codes`), 404, 'Project not found', `project id ${JSON.stringify(id)}`);
        isError(t, await a.project('GET', `/codes/${id}`), 404, 'Code package not found', `code id ${JSON.stringify(id)}`);
        isError(t, await a.project('GET', `/tasks/${id}`), 404, 'Task not found', `task id ${JSON.stringify(id)}`);
        isError(t, await a.project('GET', `/schedules/${id}`), 404, 'Schedule not found', `schedule id ${JSON.stringify(id)}`);
      }
      isError(t, await a.project('POST', '/codes/xyz/pause_task_queue'), 404, 'Code package not found');
      isError(t, await a.project('DELETE', '/codes/xyz'), 404, 'Code package not found');
      isError(t, await a.project('POST', '/tasks/xyz/cancel'), 404, 'Task not found');
    });

    t.test('unknown paths are 404 JSON; wrong verbs are 405 JSON', async (t) => {
      const p = `/2/projects/${a.projectId}`;
      for (const path of [
        '/2/nothing',
        '/2/',
        '/2',
        '/2/project',
        `/2/projects/${a.projectId}`,
        `${p}/nothing`,
        `${p}/codes/${mine.codeId}/nothing`,
        `${p}/tasks/${mine.taskId}/nothing/more`,
        '/3/stacks',
        '/nothing',
      ]) {
        isError(t, await api.request('GET', path), 404, /^Not found/, `GET ${path}`);
      }
      isError(t, await api.request('GET', '/2/nothing', { token: null }), 404, undefined, 'unknown path without token');
      for (const method of ['POST', 'PUT', 'DELETE', 'PROPFIND']) {
        const r = await api.request(method, `${p}/nothing`);
        isError(t, r, 404, /^Not found/, `${method} on an unknown path`);
        t.equal(r.headers.get('allow'), null, `${method} on an unknown path: no Allow`);
      }

      for (const [method, path, allow] of [
        ['PUT', `${p}/codes`, /GET.*POST|POST.*GET/],
        ['DELETE', `${p}/tasks`, /GET.*POST|POST.*GET/],
        ['PATCH', `${p}/codes/${mine.codeId}`, /DELETE/],
        ['POST', `${p}/codes/${mine.codeId}`, /GET/],
        ['PUT', `${p}/tasks/${mine.taskId}`, /GET/],
        ['GET', `${p}/tasks/${mine.taskId}/cancel`, /POST/],
        ['GET', `${p}/codes/${mine.codeId}/pause_task_queue`, /POST/],
        ['DELETE', `${p}/schedules/${mine.scheduleId}`, /GET/],
        ['POST', '/2/stacks', /GET/],
        ['DELETE', '/2/stacks', /GET/],
        ['PROPFIND', `${p}/codes`, /GET.*POST|POST.*GET/],
        ['PUT', '/healthz', /GET/],
      ] as const) {
        const r = await api.request(method, path);
        isError(t, r, 405, /Method not allowed/, `${method} ${path}`);
        t.match(r.headers.get('allow') ?? '', allow, `${method} ${path}: Allow lists the verbs that work`);
      }
      // Nothing happened on the way: the code and task are as they were.
      t.equal((await a.project('GET', `/tasks/${mine.taskId}`)).body.status, 'queued');
      t.equal((await a.project('GET', `/codes/${mine.codeId}`)).status, 200);
    });

    t.test('POST /tasks needs Content-Type: application/json (406)', async (t) => {
      const before = await taskCount(api, a.projectId);
      const body = JSON.stringify({ tasks: [{ code_name: 'a-code' }] });
      isError(t, await a.project('POST', '/tasks', { body, headers: { 'Content-Type': 'text/plain' } }), 406, /Content-Type must be application\/json/, 'text/plain');
      isError(t, await a.project('POST', '/tasks', { body: Buffer.from(body) }), 406, /Content-Type/, 'no Content-Type');
      isError(
        t,
        await a.project('POST', '/tasks', { body, headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }),
        406,
        /Content-Type/,
        'form encoded',
      );
      isError(t, await a.project('POST', '/schedules', { body, headers: { 'Content-Type': 'text/plain' } }), 406, /Content-Type/, 'schedules');
      isError(
        t,
        await a.project('POST', `/tasks/${mine.taskId}/progress`, { body: '{"percent":5}', headers: { 'Content-Type': 'text/plain' } }),
        406,
        /Content-Type/,
        'progress',
      );
      t.equal(await taskCount(api, a.projectId), before, 'nothing queued');

      for (const ct of ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON']) {
        const r = await a.project('POST', '/tasks', { body, headers: { 'Content-Type': ct } });
        t.equal(r.status, 200, `${ct}: ${r.text}`);
      }
      t.equal(await taskCount(api, a.projectId), before + 3);
    });

    t.test(`a JSON body over GANTRY_MAX_JSON_BODY (${MAX_JSON}) is 413`, async (t) => {
      const before = await taskCount(api, a.projectId);
      const huge = JSON.stringify({ tasks: [{ code_name: 'a-code', payload: 'x'.repeat(MAX_JSON + 1000) }] });
      isError(t, await a.project('POST', '/tasks', { body: huge, headers: { 'Content-Type': 'application/json' } }), 413, /larger than the limit of 65536 bytes/, 'declared length');

      const chunked = await sendChunked(
        api.url,
        'POST',
        `/2/projects/${a.projectId}/tasks`,
        { 'Content-Type': 'application/json', Authorization: `OAuth ${a.token}` },
        Buffer.from(huge),
      );
      t.equal(chunked.status, 413, `chunked: ${chunked.text}`);
      t.match(chunked.headers['content-type'] ?? '', /^application\/json/);
      t.same(Object.keys(JSON.parse(chunked.text)), ['msg']);
      const sched = JSON.stringify({ schedules: [{ code_name: 'a-code', run_every: 3600, payload: 'y'.repeat(MAX_JSON) }] });
      isError(t, await a.project('POST', '/schedules', { body: sched, headers: { 'Content-Type': 'application/json' } }), 413, undefined, 'schedules');
      t.equal(await taskCount(api, a.projectId), before, 'nothing queued');

      // Just under the limit is read (and then judged on its merits).
      const under = JSON.stringify({ tasks: [{ code_name: 'a-code', payload: 'x'.repeat(60000) }] });
      t.equal((await a.project('POST', '/tasks', { body: under, headers: { 'Content-Type': 'application/json' } })).status, 200);
    });

    t.test('invalid JSON is 400', async (t) => {
      const post = (body: string) => a.project('POST', '/tasks', { body, headers: { 'Content-Type': 'application/json' } });
      isError(t, await post('{"tasks": ['), 400, /not valid JSON/, 'truncated');
      isError(t, await post("{'tasks': []}"), 400, /not valid JSON/, 'single quotes');
      isError(t, await post('tasks=1'), 400, /not valid JSON/, 'form data');
      isError(t, await post('[{"code_name": "a-code"}]'), 400, /must be a JSON object/, 'array');
      isError(t, await post('null'), 400, /must be a JSON object/, 'null');
      isError(t, await post('"x"'), 400, /must be a JSON object/, 'string');
      isError(t, await post('{}'), 400, /^tasks is required/, 'empty object');
      isError(t, await a.project('POST', `/tasks/${mine.taskId}/progress`, { body: '{percent: 5}', headers: { 'Content-Type': 'application/json' } }), 400, /not valid JSON/, 'progress');
    });

    t.test('a DELETE may carry a {} JSON body', async (t) => {
      const up = await uploadCode(a, { name: 'to-delete' });
      t.equal(up.status, 200);
      const d = await a.project('DELETE', `/codes/${up.body.id}`, { json: {} });
      t.equal(d.status, 200, d.text);
      t.same(d.body, { msg: 'Deleted' });
      isError(t, await a.project('GET', `/codes/${up.body.id}`), 404, 'Code package not found');

      const up2 = await uploadCode(a, { name: 'to-delete-2' });
      const d2 = await a.project('DELETE', `/codes/${up2.body.id}`, { body: '{}' });
      t.equal(d2.status, 200, `{} without Content-Type: ${d2.text}`);
      isError(t, await a.project('DELETE', `/codes/${up2.body.id}`, { json: {} }), 404, 'Code package not found', 'second delete with {}');
      const pause = await a.project('POST', `/codes/${mine.codeId}/pause_task_queue`, { json: {} });
      t.same(pause.body, { msg: 'Paused' }, 'a POST action with {} too');
      t.same((await a.project('POST', `/codes/${mine.codeId}/resume_task_queue`, { json: {} })).body, { msg: 'Resumed' });
    });

    t.test('GET /2/stacks', async (t) => {
      const r = await api.request('GET', '/2/stacks');
      t.equal(r.status, 200);
      t.match(r.headers.get('content-type') ?? '', /^application\/json/);
      t.ok(Array.isArray(r.body), 'a JSON array');
      t.equal((await api.request('GET', '/2/stacks', { token: null, query: { oauth: a.token } })).status, 200, '?oauth=');
      isError(t, await api.request('GET', '/2/stacks', { token: null }), 401, /Missing OAuth token/, 'without token');
      isError(t, await api.request('GET', '/2/stacks', { token: 'wrong' }), 401, 'Invalid OAuth token', 'bad token');
    });

    t.test('every 2xx GET reply has a JSON body', async (t) => {
      const fresh = await api.newUser();
      const gets: [ApiUser | null, string, Record<string, string>?][] = [
        [null, '/2/stacks'],
        [a, '/codes'],
        [a, '/codes', { page: '0', per_page: '1' }],
        [a, `/codes/${mine.codeId}`],
        [a, `/codes/${mine.codeId}/revisions`],
        [a, `/codes/${mine.codeId}/stats`],
        [a, '/tasks'],
        [a, '/tasks', { queued: '1' }],
        [a, '/tasks', { complete: 'true', code_name: 'a-code' }],
        [a, `/tasks/${mine.taskId}`],
        [a, '/schedules'],
        [a, `/schedules/${mine.scheduleId}`],
        [fresh, '/codes'],
        [fresh, '/tasks'],
        [fresh, '/schedules'],
      ];
      for (const [u, path, query] of gets) {
        const r = u ? await u.project('GET', path, query ? { query } : {}) : await api.request('GET', path);
        const what = `GET ${path}${query ? `?${new URLSearchParams(query)}` : ''}${u === fresh ? ' (empty project)' : ''}`;
        t.equal(r.status, 200, what);
        t.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what}: application/json`);
        t.ok(r.text.length > 0, `${what}: has a body`);
        t.doesNotThrow(() => JSON.parse(r.text), `${what}: body is JSON`);
        t.type(r.body, 'object', `${what}: an object or array`);
      }
      t.same((await fresh.project('GET', '/codes')).body, { codes: [] });
      t.same((await fresh.project('GET', '/tasks')).body, { tasks: [] });
      t.same((await fresh.project('GET', '/schedules')).body, { schedules: [] });
    });

    t.test('tokens are stored hashed', async (t) => {
      const rows = (await api.store.db.query<Record<string, unknown>>('SELECT * FROM tokens')).rows;
      t.ok(rows.length >= 2);
      const dump = JSON.stringify(rows);
      for (const u of [a, b]) {
        t.notOk(dump.includes(u.token), 'the plain token appears in no column of the tokens table');
        const sha = createHash('sha256').update(u.token).digest('hex');
        t.ok(rows.some((r) => r.user_id === u.userId && r.token_hash === sha), 'its SHA-256 is kept');
      }
      // Nor anywhere else a token could leak to.
      const users = JSON.stringify((await api.store.db.query('SELECT * FROM users')).rows);
      const projects = JSON.stringify((await api.store.db.query('SELECT * FROM projects')).rows);
      t.notOk(users.includes(a.token) || projects.includes(a.token));
    });

    t.test('ids in replies are 24 lowercase hex characters', async (t) => {
      const ids: [string, unknown][] = [['project', a.projectId]];
      const up = await uploadCode(a, { name: 'ids' }, { data: EMPTY_ZIP, name: 'ids.zip' });
      ids.push(['upload id', up.body.id], ['upload project_id', up.body.project_id], ['upload latest_history_id', up.body.latest_history_id]);
      const code = (await a.project('GET', `/codes/${up.body.id}`)).body;
      ids.push(['code id', code.id], ['code project_id', code.project_id], ['code latest_history_id', code.latest_history_id]);
      for (const c of (await a.project('GET', '/codes')).body.codes) ids.push(['listed code id', c.id], ['listed latest_history_id', c.latest_history_id]);
      for (const r of (await a.project('GET', `/codes/${up.body.id}/revisions`)).body.revisions) {
        ids.push(['revision id', r.id], ['revision code_id', r.code_id], ['revision project_id', r.project_id]);
      }
      const q = await a.project('POST', '/tasks', { json: { tasks: [{ code_name: 'ids' }, { code_name: 'ids' }] } });
      for (const x of q.body.tasks) ids.push(['queued task id', x.id]);
      const task = (await a.project('GET', `/tasks/${q.body.tasks[0].id}`)).body;
      ids.push(['task id', task.id], ['task project_id', task.project_id], ['task code_id', task.code_id], ['task code_history_id', task.code_history_id]);
      for (const x of (await a.project('GET', '/tasks')).body.tasks) ids.push(['listed task id', x.id]);
      const wh = await a.project('POST', '/tasks/webhook', { query: { code_name: 'ids' }, body: 'hook' });
      ids.push(['webhook task id', wh.body.id]);
      const retried = await a.project('POST', `/tasks/${q.body.tasks[1].id}/cancel`);
      t.equal(retried.status, 200);
      const rt = await a.project('POST', `/tasks/${q.body.tasks[1].id}/retry`, { json: {} });
      ids.push(['retry task id', rt.body.tasks?.[0]?.id]);
      const s = await a.project('POST', '/schedules', { json: { schedules: [{ code_name: 'ids', run_every: 3600 }] } });
      ids.push(['schedule id', s.body.schedules[0].id]);
      const sched = (await a.project('GET', `/schedules/${s.body.schedules[0].id}`)).body;
      ids.push(['schedule project_id', sched.project_id]);
      for (const x of (await a.project('GET', '/schedules')).body.schedules) ids.push(['listed schedule id', x.id]);
      for (const [what, id] of ids) t.match(id, ID, `${what} is 24 lowercase hex`);
      t.ok(ids.length > 20);
    });
  });
}
