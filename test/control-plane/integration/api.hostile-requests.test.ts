import net from 'node:net';
import t from 'tap';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { makeZip } from '../../helpers/zip.ts';

/**
 * Requests a hostile or broken client sends, each found by an independent test of the
 * control plane: none may stop the process or reach a 5xx, each answers a 4xx `{"msg"}`
 * naming the problem, and none changes a stored row. On both engines.
 */

/**
 * Sends raw bytes on a new connection and returns everything the server wrote back until
 * it closed. The client half-closes after its bytes unless `keepOpen`.
 */
function rawExchange(url: string, bytes: Buffer | string, o: { keepOpen?: boolean } = {}): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname);
    const chunks: Buffer[] = [];
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', reject);
    sock.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    if (o.keepOpen) sock.write(bytes);
    else sock.end(bytes);
  });
}

/** A raw reply's status code and its body (after the blank line). */
function parseRaw(raw: string): { status: number; headers: string; body: string } {
  const at = raw.indexOf('\r\n\r\n');
  const head = at < 0 ? raw : raw.slice(0, at);
  return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), headers: head, body: at < 0 ? '' : raw.slice(at + 4) };
}

async function rowCounts(api: TestApi) {
  const q = async (table: string) => Number((await api.store.db.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${table}`)).rows[0]!.n);
  return { codes: await q('codes'), revisions: await q('code_revisions'), tasks: await q('tasks'), clusters: await q('clusters') };
}

for (const engine of ENGINES) {
  t.test(`${engine}: multipart uploads that end inside a part answer 400 and the API keeps serving`, async (t) => {
    const api = await startTestApi(t, engine);
    const u = api.user;
    const before = await rowCounts(api);
    const bodies: Record<string, Buffer> = {
      'a file part cut short': Buffer.from(
        '--X\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK\x03\x04abc',
        'latin1',
      ),
      'a data part sent as a file, cut short': Buffer.from(
        '--X\r\nContent-Disposition: form-data; name="data"; filename="data.json"\r\n\r\n{"name":"n","image":"busybox"',
        'latin1',
      ),
      'a whole data part sent as a file, then nothing': Buffer.from(
        '--X\r\nContent-Disposition: form-data; name="data"; filename="data.json"\r\n\r\n{"name":"n","image":"busybox"}\r\n',
        'latin1',
      ),
      'a data field, then a file part cut short': Buffer.from(
        '--X\r\nContent-Disposition: form-data; name="data"\r\n\r\n{"name":"n","image":"busybox"}\r\n' +
          '--X\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK\x03\x04abc',
        'latin1',
      ),
      'no closing boundary': Buffer.from('--X\r\nContent-Disposition: form-data; name="data"\r\n\r\n{"name":"n","image":"busybox"}', 'latin1'),
      'garbage': Buffer.from('\x00\xff--X--\r\n\r\n--', 'latin1'),
    };
    for (const [what, body] of Object.entries(bodies)) {
      const r = await u.project('POST', '/codes', { body, headers: { 'Content-Type': 'multipart/form-data; boundary=X' } });
      isError(t, r, 400, /multipart|data/i, what);
    }
    t.same(await rowCounts(api), before, 'nothing was stored');
    const ok = await uploadCode(u, { name: 'after' });
    t.equal(ok.status, 200, 'the API still serves uploads');
  });

  t.test(`${engine}: NUL and unpaired surrogates in any string are a 400 naming the field; nothing stored`, async (t) => {
    const api = await startTestApi(t, engine);
    const u = api.user;
    t.equal((await uploadCode(u, { name: 'good' })).status, 200);
    const before = await rowCounts(api);
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['NUL in an env_vars value', { name: 'n', env_vars: { A: 'x\u0000y' } }, /env_vars\.A.*NUL/],
      ['an unpaired high surrogate in an env_vars value', { name: 'n', env_vars: { A: 'x\ud800y' } }, /env_vars\.A.*surrogate/],
      ['an unpaired low surrogate in the name', { name: 'n\udc00' }, /name.*surrogate/],
      ['NUL in the config', { name: 'n', config: 'a\u0000' }, /config.*NUL/],
    ];
    for (const [what, data, msg] of cases) {
      const r = await uploadCode(u, data);
      isError(t, r, 400, msg, what);
    }
    const tasks: [string, unknown, RegExp][] = [
      ['a lone surrogate in a payload', { tasks: [{ code_name: 'good', payload: '\ud83d' }] }, /tasks\[0\]\.payload.*surrogate/],
      ['NUL in a label', { tasks: [{ code_name: 'good', label: '\u0000' }] }, /tasks\[0\]\.label.*NUL/],
      ['a lone surrogate in an object key', { tasks: [{ code_name: 'good', ['\udfff']: 1 }] }, /tasks\[0\].*surrogate/],
    ];
    for (const [what, json, msg] of tasks) {
      // JSON.stringify writes lone surrogates as \u escapes, as a hostile client would.
      const r = await u.project('POST', '/tasks', { json });
      isError(t, r, 400, msg, what);
    }
    const cluster = await api.request('POST', '/2/clusters', {
      json: { name: 'c1', autoscale: { aws: { region: 'us-east-1', tags: { team: 'a\u0000b' } } } },
    });
    isError(t, cluster, 400, /^autoscale\.aws\.tags\.team must not contain NUL/, 'NUL in a cluster tag value');
    const cluster2 = await api.request('POST', '/2/clusters', {
      json: { name: 'c2', autoscale: { aws: { region: 'us-east-1', tags: { team: 'a\ud800' } } } },
    });
    isError(t, cluster2, 400, /^autoscale\.aws\.tags\.team contains an unpaired UTF-16 surrogate/, 'a lone surrogate in a cluster tag value');
    // Names of Object.prototype's members are ordinary cluster names (were a 500: NaN timeout).
    for (const name of ['toString', 'constructor', '__proto__', 'valueOf']) {
      const c = await api.request('POST', '/2/clusters', { json: { name } });
      t.equal(c.status, 200, `a cluster named ${name} is made (${c.text})`);
      t.notMatch(c.text, /reserved for a cluster the operator runs/, `${name} is not an operator cluster`);
      const r = await u.project('POST', '/tasks', { json: { tasks: [{ code_name: 'good', cluster: name }] } });
      t.equal(r.status, 200, `a task on a cluster named ${name} is queued (${r.text})`);
    }
    // Valid pairs pass untouched.
    const emoji = await u.project('POST', '/tasks', { json: { tasks: [{ code_name: 'good', payload: 'ok \ud83d\ude00' }] } });
    t.equal(emoji.status, 200, emoji.text);
    const after = await rowCounts(api);
    t.same({ ...after, tasks: after.tasks - 5, clusters: before.clusters }, before, 'only the valid tasks were stored');
    const got = await u.project('GET', `/tasks/${emoji.body.tasks[0].id}`);
    t.equal(got.body.payload, 'ok \u{1f600}', 'a valid surrogate pair round-trips');
  });

  t.test(`${engine}: a zip a runner could not unpack is refused at upload, naming why; nothing stored`, async (t) => {
    const api = await startTestApi(t, engine, { env: { GANTRY_MAX_ZIP_ENTRIES: '5', GANTRY_MAX_ZIP_UNPACKED_BYTES: '1048576' } });
    const u = api.user;
    const ok = makeZip([{ name: 'run.sh', data: Buffer.from('echo hi\n'), mode: 0o755 }, { name: 'lib/', dir: true }]);
    t.equal((await uploadCode(u, { name: 'good' }, { data: ok, name: 'good.zip' })).status, 200, 'a sound zip is stored');
    const before = await rowCounts(api);
    const cases: [string, Buffer, RegExp][] = [
      ['an unreadable zip (only its first bytes are right)', Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(64, 7)]), /central directory cannot be read/],
      ['a zip whose central directory is cut off', ok.subarray(0, ok.length - 10), /central directory cannot be read/],
      ['an absolute entry name', makeZip([{ name: '/etc/passwd', data: Buffer.from('x') }]), /"\/etc\/passwd".*relative/],
      ['an entry that climbs out', makeZip([{ name: 'a/../../x', data: Buffer.from('x') }]), /"a\/\.\.\/\.\.\/x"/],
      ['too many entries', makeZip(Array.from({ length: 6 }, (_, i) => ({ name: `f${i}`, data: Buffer.from('x') }))), /6 entries; at most 5/],
      ['a declared unpacked size over the limit', makeZip([{ name: 'big', data: Buffer.from('x'), declaredSize: 2 * 1048576 }]), /unpacks to 2097152 bytes; at most 1048576/],
      ['not a zip at all', Buffer.from('hello world, this is plainly no zip archive'), /central directory cannot be read|not a zip/i],
    ];
    for (const [what, zip, msg] of cases) {
      const r = await uploadCode(u, { name: 'bad' }, { data: zip, name: 'bad.zip' });
      isError(t, r, 400, msg, what);
      t.match(r.body.msg, /^file must be a zip archive a runner can unpack: /, `${what}: the message says what is wrong with the file`);
    }
    t.same(await rowCounts(api), before, 'no package or revision was stored');
  });

  t.test(`${engine}: replies Node's HTTP parser writes are JSON {"msg"}`, async (t) => {
    const api = await startTestApi(t, engine);
    const bad = parseRaw(await rawExchange(api.url, 'GET /2/stacks HTTP/1.1 extra\r\nHost: x\r\n\r\n'));
    t.equal(bad.status, 400, 'a malformed request line is 400');
    t.match(bad.headers, /content-type: application\/json/i);
    t.match(JSON.parse(bad.body), { msg: /malformed|parse/i });
    const big = parseRaw(
      await rawExchange(api.url, `GET /2/stacks HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`),
    );
    t.equal(big.status, 431, 'oversized headers are 431');
    t.match(big.headers, /content-type: application\/json/i);
    t.match(JSON.parse(big.body), { msg: /header/i });
    const hostless = parseRaw(await rawExchange(api.url, 'GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n'));
    t.equal(hostless.status, 400, 'an HTTP/1.1 request without Host is 400');
    t.match(JSON.parse(hostless.body), { msg: /Host/ });
    const connect = parseRaw(await rawExchange(api.url, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n'));
    t.equal(connect.status, 405, 'CONNECT is 405, not a closed socket');
    t.match(JSON.parse(connect.body), { msg: /CONNECT/ });
    const expect = parseRaw(await rawExchange(api.url, 'POST /2/stacks HTTP/1.1\r\nHost: x\r\nExpect: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'));
    t.equal(expect.status, 417, 'an Expect other than 100-continue is 417');
    t.match(JSON.parse(expect.body), { msg: /Expect/ });
    const twoTokens = parseRaw(
      await rawExchange(api.url, `GET /2/stacks HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth ${api.user.token}\r\nAuthorization: OAuth x\r\nConnection: close\r\n\r\n`),
    );
    t.equal(twoTokens.status, 400, 'two Authorization headers are 400: which user is asking must not depend on who reads the request');
    t.match(JSON.parse(twoTokens.body), { msg: /one Authorization header/ });
    const r = await api.request('GET', '/2/stacks');
    t.equal(r.status, 200, 'the API still serves');
    const cased = await api.request('GET', '/2/Stacks');
    t.equal(cased.status, 404, 'paths match case-sensitively, as the document writes them');
  });

  t.test(`${engine}: a request whose body never arrives whole does nothing; a whole one's reply is not replaced`, async (t) => {
    const api = await startTestApi(t, engine);
    const code = (await uploadCode(api.user, { name: 'cut' })).body as { id: string };
    const queued = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'cut', delay: 3600 }] } });
    const taskId = (queued.body as { tasks: { id: string }[] }).tasks[0]!.id;
    const status = async () => ((await api.user.project('GET', `/tasks/${taskId}`)).body as { status: string }).status;
    const cancel = `POST /2/projects/${api.user.projectId}/tasks/${taskId}/cancel HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth ${api.user.token}\r\nContent-Type: application/json\r\n`;
    // The cancel endpoint takes no body; this request declares 100 bytes, sends 5 and half-closes.
    const cut = parseRaw(await rawExchange(api.url, `${cancel}Content-Length: 100\r\n\r\n{"a":`));
    t.equal(cut.status, 400, 'a body cut short is 400');
    t.match(JSON.parse(cut.body), { msg: /Malformed HTTP request|request body/i });
    t.equal(await status(), 'queued', 'and the task was not cancelled');
    // A whole request followed by bytes that are not HTTP: the reply is the request's own,
    // then the server closes the connection.
    const whole = parseRaw(await rawExchange(api.url, `${cancel}Content-Length: 2\r\n\r\n{}\x00\x01 not http\r\n\r\n`, { keepOpen: true }));
    t.equal(whole.status, 200, 'the whole request is answered by its handler');
    t.equal(await status(), 'cancelled', 'which did what its reply says');
    const stats = await api.user.project('GET', `/codes/${code.id}/stats`, { query: { end_date: '0001-01-01T00:00:00Z' } });
    t.equal(stats.status, 200, 'a stats window reaching back before year 1 is answered (it was a 500 on PGlite)');
  });

  t.test(`${engine}: keys named like Object's own (__proto__, constructor) are ordinary keys; impossible dates are refused`, async (t) => {
    const api = await startTestApi(t, engine);
    const data = `{"name":"protos","image":"gantry-test/busybox:latest","env_vars":{"__proto__":"p","constructor":"c","toString":"t","A":"1"}}`;
    const env = (JSON.parse(data) as { env_vars: Record<string, string> }).env_vars;
    const form = new FormData();
    form.append('data', data);
    const up = await api.user.project('POST', '/codes', { body: form });
    t.equal(up.status, 200);
    const code = (await api.user.project('GET', `/codes/${(up.body as { id: string }).id}`)).body as { env_vars: Record<string, string> };
    t.same(Object.entries(code.env_vars).sort(), Object.entries(env).sort(), 'every env var is kept, __proto__ included');
    t.ok(Object.hasOwn(code.env_vars, '__proto__'), '__proto__ is a variable, not a prototype');
    for (const bad of ['2026-02-30T00:00:00Z', '2026-02-29', '2026-04-31T10:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T12:60:00Z']) {
      const r = await api.user.project('GET', `/codes/${(up.body as { id: string }).id}/stats`, { query: { start_date: bad } });
      isError(t, r, 400, /start_date must be an RFC 3339 time/, `${bad} is not a time`);
    }
    const leap = await api.user.project('GET', `/codes/${(up.body as { id: string }).id}/stats`, { query: { start_date: '2024-02-29T00:00:00Z' } });
    t.equal(leap.status, 200, 'a leap day is a day');
  });
}
