import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import t from 'tap';
import type { Test } from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { ENGINES, freshPgDatabase, tempDir } from '../../helpers/db.ts';
import { openPglite, openPostgres, type Db } from '../../../control-plane/store/db.ts';
import { loadMigrations, migrate } from '../../../control-plane/store/migrate.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { startTestApi, uploadCode, type ApiUser, type Reply, type TestApi } from '../../helpers/api.ts';
import { isError, sendChunked } from '../../helpers/assert.ts';
import { claimableIds } from '../../helpers/claims.ts';
import { crc32 } from '../../../lib/crc32.ts';

/**
 * The Code Packages endpoints of the IronWorker v2 API over HTTP, on both engines: list,
 * upload (hand-built multipart bodies as IronWorker clients send them), get, delete,
 * download, revisions, stats, and pausing the task queue.
 */

const ID = /^[0-9a-f]{24}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const IMAGE = 'gantry-test/busybox:latest';
const T0 = Date.UTC(2026, 2, 1, 12, 0, 0);
const STATUSES = ['queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'] as const;

// ---------------------------------------------------------------------------- zip files

/** A valid zip archive (entries stored, not compressed) holding `files`. */
function makeZip(files: Record<string, string | Buffer>): Buffer {
  const out: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  const entries = Object.entries(files);
  for (const [name, content] of entries) {
    const data = Buffer.isBuffer(content) ? content : Buffer.from(content);
    const nameBuf = Buffer.from(name);
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4); // version needed
    local.writeUInt16LE(0x21, 12); // 1980-01-01
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBuf.length, 26);
    const dir = Buffer.alloc(46);
    dir.writeUInt32LE(0x02014b50, 0);
    dir.writeUInt16LE(20, 4);
    dir.writeUInt16LE(20, 6);
    dir.writeUInt16LE(0x21, 14);
    dir.writeUInt32LE(crc, 16);
    dir.writeUInt32LE(data.length, 20);
    dir.writeUInt32LE(data.length, 24);
    dir.writeUInt16LE(nameBuf.length, 28);
    dir.writeUInt32LE(offset, 42);
    out.push(local, nameBuf, data);
    central.push(dir, nameBuf);
    offset += local.length + nameBuf.length + data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...out, cd, end]);
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

// ---------------------------------------------------------------------- multipart bodies

interface Part {
  name: string;
  /** Adds `; filename="…"` to the part's Content-Disposition. */
  filename?: string;
  /** The part's own Content-Type; none when absent. */
  type?: string;
  data: string | Buffer;
}

/** A multipart/form-data body built by hand, byte for byte. */
function multipart(parts: Part[], boundary = `----gantry${randomBytes(8).toString('hex')}`) {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"`;
    if (p.filename !== undefined) head += `; filename="${p.filename}"`;
    head += '\r\n';
    if (p.type !== undefined) head += `Content-Type: ${p.type}\r\n`;
    chunks.push(Buffer.from(`${head}\r\n`), Buffer.isBuffer(p.data) ? p.data : Buffer.from(p.data), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), boundary, contentType: `multipart/form-data; boundary=${boundary}` };
}

interface UploadFile {
  data: Buffer;
  /** Default "worker.zip"; null sends the part without a filename. */
  filename?: string | null;
  type?: string;
}

/**
 * Uploads as the Go client does: a `data` part without a Content-Type of its own and,
 * optionally, a `file` part with the zip.
 */
function upload(u: ApiUser, data: unknown, file?: UploadFile, o: { dataType?: string } = {}): Promise<Reply> {
  const parts: Part[] = [
    { name: 'data', data: typeof data === 'string' ? data : JSON.stringify(data), ...(o.dataType ? { type: o.dataType } : {}) },
  ];
  if (file) {
    const filename = file.filename === undefined ? 'worker.zip' : file.filename;
    parts.push({
      name: 'file',
      data: file.data,
      type: file.type ?? 'application/zip',
      ...(filename === null ? {} : { filename }),
    });
  }
  return sendParts(u, parts);
}

function sendParts(u: ApiUser, parts: Part[], contentType?: (boundary: string) => string): Promise<Reply> {
  const m = multipart(parts);
  return u.project('POST', '/codes', {
    body: m.body,
    headers: { 'Content-Type': contentType ? contentType(m.boundary) : m.contentType },
  });
}

// ------------------------------------------------------------------------------ checks

/** A successful upload: 200, application/json, msg and a 24-hex id. */
function uploaded(t: Test, r: Reply, what = 'upload'): string {
  t.equal(r.status, 200, `${what}: ${r.text}`);
  t.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what}: reply is JSON`);
  t.equal(r.body?.msg, 'Upload successful.', `${what}: msg`);
  t.match(r.body?.id, ID, `${what}: id`);
  return r.body?.id as string;
}

/** Raw bytes of a reply (the test client reads bodies as text, which would mangle a zip). */
async function fetchBytes(api: TestApi, u: ApiUser, path: string) {
  const res = await fetch(`${api.url}/2/projects/${u.projectId}${path}`, { headers: { Authorization: `OAuth ${u.token}` } });
  const bytes = Buffer.from(await res.arrayBuffer());
  let body: any;
  if ((res.headers.get('content-type') ?? '').includes('json')) body = JSON.parse(bytes.toString('utf8'));
  return { status: res.status, headers: res.headers, bytes, body, text: bytes.toString('utf8') };
}

/** Sends part of a body, then drops the connection; resolves when the socket is closed. */
function abortMidBody(url: string, path: string, headers: Record<string, string>, partial: Buffer) {
  return new Promise<void>((resolve) => {
    const req = http.request(new URL(path, url), { method: 'POST', headers });
    req.on('error', () => undefined);
    req.on('close', () => resolve());
    req.write(partial, () => req.destroy());
  });
}

async function queueTasks(t: Test, u: ApiUser, codeName: string, n: number): Promise<string[]> {
  const r = await u.project('POST', '/tasks', {
    json: { tasks: Array.from({ length: n }, (_, i) => ({ code_name: codeName, payload: `{"i":${i}}` })) },
  });
  t.equal(r.status, 200, `queue ${n} on ${codeName}: ${r.text}`);
  return (r.body.tasks as { id: string }[]).map((x) => x.id);
}

async function codeCount(api: TestApi, projectId: string, name?: string): Promise<number> {
  const r = await api.store.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM codes WHERE project_id = $1 AND deleted_at IS NULL ${name ? 'AND name = $2' : ''}`,
    name ? [projectId, name] : [projectId],
  );
  return r.rows[0]!.n;
}

// ------------------------------------------------------------------------------- tests

for (const engine of ENGINES) {
  t.test(`code packages on ${engine}`, async (t) => {
    const clock = new ManualClock(T0);
    const api = await startTestApi(t, engine, { clock });
    const u = api.user;

    t.test('upload: each upload is a new revision; omitted settings are inherited, null clears', async (t) => {
      const zip = makeZip({ 'hello.sh': 'echo hello\n' });
      const first = {
        name: 'inherit',
        image: 'iron/hello:1',
        command: './hello.sh',
        config: 'user=Alice',
        max_concurrency: 3,
        retries: 2,
        retries_delay: 15,
        default_priority: 1,
        env_vars: { GREETING: 'Good Morning', MQ_URL: 'https://mq.example.com' },
      };
      const r1 = await upload(u, first, { data: zip });
      const id = uploaded(t, r1, 'rev 1');
      t.equal(r1.body.rev, 1);

      clock.advance(1000);
      const r2 = await upload(u, { name: 'inherit', image: 'iron/hello:2' });
      t.equal(uploaded(t, r2, 'rev 2'), id, 'same package, same id');
      t.equal(r2.body.rev, 2);
      const g2 = await u.project('GET', `/codes/${id}`);
      t.equal(g2.status, 200);
      t.match(g2.body, {
        rev: 2,
        image: 'iron/hello:2',
        command: './hello.sh',
        config: 'user=Alice',
        max_concurrency: 3,
        retries: 2,
        retries_delay: 15,
        default_priority: 1,
        env_vars: first.env_vars,
      });
      t.same(g2.body.env_vars, first.env_vars);
      t.notOk('latest_checksum' in g2.body, 'the zip is not inherited: rev 2 runs its image alone');

      clock.advance(1000);
      const r3 = await upload(u, { name: 'inherit', image: 'iron/hello:3', retries: 7, env_vars: { ONLY: 'this' } });
      uploaded(t, r3, 'rev 3');
      t.equal(r3.body.rev, 3);
      const g3 = (await u.project('GET', `/codes/${id}`)).body;
      t.match(g3, { rev: 3, image: 'iron/hello:3', retries: 7, retries_delay: 15, config: 'user=Alice', max_concurrency: 3 });
      t.same(g3.env_vars, { ONLY: 'this' }, 'env_vars given again replace the old ones as a whole');

      clock.advance(1000);
      const r4 = await upload(u, {
        name: 'inherit',
        image: 'iron/hello:4',
        command: null,
        config: null,
        max_concurrency: null,
        retries: null,
        retries_delay: null,
        default_priority: null,
        env_vars: null,
      });
      uploaded(t, r4, 'rev 4');
      const g4 = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(g4.rev, 4);
      t.equal(g4.image, 'iron/hello:4');
      for (const k of ['command', 'config', 'max_concurrency']) t.notOk(k in g4, `${k} cleared by null`);
      t.equal(g4.retries, 0, 'retries cleared');
      t.equal(g4.retries_delay, 0, 'retries_delay cleared');
      t.equal(g4.default_priority, 0, 'default_priority cleared');
      t.same(g4.env_vars, {}, 'env_vars cleared');

      clock.advance(1000);
      await upload(u, { name: 'inherit', image: 'iron/hello:5' });
      const g5 = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(g5.rev, 5);
      for (const k of ['command', 'config', 'max_concurrency']) t.notOk(k in g5, `${k} stays cleared`);

      // log_streams: merged unless asked otherwise, and inherited like the rest.
      t.equal(g5.log_streams, 'merged');
      clock.advance(1000);
      t.equal((await upload(u, { name: 'inherit', log_streams: 'separate' })).body.log_streams, 'separate');
      t.equal((await upload(u, { name: 'inherit', image: 'iron/hello:5' })).body.log_streams, 'separate', 'inherited');
      t.equal((await upload(u, { name: 'inherit', log_streams: 'merged' })).body.log_streams, 'merged');
      const revs = (await u.project('GET', `/codes/${id}/revisions`, { query: { per_page: 100 } })).body.revisions as { rev: number; log_streams: string }[];
      t.same(revs.slice(-4).map((r) => [r.rev, r.log_streams]), [[5, 'merged'], [6, 'separate'], [7, 'separate'], [8, 'merged']], 'each revision shows its own');

      // The image too is kept when left out, like the other settings ("" reads as left out).
      clock.advance(1000);
      uploaded(t, await upload(u, { name: 'inherit', retries: 1 }), 'rev 6, without an image');
      uploaded(t, await upload(u, { name: 'inherit', image: '' }), 'rev 7, image ""');
      t.match((await u.project('GET', `/codes/${id}`)).body, { rev: 10, image: 'iron/hello:5', retries: 1 });

      // History is kept as it was uploaded.
      const rows = await api.store.db.query<{ rev: number; image: string; config: string | null; retries: number; checksum: string | null }>(
        'SELECT rev, image, config, retries, checksum FROM code_revisions WHERE code_id = $1 ORDER BY rev',
        [id],
      );
      t.same(
        rows.rows.map((r) => [r.rev, r.image, r.config, r.retries, r.checksum]),
        [
          [1, 'iron/hello:1', 'user=Alice', 2, md5(zip)],
          [2, 'iron/hello:2', 'user=Alice', 2, null],
          [3, 'iron/hello:3', 'user=Alice', 7, null],
          [4, 'iron/hello:4', null, 0, null],
          [5, 'iron/hello:5', null, 0, null],
          [6, 'iron/hello:5', null, 0, null],
          [7, 'iron/hello:5', null, 0, null],
          [8, 'iron/hello:5', null, 0, null],
          [9, 'iron/hello:5', null, 1, null],
          [10, 'iron/hello:5', null, 1, null],
        ],
      );
      t.equal(await codeCount(api, u.projectId, 'inherit'), 1, 'one package for all revisions');

      // A different name is a different package.
      const other = uploaded(t, await upload(u, { name: 'inherit-2', image: IMAGE }));
      t.not(other, id);
    });

    t.test('upload: multipart bodies as real clients build them', async (t) => {
      const zip = makeZip({ 'run.sh': '#!/bin/sh\necho hi\n', 'lib/x.txt': 'x' });
      const checksum = async (id: string) => (await u.project('GET', `/codes/${id}`)).body.latest_checksum;

      // The Go client: data part with no Content-Type, no file.
      const a = uploaded(t, await upload(u, { name: 'mp-plain', image: IMAGE }), 'data part without Content-Type');
      t.equal(await checksum(a), undefined);

      // As in the API reference sample.
      uploaded(
        t,
        await upload(u, { name: 'mp-text', image: IMAGE, file_name: 'MyWorker.rb', runtime: 'ruby' }, undefined, {
          dataType: 'text/plain; charset=utf-8',
        }),
        'data part as text/plain, unknown keys ignored',
      );
      uploaded(t, await upload(u, { name: 'mp-json', image: IMAGE }, undefined, { dataType: 'application/json' }), 'data as JSON');

      // file parts whose names lack .zip, or have no name at all
      const b = uploaded(
        t,
        await upload(u, { name: 'mp-noext', image: IMAGE }, { data: zip, filename: 'worker', type: 'application/octet-stream' }),
        'file named without .zip',
      );
      t.equal(await checksum(b), md5(zip));
      const c = uploaded(t, await upload(u, { name: 'mp-tmpname', image: IMAGE }, { data: zip, filename: 'RackMultipart20160101-1-abc' }));
      t.equal(await checksum(c), md5(zip));
      const d = uploaded(t, await upload(u, { name: 'mp-nofilename', image: IMAGE }, { data: zip, filename: null }), 'file part without filename');
      t.equal(await checksum(d), md5(zip));

      // The file part first, then data; and an unknown extra part.
      const e = uploaded(
        t,
        await sendParts(u, [
          { name: 'extra', data: 'ignored' },
          { name: 'file', filename: 'w.zip', type: 'application/zip', data: zip },
          { name: 'data', data: JSON.stringify({ name: 'mp-order', image: IMAGE }) },
        ]),
        'file part before data part',
      );
      t.equal(await checksum(e), md5(zip));

      // Some clients send data as a file part of its own (a JSON blob with a filename).
      const f = uploaded(
        t,
        await sendParts(u, [
          { name: 'data', filename: 'data.json', type: 'application/json', data: JSON.stringify({ name: 'mp-datafile', image: IMAGE }) },
          { name: 'file', filename: 'code.zip', type: 'application/zip', data: zip },
        ]),
        'data as a file part, plus the zip',
      );
      t.equal(await checksum(f), md5(zip), 'the zip after a file-like data part is kept');

      // Quoted boundary, and "multipart/form-data ; boundary=" as the reference spells it.
      uploaded(
        t,
        await sendParts(u, [{ name: 'data', data: JSON.stringify({ name: 'mp-quoted', image: IMAGE }) }], (b) => `multipart/form-data; boundary="${b}"`),
        'quoted boundary',
      );
      uploaded(
        t,
        await sendParts(u, [{ name: 'data', data: JSON.stringify({ name: 'mp-spaced', image: IMAGE }) }], (b) => `multipart/form-data ; boundary=${b}`),
        'space before ;',
      );

      // The test helper's FormData (undici) encoding.
      const g = uploaded(t, await uploadCode(u, { name: 'mp-formdata' }, { data: zip, name: 'bundle' }), 'FormData');
      t.equal(await checksum(g), md5(zip));

      // An empty file part is no file: the revision runs its image.
      const h = uploaded(t, await upload(u, { name: 'mp-empty', image: IMAGE }, { data: Buffer.alloc(0) }), 'empty file part');
      t.equal(await checksum(h), undefined);

      // Stored exactly as sent.
      const arch = await api.store.db.query<{ data: Uint8Array }>(
        'SELECT a.data FROM code_archives a JOIN codes c ON c.latest_revision_id = a.revision_id WHERE c.id = $1',
        [b],
      );
      t.ok(Buffer.from(arch.rows[0]!.data).equals(zip), 'archive row holds the uploaded bytes');
    });

    t.test('upload: concurrent first uploads of one name make one package', async (t) => {
      const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => upload(u, { name: 'race', image: IMAGE, config: `n=${i}` })));
      for (const r of replies) t.equal(r.status, 200, r.text);
      const ids = new Set(replies.map((r) => r.body.id));
      t.equal(ids.size, 1, 'one code id');
      t.same(replies.map((r) => r.body.rev as number).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6], 'revs 1..6, none repeated');
      t.equal(await codeCount(api, u.projectId, 'race'), 1);
      const g = await u.project('GET', `/codes/${[...ids][0]}`);
      t.equal(g.body.rev, 6);
    });

    t.test('upload: invalid uploads are 400 naming the field, and store nothing', async (t) => {
      const before = await codeCount(api, u.projectId);
      const zip = makeZip({ a: 'b' });
      const bad: [string, unknown, RegExp, UploadFile?][] = [
        ['name missing', { image: IMAGE }, /^name is required/],
        ['name empty', { name: '', image: IMAGE }, /^name is required/],
        ['name not a string', { name: 42, image: IMAGE }, /^name must be a string/],
        ['name with control chars', { name: 'a\nb', image: IMAGE }, /^name /],
        ['name over 255 bytes', { name: 'n'.repeat(256), image: IMAGE }, /^name must be at most 255 bytes/],
        ['image missing on a first upload', { name: 'bad' }, /^image is required: the Docker image the code runs in/],
        ['image empty on a first upload', { name: 'bad', image: '' }, /^image is required/],
        ['image not a string', { name: 'bad', image: 7 }, /^image must be a string/],
        ['image with capitals', { name: 'bad', image: 'Iron/Hello' }, /^image must be a Docker image reference/],
        ['image with a space', { name: 'bad', image: 'iron hello' }, /^image must be a Docker image reference/],
        ['image with an empty tag', { name: 'bad', image: 'busybox:' }, /^image must be a Docker image reference/],
        ['image with a bad digest', { name: 'bad', image: 'busybox@sha256:abc' }, /^image must be a Docker image reference/],
        ['config over 64 KB', { name: 'bad', image: IMAGE, config: 'c'.repeat(65537) }, /^config must be at most 65536 bytes/],
        ['config multibyte over 64 KB', { name: 'bad', image: IMAGE, config: 'é'.repeat(32769) }, /^config must be at most 65536 bytes/],
        ['config not a string', { name: 'bad', image: IMAGE, config: { a: 1 } }, /^config must be a string/],
        ['command not a string', { name: 'bad', image: IMAGE, command: ['a'] }, /^command must be a string/],
        ['log_streams unknown', { name: 'bad', image: IMAGE, log_streams: 'both' }, /^log_streams must be one of merged, separate/],
        ['log_streams not a string', { name: 'bad', image: IMAGE, log_streams: true }, /^log_streams must be a string/],
        ['retries 11', { name: 'bad', image: IMAGE, retries: 11 }, /^retries must be an integer from 0 to 10/],
        ['retries -1', { name: 'bad', image: IMAGE, retries: -1 }, /^retries must be an integer from 0 to 10/],
        ['retries 1.5', { name: 'bad', image: IMAGE, retries: 1.5 }, /^retries must be an integer/],
        ['retries text', { name: 'bad', image: IMAGE, retries: 'twice' }, /^retries must be an integer/],
        ['retries_delay -1', { name: 'bad', image: IMAGE, retries_delay: -1 }, /^retries_delay must be an integer from 0/],
        ['retries_delay text', { name: 'bad', image: IMAGE, retries_delay: 'soon' }, /^retries_delay must be an integer/],
        ['default_priority 3', { name: 'bad', image: IMAGE, default_priority: 3 }, /^default_priority must be an integer from 0 to 2/],
        ['default_priority -1', { name: 'bad', image: IMAGE, default_priority: -1 }, /^default_priority must be an integer from 0 to 2/],
        ['priority 5', { name: 'bad', image: IMAGE, priority: 5 }, /^priority must be an integer from 0 to 2/],
        ['max_concurrency text', { name: 'bad', image: IMAGE, max_concurrency: 'lots' }, /^max_concurrency must be an integer/],
        ['max_concurrency 2.5', { name: 'bad', image: IMAGE, max_concurrency: 2.5 }, /^max_concurrency must be an integer/],
        ['max_concurrency -2', { name: 'bad', image: IMAGE, max_concurrency: -2 }, /^max_concurrency must be an integer/],
        ['env_vars an array', { name: 'bad', image: IMAGE, env_vars: ['A=1'] }, /^env_vars must be an object/],
        ['env_vars a string', { name: 'bad', image: IMAGE, env_vars: 'A=1' }, /^env_vars must be an object/],
        ['env_vars value a number', { name: 'bad', image: IMAGE, env_vars: { A: 1 } }, /^env_vars\.A must be a string/],
        ['env_vars value an object', { name: 'bad', image: IMAGE, env_vars: { A: { b: 'c' } } }, /^env_vars\.A must be a string/],
        ['env_vars bad name', { name: 'bad', image: IMAGE, env_vars: { '1A': 'x' } }, /^env_vars: "1A" is not a valid variable name/],
        ['env_vars name with =', { name: 'bad', image: IMAGE, env_vars: { 'A=B': 'x' } }, /^env_vars: "A=B" is not a valid/],
        ['env_vars too large', { name: 'bad', image: IMAGE, env_vars: { BIG: 'v'.repeat(65536) } }, /^env_vars must be at most 65536 bytes/],
        ['data not JSON', '{"name": "bad",', /^data: not valid JSON/],
        ['data an array', '[{"name": "bad"}]', /^data: must be a JSON object/],
        ['data null', 'null', /^data: must be a JSON object/],
        ['file not a zip', { name: 'bad', image: IMAGE }, /^file must be a zip archive/, { data: Buffer.from('#!/bin/sh\necho not a zip, just text padded out\n') }],
        ['file a truncated zip header', { name: 'bad', image: IMAGE }, /^file must be a zip archive/, { data: zip.subarray(0, 10) }],
        ['file a gzip', { name: 'bad', image: IMAGE }, /^file must be a zip archive/, { data: Buffer.from('1f8b0800000000000003' + '00'.repeat(20), 'hex') }],
      ];
      for (const env of ['PAYLOAD_FILE', 'CONFIG_FILE', 'TASK_ID', 'PROJECT_ID', 'CODE_NAME']) {
        bad.push([`env_vars reserved ${env}`, { name: 'bad', image: IMAGE, env_vars: { OK: 'x', [env]: 'y' } }, new RegExp(`^env_vars: ${env} is set by Gantry`)]);
      }
      for (const [what, data, msg, file] of bad) {
        isError(t, await upload(u, data, file), 400, msg, what);
      }

      // No data part at all; a data part under another name; not multipart.
      isError(t, await sendParts(u, [{ name: 'file', filename: 'w.zip', data: zip }]), 400, /^data: /, 'no data part');
      isError(t, await sendParts(u, [{ name: 'meta', data: JSON.stringify({ name: 'bad', image: IMAGE }) }]), 400, /^data: /, 'data part misnamed');
      isError(
        t,
        await u.project('POST', '/codes', { json: { name: 'bad', image: IMAGE } }),
        400,
        /multipart\/form-data/,
        'JSON body instead of multipart',
      );
      isError(
        t,
        await u.project('POST', '/codes', { body: 'garbage', headers: { 'Content-Type': 'multipart/form-data' } }),
        400,
        /multipart/i,
        'multipart without boundary',
      );

      t.equal(await codeCount(api, u.projectId), before, 'no code package was created');
      t.equal(await codeCount(api, u.projectId, 'bad'), 0);

      // The limits themselves are accepted.
      const edge = await upload(u, {
        name: 'edges',
        image: `registry.example.com:5000/team/app-x_y:1.2.3@sha256:${'a'.repeat(64)}`,
        config: 'c'.repeat(65536),
        retries: 10,
        retries_delay: 0,
        default_priority: 2,
        max_concurrency: 100000,
        env_vars: { _UNDER: 'x', lower_case: 'y', EMPTY: '' },
      });
      const id = uploaded(t, edge, 'limits accepted');
      const g = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(g.config.length, 65536);
      t.match(g, { retries: 10, retries_delay: 0, default_priority: 2, max_concurrency: 100000 });
      t.same(g.env_vars, { _UNDER: 'x', lower_case: 'y', EMPTY: '' });
      for (const image of ['busybox', 'iron/node:4', 'localhost:5000/x', 'gcr.io/p/a/b:v1', 'a__b', 'a--b.c']) {
        uploaded(t, await upload(u, { name: `img-${image}`, image }), `image ${image}`);
      }
      // max_concurrency 0 and -1 mean no limit, as when omitted
      for (const mc of [0, -1]) {
        const r = await upload(u, { name: 'nolimit', image: IMAGE, max_concurrency: mc });
        uploaded(t, r, `max_concurrency ${mc}`);
        t.notOk('max_concurrency' in r.body, `max_concurrency ${mc} is no limit`);
      }
    });

    t.test('get: every documented field', async (t) => {
      const zip = makeZip({ hello: '#!/bin/sh\necho "$GREETING"\n' });
      clock.set(T0 + 3600_000);
      const created = new Date(clock.now()).toISOString();
      const r = await upload(
        u,
        {
          name: 'MyWorker',
          image: 'example/hello',
          command: './hello',
          config: 'user=Alice',
          max_concurrency: 5,
          retries: 2,
          retries_delay: 60,
          default_priority: 1,
          env_vars: { GREETING: 'Good Morning' },
        },
        { data: zip },
      );
      const id = uploaded(t, r);
      const g = await u.project('GET', `/codes/${id}`);
      t.equal(g.status, 200);
      t.match(g.headers.get('content-type') ?? '', /^application\/json/);
      const c = g.body;
      const rev1 = (await api.store.db.query<{ id: string }>('SELECT id FROM code_revisions WHERE code_id = $1 AND rev = 1', [id])).rows[0]!.id;
      t.match(c, {
        id,
        project_id: u.projectId,
        name: 'MyWorker',
        created_at: created,
        rev: 1,
        latest_history_id: rev1,
        latest_change: created,
        latest_checksum: md5(zip),
        image: 'example/hello',
        command: './hello',
        max_concurrency: 5,
        retries: 2,
        retries_delay: 60,
        config: 'user=Alice',
        paused: false,
      });
      t.same(c.env_vars, { GREETING: 'Good Morning' });
      t.equal(c.priority, 1, 'priority, as documented');
      t.equal(c.code_size, zip.length);
      t.equal(c.log_streams, 'merged', 'a new package joins stderr to stdout, so its log keeps the order');
      for (const k of ['id', 'project_id', 'latest_history_id']) t.match(c[k], ID, `${k} is an id`);
      for (const k of ['created_at', 'latest_change']) t.match(c[k], RFC3339, `${k} is RFC 3339`);
      t.notOk('runtime' in c || 'stack' in c, 'image packages have no runtime or stack');
      const { msg: _msg, ...fromUpload } = r.body;
      t.same(fromUpload, c, 'the upload reply describes the same package');

      // The list carries the same objects.
      const list = await u.project('GET', '/codes', { query: { per_page: 100 } });
      t.same(
        (list.body.codes as { id: string }[]).find((x) => x.id === id),
        c,
      );

      clock.advance(90_000);
      const later = new Date(clock.now()).toISOString();
      await upload(u, { name: 'MyWorker', image: 'example/hello:2' });
      const g2 = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(g2.created_at, created, 'created_at is when the package was first created');
      t.equal(g2.latest_change, later, 'latest_change moves with each upload');
      t.equal(g2.rev, 2);
      t.not(g2.latest_history_id, rev1);
      const rev2 = (await api.store.db.query<{ id: string }>('SELECT id FROM code_revisions WHERE code_id = $1 AND rev = 2', [id])).rows[0]!.id;
      t.equal(g2.latest_history_id, rev2);
      t.notOk('latest_checksum' in g2, 'no checksum for an image-only revision');

      isError(t, await u.project('GET', `/codes/${'0'.repeat(24)}`), 404, 'Code package not found', 'unknown id');
    });

    t.test('list: pagination', async (t) => {
      const v = await api.newUser();
      const empty = await v.project('GET', '/codes');
      t.equal(empty.status, 200);
      t.same(empty.body, { codes: [] });

      const names = Array.from({ length: 35 }, (_, i) => `c${String(i).padStart(2, '0')}`);
      const ids = new Map<string, string>();
      for (const name of names) ids.set(name, uploaded(t, await upload(v, { name, image: IMAGE }), name));
      await upload(v, { name: 'c00', image: IMAGE }); // a second revision is not a second package

      const page = async (q: Record<string, string | number>) => {
        const r = await v.project('GET', '/codes', { query: q });
        t.equal(r.status, 200, `${JSON.stringify(q)}: ${r.status}`);
        t.same(Object.keys(r.body), ['codes']);
        return (r.body.codes as { id: string; name: string }[]).map((c) => c.name);
      };
      const def = await page({});
      t.equal(def.length, 30, 'default per_page is 30');
      t.same(await page({ page: 0 }), def, 'page 0 is the default');
      const rest = await page({ page: 1 });
      t.equal(rest.length, 5);
      t.same([...def, ...rest].sort(), names, 'pages 0 and 1 hold every package once');
      t.same(await page({ page: 2 }), []);

      const byTen: string[] = [];
      for (let p = 0; p < 4; p++) {
        const got = await page({ page: p, per_page: 10 });
        t.equal(got.length, p < 3 ? 10 : 5, `page ${p} of 10`);
        byTen.push(...got);
      }
      t.same(byTen.sort(), names, 'per_page 10 walks every package once');
      t.equal((await page({ per_page: 100 })).length, 35, 'per_page 100');
      t.equal((await page({ per_page: 1, page: 34 })).length, 1, 'per_page 1, page 34');
      t.same(await page({ per_page: 1, page: 35 }), []);
      t.same(await page({ page: 100 }), [], 'page 100 is allowed');
      t.equal((await page({ page: '1', per_page: '20' })).length, 15);

      // Every entry is a full code object of this project.
      const all = (await v.project('GET', '/codes', { query: { per_page: 100 } })).body.codes as Record<string, unknown>[];
      for (const c of all) {
        t.equal(c.project_id, v.projectId);
        t.equal(c.id, ids.get(c.name as string));
        t.equal(c.rev, c.name === 'c00' ? 2 : 1);
      }

      for (const [q, field] of [
        [{ page: 101 }, 'page'],
        [{ page: -1 }, 'page'],
        [{ page: 'x' }, 'page'],
        [{ page: '1.5' }, 'page'],
        [{ per_page: 0 }, 'per_page'],
        [{ per_page: 101 }, 'per_page'],
        [{ per_page: -5 }, 'per_page'],
        [{ per_page: 'all' }, 'per_page'],
      ] as const) {
        isError(t, await v.project('GET', '/codes', { query: q }), 400, new RegExp(`^${field} must be an integer from`), JSON.stringify(q));
      }
    });

    t.test('delete: the package is gone, its name is free again', async (t) => {
      const zip = makeZip({ doomed: 'x' });
      const id = uploaded(t, await upload(u, { name: 'doomed', image: IMAGE }, { data: zip }));
      await upload(u, { name: 'doomed', image: IMAGE, config: 'two' });
      const [taskId] = await queueTasks(t, u, 'doomed', 1);

      const d = await u.project('DELETE', `/codes/${id}`);
      t.equal(d.status, 200, d.text);
      t.match(d.headers.get('content-type') ?? '', /^application\/json/);
      t.same(d.body, { msg: 'Deleted' });

      isError(t, await u.project('GET', `/codes/${id}`), 404, 'Code package not found', 'get after delete');
      isError(t, await u.project('DELETE', `/codes/${id}`), 404, 'Code package not found', 'delete twice');
      for (const p of ['/download', '/revisions', '/stats']) {
        isError(t, await u.project('GET', `/codes/${id}${p}`), 404, 'Code package not found', `${p} after delete`);
      }
      for (const p of ['/pause_task_queue', '/resume_task_queue']) {
        isError(t, await u.project('POST', `/codes/${id}${p}`), 404, 'Code package not found', `${p} after delete`);
      }
      const list = (await u.project('GET', '/codes', { query: { per_page: 100 } })).body.codes as { id: string; name: string }[];
      t.notOk(list.some((c) => c.id === id || c.name === 'doomed'), 'not listed');
      const q = await u.project('POST', '/tasks', { json: { tasks: [{ code_name: 'doomed' }] } });
      isError(t, q, 404, /code_name/, 'queue on a deleted package');
      const task = await u.project('GET', `/tasks/${taskId}`);
      t.equal(task.status, 200, 'a task queued before the delete is still there');
      t.equal(task.body.code_id, id);

      const again = await upload(u, { name: 'doomed', image: 'iron/other' });
      const newId = uploaded(t, again, 'name reused');
      t.not(newId, id, 'a new package');
      t.equal(again.body.rev, 1, 'starting at rev 1');
      const g = (await u.project('GET', `/codes/${newId}`)).body;
      t.match(g, { id: newId, name: 'doomed', rev: 1, image: 'iron/other' });
      t.notOk('config' in g, 'nothing is inherited from the deleted package');
      const revs = (await u.project('GET', `/codes/${newId}/revisions`)).body.revisions as unknown[];
      t.equal(revs.length, 1);

      const rows = await api.store.db.query<{ id: string; deleted: boolean }>(
        'SELECT id, deleted_at IS NOT NULL AS deleted FROM codes WHERE project_id = $1 AND name = $2 ORDER BY deleted DESC',
        [u.projectId, 'doomed'],
      );
      t.same(rows.rows, [
        { id, deleted: true },
        { id: newId, deleted: false },
      ]);
    });

    t.test('download: the uploaded zip of a revision', async (t) => {
      const zipA = makeZip({ 'a.txt': 'first' });
      const zipB = makeZip({ 'b.txt': 'second', 'bin/run': randomBytes(3000) });
      const zipD = makeZip({ 'd.txt': 'fourth' });
      const id = uploaded(t, await upload(u, { name: 'dl', image: IMAGE }, { data: zipA }));
      await upload(u, { name: 'dl', image: IMAGE }, { data: zipB, filename: 'whatever' });
      await upload(u, { name: 'dl', image: IMAGE }); // rev 3: image only

      const checkZip = async (q: string, zip: Buffer, rev: number) => {
        const r = await fetchBytes(api, u, `/codes/${id}/download${q}`);
        t.equal(r.status, 200, `download${q}: ${r.status}`);
        t.ok(r.bytes.equals(zip), `download${q} returns the bytes uploaded as rev ${rev}`);
        t.match(r.headers.get('content-type') ?? '', /^application\/zip/);
        t.match(r.headers.get('content-disposition') ?? '', new RegExp(`^attachment; filename=dl_${rev}\\.zip$`));
      };
      await checkZip('?revision=1', zipA, 1);
      await checkZip('?revision=2', zipB, 2);

      isError(t, await u.project('GET', `/codes/${id}/download`), 404, /no zip/, 'latest revision is image-only');
      isError(t, await u.project('GET', `/codes/${id}/download`, { query: { revision: 3 } }), 404, /no zip/, 'image-only revision');
      isError(t, await u.project('GET', `/codes/${id}/download`, { query: { revision: 4 } }), 404, /Revision 4 .*not found/, 'unknown revision');
      isError(t, await u.project('GET', `/codes/${id}/download`, { query: { revision: 999 } }), 404, /not found/, 'unknown revision');
      isError(t, await u.project('GET', `/codes/${id}/download`, { query: { revision: 0 } }), 400, /^revision /, 'revision 0');
      isError(t, await u.project('GET', `/codes/${id}/download`, { query: { revision: 'latest' } }), 400, /^revision /, 'revision text');

      await upload(u, { name: 'dl', image: IMAGE }, { data: zipD });
      await checkZip('', zipD, 4);
      await checkZip('?revision=4', zipD, 4);
      await checkZip('?revision=1', zipA, 1);
      const g = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(g.latest_checksum, md5(zipD), 'latest_checksum is the MD5 of the latest zip');
      isError(t, await u.project('GET', `/codes/${'f'.repeat(24)}/download`), 404, 'Code package not found');

      // A name that is not a bare token: quoted ASCII fallback plus the exact name (RFC 6266).
      const spaced = uploaded(t, await upload(u, { name: 'My Worker é', image: IMAGE }, { data: zipA }));
      const s = await fetchBytes(api, u, `/codes/${spaced}/download`);
      t.equal(s.status, 200);
      t.ok(s.bytes.equals(zipA));
      t.equal(
        s.headers.get('content-disposition'),
        `attachment; filename="My Worker __1.zip"; filename*=UTF-8''My%20Worker%20%C3%A9_1.zip`,
      );
    });

    t.test('revisions: one entry per upload, paginated', async (t) => {
      const zip1 = makeZip({ one: '1' });
      const zip3 = makeZip({ three: '333' });
      const id = uploaded(t, await upload(u, { name: 'revs', image: 'iron/a', config: 'cfg' }, { data: zip1 }));
      clock.advance(1000);
      await upload(u, { name: 'revs', image: 'iron/b', command: 'run' });
      clock.advance(1000);
      await upload(u, { name: 'revs', image: 'iron/c' }, { data: zip3 });
      clock.advance(1000);
      await upload(u, { name: 'revs', image: 'iron/d', config: null, env_vars: { K: 'v' } });
      clock.advance(1000);
      await upload(u, { name: 'revs', image: 'iron/e', max_concurrency: 2, retries: 1 });

      const r = await u.project('GET', `/codes/${id}/revisions`);
      t.equal(r.status, 200);
      t.same(Object.keys(r.body), ['revisions']);
      const revs = r.body.revisions as Record<string, any>[];
      t.equal(revs.length, 5, 'one revision per upload');
      t.same(revs.map((x) => x.rev), [1, 2, 3, 4, 5]);
      t.same(revs.map((x) => x.image), ['iron/a', 'iron/b', 'iron/c', 'iron/d', 'iron/e']);
      t.equal(new Set(revs.map((x) => x.id)).size, 5, 'distinct ids');
      for (const x of revs) {
        t.match(x, { code_id: id, project_id: u.projectId, name: 'revs' });
        t.match(x.id, ID);
        t.match(x.created_at, RFC3339);
      }
      t.equal(revs[0]!.created_at, new Date(clock.now().getTime() - 4000).toISOString());
      t.equal(revs[4]!.created_at, clock.now().toISOString());
      t.match(revs[0], { checksum: md5(zip1), code_size: zip1.length, config: 'cfg' });
      t.match(revs[2], { checksum: md5(zip3), code_size: zip3.length, command: 'run', config: 'cfg' });
      for (const i of [1, 3, 4]) t.notOk('checksum' in revs[i]! || 'code_size' in revs[i]!, `rev ${i + 1} has no zip`);
      t.notOk('config' in revs[3]!, 'rev 4 cleared config');
      t.same(revs[3]!.env_vars, { K: 'v' });
      t.match(revs[4], { max_concurrency: 2, retries: 1, command: 'run' });
      const code = (await u.project('GET', `/codes/${id}`)).body;
      t.equal(revs[4]!.id, code.latest_history_id, 'the last revision is the latest history id');

      const pageOf = async (page: number, per_page: number) =>
        ((await u.project('GET', `/codes/${id}/revisions`, { query: { page, per_page } })).body.revisions as { rev: number }[]).map((x) => x.rev);
      t.same(await pageOf(0, 2), [1, 2]);
      t.same(await pageOf(1, 2), [3, 4]);
      t.same(await pageOf(2, 2), [5]);
      t.same(await pageOf(3, 2), []);
      t.same(await pageOf(100, 100), []);
      isError(t, await u.project('GET', `/codes/${id}/revisions`, { query: { per_page: 101 } }), 400, /^per_page must be/);
      isError(t, await u.project('GET', `/codes/${id}/revisions`, { query: { page: 101 } }), 400, /^page must be/);
      isError(t, await u.project('GET', `/codes/${'a'.repeat(24)}/revisions`), 404, 'Code package not found');
    });

    t.test('stats: task counts per status within a time window', async (t) => {
      clock.set(T0 + 10 * 86400_000);
      const old = clock.now().getTime();
      const id = uploaded(t, await upload(u, { name: 'stats', image: IMAGE }));
      uploaded(t, await upload(u, { name: 'stats-other', image: IMAGE }));
      const zero = Object.fromEntries(STATUSES.map((s) => [s, 0]));

      const empty = await u.project('GET', `/codes/${id}/stats`);
      t.equal(empty.status, 200);
      t.match(empty.headers.get('content-type') ?? '', /^application\/json/);
      t.same(empty.body, zero, 'no tasks yet: every status is 0');

      await queueTasks(t, u, 'stats', 2); // at `old`
      await queueTasks(t, u, 'stats-other', 4);
      t.same((await u.project('GET', `/codes/${id}/stats`)).body, { ...zero, queued: 2 }, 'queued tasks are counted');

      clock.advance(2 * 86400_000); // the first two are now outside the default window
      const now = clock.now().getTime();
      const fresh = await queueTasks(t, u, 'stats', 5);
      const c = await u.project('POST', `/tasks/${fresh[0]}/cancel`);
      t.equal(c.status, 200, c.text);
      // Final states are reached through the runner protocol; set them here directly.
      await api.store.db.query(`UPDATE tasks SET status = 'complete' WHERE id = $1`, [fresh[1]]);
      await api.store.db.query(`UPDATE tasks SET status = 'error' WHERE id = $1`, [fresh[2]]);

      const def = await u.project('GET', `/codes/${id}/stats`);
      t.same(def.body, { ...zero, queued: 2, cancelled: 1, complete: 1, error: 1 }, 'default window: the last 24 hours');

      const secs = (ms: number) => Math.floor(ms / 1000);
      const stats = async (q: Record<string, string | number>) => {
        const r = await u.project('GET', `/codes/${id}/stats`, { query: q });
        t.equal(r.status, 200, `${JSON.stringify(q)}: ${r.text}`);
        return r.body;
      };
      t.same(await stats({ start_date: secs(old) - 60, end_date: secs(old) + 60 }), { ...zero, queued: 2 }, 'an old window');
      t.same(await stats({ start_date: secs(old) + 60, end_date: secs(now) - 60 }), zero, 'a window with nothing in it');
      t.same(await stats({ start_date: secs(old) - 60 }), { ...zero, queued: 4, cancelled: 1, complete: 1, error: 1 }, 'start_date alone: up to now');
      t.same(await stats({ end_date: secs(old) + 60 }), { ...zero, queued: 2 }, 'end_date alone: the 24 hours before it');
      t.same(await stats({ start_date: secs(now), end_date: secs(now) }), { ...zero, queued: 2, cancelled: 1, complete: 1, error: 1 }, 'bounds are inclusive');
      t.same(await stats({ start_date: secs(now) + 1, end_date: secs(now) + 3600 }), zero, 'a window in the future');
      t.same(await stats({ start_date: secs(now) + 1 }), zero, 'start_date alone after now: an empty window, not an error');

      isError(t, await u.project('GET', `/codes/${id}/stats`, { query: { start_date: 'yesterday' } }), 400, /^start_date must be/);
      isError(t, await u.project('GET', `/codes/${id}/stats`, { query: { end_date: '12:00' } }), 400, /^end_date must be/);
      isError(
        t,
        await u.project('GET', `/codes/${id}/stats`, { query: { start_date: secs(now), end_date: secs(old) } }),
        400,
        /start_date must not be after end_date/,
      );
    });

    t.test('pause_task_queue and resume_task_queue', async (t) => {
      const id = uploaded(t, await upload(u, { name: 'pausable', image: IMAGE }));
      const busyId = uploaded(t, await upload(u, { name: 'busy', image: IMAGE }));
      const mine = await queueTasks(t, u, 'pausable', 2);
      const theirs = await queueTasks(t, u, 'busy', 1);
      const eligible = async () => new Set(await claimableIds(api.store, 'default', 100));
      const has = (set: Set<string>, ids: string[]) => ids.every((x) => set.has(x));
      const none = (set: Set<string>, ids: string[]) => ids.every((x) => !set.has(x));

      t.ok(has(await eligible(), [...mine, ...theirs]), 'all eligible before pausing');
      t.equal((await u.project('GET', `/codes/${id}`)).body.paused, false);

      const p = await u.project('POST', `/codes/${id}/pause_task_queue`);
      t.equal(p.status, 200, p.text);
      t.match(p.headers.get('content-type') ?? '', /^application\/json/);
      t.same(p.body, { msg: 'Paused' });
      t.equal((await u.project('GET', `/codes/${id}`)).body.paused, true, 'GET shows paused');
      const rows = await api.store.db.query<{ paused: boolean }>('SELECT paused FROM codes WHERE id = $1', [id]);
      t.equal(rows.rows[0]!.paused, true);

      let el = await eligible();
      t.ok(none(el, mine), 'a paused package hands out none of its tasks');
      t.ok(has(el, theirs), 'other packages are not paused');

      t.same((await u.project('POST', `/codes/${id}/pause_task_queue`)).body, { msg: 'Paused' }, 'pausing twice is fine');
      const during = await queueTasks(t, u, 'pausable', 1);
      t.equal((await u.project('GET', `/tasks/${during[0]}`)).body.status, 'queued', 'tasks can be queued while paused');
      t.ok(none(await eligible(), during), 'but are not handed out');
      uploaded(t, await upload(u, { name: 'pausable', image: 'iron/newer' }), 'upload while paused');
      t.equal((await u.project('GET', `/codes/${id}`)).body.paused, true, 'a new revision stays paused');
      t.ok(none(await eligible(), [...mine, ...during]));

      const r = await u.project('POST', `/codes/${id}/resume_task_queue`, { json: {} });
      t.equal(r.status, 200, r.text);
      t.same(r.body, { msg: 'Resumed' });
      t.equal((await u.project('GET', `/codes/${id}`)).body.paused, false, 'GET shows resumed');
      el = await eligible();
      t.ok(has(el, [...mine, ...during, ...theirs]), 'resumed: its tasks are handed out again');
      t.same((await u.project('POST', `/codes/${id}/resume_task_queue`)).body, { msg: 'Resumed' }, 'resuming twice is fine');
      t.equal((await u.project('GET', `/codes/${busyId}`)).body.paused, false);

      isError(t, await u.project('POST', `/codes/${'b'.repeat(24)}/pause_task_queue`), 404, 'Code package not found');
      isError(t, await u.project('POST', `/codes/${'b'.repeat(24)}/resume_task_queue`), 404, 'Code package not found');
      isError(t, await u.project('GET', `/codes/${id}/pause_task_queue`), 405, /Method not allowed/);
    });
  });

  t.test(`upload size limit on ${engine}`, async (t) => {
    const api = await startTestApi(t, engine, { env: { GANTRY_MAX_UPLOAD_BYTES: '70000' } });
    const u = api.user;
    const big = makeZip({ blob: randomBytes(80_000) });
    isError(t, await upload(u, { name: 'big', image: IMAGE }, { data: big }), 413, /larger than the limit of 70000 bytes/, 'declared length');

    // Without Content-Length: the limit holds while streaming.
    const m = multipart([
      { name: 'data', data: JSON.stringify({ name: 'big', image: IMAGE }) },
      { name: 'file', filename: 'big.zip', type: 'application/zip', data: big },
    ]);
    const r = await sendChunked(api.url, 'POST', `/2/projects/${u.projectId}/codes`, {
      'Content-Type': m.contentType,
      Authorization: `OAuth ${u.token}`,
    }, m.body);
    t.equal(r.status, 413, r.text);
    t.match(r.headers['content-type'] ?? '', /^application\/json/);
    t.same(Object.keys(JSON.parse(r.text)), ['msg']);
    t.equal(await codeCount(api, u.projectId), 0, 'nothing stored');

    // A client that drops the connection mid-upload leaves nothing behind.
    const cut = multipart([
      { name: 'data', data: JSON.stringify({ name: 'cut', image: IMAGE }) },
      { name: 'file', filename: 'cut.zip', type: 'application/zip', data: makeZip({ blob: randomBytes(40_000) }) },
    ]);
    await abortMidBody(
      api.url,
      `/2/projects/${u.projectId}/codes`,
      { 'Content-Type': cut.contentType, 'Content-Length': String(cut.body.length), Authorization: `OAuth ${u.token}` },
      cut.body.subarray(0, 20_000),
    );
    t.equal(await codeCount(api, u.projectId, 'cut'), 0, 'an aborted upload stores nothing');

    const small = makeZip({ blob: randomBytes(60_000) });
    const ok = await upload(u, { name: 'small', image: IMAGE }, { data: small });
    uploaded(t, ok, 'under the limit');
    const again = await sendChunked(api.url, 'POST',
      `/2/projects/${u.projectId}/codes`,
      { 'Content-Type': m.contentType, Authorization: `OAuth ${u.token}` },
      multipart(
        [
          { name: 'data', data: JSON.stringify({ name: 'small', image: IMAGE }) },
          { name: 'file', filename: 'small.zip', type: 'application/zip', data: small },
        ],
        m.boundary,
      ).body,
    );
    t.equal(again.status, 200, `chunked under the limit: ${again.text}`);
    t.equal(JSON.parse(again.text).rev, 2);
    const dl = await fetchBytes(api, u, `/codes/${ok.body.id}/download`);
    t.ok(dl.bytes.equals(small));

    // Checked again now: the server may still have been handling the aborted upload when its
    // client's socket closed. Only the two revisions of 'small' and their archives exist.
    t.equal(await codeCount(api, u.projectId, 'cut'), 0, 'the aborted upload stored nothing, once the server was done with it');
    const stored = await api.store.db.query<{ revisions: number; archives: number }>(
      `SELECT (SELECT count(*)::int FROM code_revisions) AS revisions, (SELECT count(*)::int FROM code_archives) AS archives`,
    );
    t.same(stored.rows[0], { revisions: 2, archives: 2 }, 'no revision or archive left by the aborted or refused uploads');
  });
}

for (const engine of ENGINES) {
  t.test(`revisions that existed before migration 014 keep their streams apart (${engine})`, async (t) => {
    const db: Db =
      engine === 'postgres'
        ? openPostgres({ url: await freshPgDatabase(t), poolMax: 2, connectTimeoutMs: 3000, queryTimeoutMs: 15000, log: silentLogger() })
        : await openPglite(tempDir(t, 'gantry-pglite-'));
    t.teardown(() => db.close());
    const all = loadMigrations();
    t.ok(all.some((m) => m.name === '014_log_streams.sql'));
    await migrate(db, silentLogger(), all.filter((m) => m.version < 14));
    const now = new Date();
    const ids = { user: 'a'.repeat(24), project: 'b'.repeat(24), code: 'c'.repeat(24), rev: 'd'.repeat(24) };
    await db.query('INSERT INTO users (id, email, created_at) VALUES ($1, $2, $3)', [ids.user, 'old@example.com', now]);
    await db.query('INSERT INTO projects (id, user_id, name, created_at) VALUES ($1, $2, $3, $4)', [ids.project, ids.user, 'old', now]);
    await db.query('INSERT INTO codes (id, project_id, name, rev, latest_revision_id, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $5, $5)', [
      ids.code,
      ids.project,
      'old',
      ids.rev,
      now,
    ]);
    await db.query('INSERT INTO code_revisions (id, code_id, project_id, rev, image, created_at) VALUES ($1, $2, $3, 1, $4, $5)', [
      ids.rev,
      ids.code,
      ids.project,
      IMAGE,
      now,
    ]);
    await migrate(db, silentLogger(), all);
    t.same((await db.query('SELECT log_streams FROM code_revisions')).rows, [{ log_streams: 'separate' }], 'tasks of an old package read their stderr apart, as they did');
    await t.rejects(db.query("UPDATE code_revisions SET log_streams = 'both'"), /violates check constraint/, 'the database refuses another value');
  });
}
