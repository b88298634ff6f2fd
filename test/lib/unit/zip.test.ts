/**
 * Zip code packages: inspectZip (lib/zip.ts) against the central directory, and the runner's
 * bounded unpack (runner/code-cache.ts) on a real file system. Every zip is built here,
 * including the ones no ordinary tool writes.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { GantryError } from '../../../lib/errors.ts';
import { DEFAULT_ZIP_LIMITS, ZipRejectedError, checkEntryName, inspectZip, type ZipLimits } from '../../../lib/zip.ts';
import { CodeCache, extract, unzip } from '../../../runner/code-cache.ts';
import { tempDir } from '../../helpers/db.ts';
import { makeZip, treeOf } from '../../helpers/zip.ts';

const MiB = 1024 * 1024;
const SMALL: ZipLimits = { maxEntries: 20, maxUnpackedBytes: 1 * MiB };
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

t.test('the defaults: 10,000 entries and 1 GiB unpacked', async (t) => {
  t.same(DEFAULT_ZIP_LIMITS, { maxEntries: 10_000, maxUnpackedBytes: 1024 * MiB });
  t.ok(Object.isFrozen(DEFAULT_ZIP_LIMITS));
  const e = new ZipRejectedError('x');
  t.ok(e instanceof GantryError, 'a GantryError');
  t.equal(e.code, 'zip_rejected', 'with a stable code');
});

t.test('a good package: counted from the central directory, unpacked with its modes', async (t) => {
  const zip = makeZip([
    { name: 'bin/', dir: true },
    { name: 'bin/run.sh', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
    { name: 'data/readme.txt', data: Buffer.from('hello'), method: 0 },
    { name: './top.txt', data: Buffer.alloc(1000, 'a') },
  ]);
  t.same(await inspectZip(zip, SMALL), { entries: 4, unpackedBytes: 18 + 5 + 1000 });
  const dest = path.join(tempDir(t), 'out');
  t.same(await unzip(zip, dest, SMALL), { entries: 4, bytes: 1023 });
  t.same(await treeOf(dest), ['bin', 'bin/run.sh', 'data', 'data/readme.txt', 'top.txt']);
  t.equal(fs.statSync(path.join(dest, 'bin/run.sh')).mode & 0o111, 0o111, 'the executable bit is kept');
  t.equal(fs.statSync(path.join(dest, 'data/readme.txt')).mode & 0o111, 0, 'others are not executable');
  t.equal(fs.readFileSync(path.join(dest, 'top.txt'), 'utf8'), 'a'.repeat(1000));
});

t.test('entry names must be relative paths inside the package', async (t) => {
  const bad = ['../x', 'a/../../x', 'a/..', '/etc/passwd', '//srv/x', 'C:/windows/x', 'c:x', '..\\..\\x', 'a\\..\\..\\x', 'a\0b', '', '.'];
  for (const name of bad) {
    t.throws(() => checkEntryName(name), { message: `entry ${JSON.stringify(name)} is not a relative path inside the package` }, `checkEntryName refuses ${JSON.stringify(name)}`);
  }
  t.equal(checkEntryName('a/./b//c'), 'a/b/c', 'harmless forms are normalised');
  t.equal(checkEntryName('..a/b..'), '..a/b..', 'dots inside a name are not ..');
  t.equal(checkEntryName('a\\b'), 'a/b', 'a backslash is a separator');

  for (const name of ['../x', '/abs/x', 'C:/x', 'ok/../../x', '..\\evil', 'nul\0byte']) {
    const zip = makeZip([{ name: 'fine.txt', data: Buffer.from('ok') }, { name, data: Buffer.from('pwned') }]);
    const want = { name: 'ZipRejectedError', message: `entry ${JSON.stringify(name)} is not a relative path inside the package` };
    await t.rejects(inspectZip(zip, DEFAULT_ZIP_LIMITS), want, `inspectZip refuses ${JSON.stringify(name)}`);
    const root = tempDir(t);
    const cache = new CodeCache(path.join(root, 'code'), DEFAULT_ZIP_LIMITS);
    await t.rejects(cache.get(md5(zip), async () => zip), want, `the code cache refuses ${JSON.stringify(name)}`);
    t.same(await treeOf(path.join(root, 'code')), [], 'and nothing was written, not even the good entry');
    t.ok((await treeOf(root)).every((f) => f === 'code'), 'nothing escaped the cache either');
  }
});

t.test('too many entries: refused from the end-of-central-directory record', async (t) => {
  const zip = makeZip(Array.from({ length: 21 }, (_, i) => ({ name: `f${i}`, data: Buffer.from('x') })));
  await t.rejects(inspectZip(zip, SMALL), { name: 'ZipRejectedError', message: 'the zip holds 21 entries; at most 20 are allowed' });
  t.same(await inspectZip(zip, { ...SMALL, maxEntries: 21 }), { entries: 21, unpackedBytes: 21 }, 'at the limit it is fine');
});

t.test('a zip bomb that declares its size: refused before a byte is written', async (t) => {
  // 4 MiB of zeros per entry compress to a few KiB: the whole zip is far below the limit.
  const zip = makeZip([
    { name: 'a.bin', data: Buffer.alloc(4 * MiB) },
    { name: 'b.bin', data: Buffer.alloc(4 * MiB) },
  ]);
  t.ok(zip.length < 64 * 1024, `the zip is small (${zip.length} bytes)`);
  const msg = `the zip unpacks to ${8 * MiB} bytes; at most ${MiB} are allowed`;
  await t.rejects(inspectZip(zip, SMALL), { name: 'ZipRejectedError', message: msg });
  const root = path.join(tempDir(t), 'code');
  const cache = new CodeCache(root, SMALL);
  await t.rejects(cache.get(md5(zip), async () => zip), { name: 'ZipRejectedError', message: msg });
  t.same(await treeOf(root), [], 'no files and no tmp directory left');
});

t.test('a zip bomb whose central directory lies about sizes: refused while unpacking, nothing left', async (t) => {
  // Each entry claims 10 bytes and holds 4 MiB: the central directory passes every check.
  const zip = makeZip([
    { name: 'small.txt', data: Buffer.from('fine') },
    { name: 'liar.bin', data: Buffer.alloc(4 * MiB), declaredSize: 10 },
    { name: 'liar2.bin', data: Buffer.alloc(4 * MiB), declaredSize: 10 },
  ]);
  t.same(await inspectZip(zip, SMALL), { entries: 3, unpackedBytes: 24 }, 'the declared sizes pass');
  const root = path.join(tempDir(t), 'code');
  const cache = new CodeCache(root, SMALL);
  await t.rejects(cache.get(md5(zip), async () => zip), {
    name: 'ZipRejectedError',
    message: /^entry "liar\.bin" cannot be unpacked: too many bytes in the stream/,
  });
  t.same(await treeOf(root), [], 'what was written before the refusal is gone with the tmp directory');

  // The byte count on its own (extract trusts no declared size): 5 × 300 KiB against 1 MiB.
  const many = makeZip(Array.from({ length: 5 }, (_, i) => ({ name: `part${i}`, data: Buffer.alloc(300 * 1024) })));
  await t.rejects(unzip(many, path.join(tempDir(t), 'a'), SMALL), { message: `the zip unpacks to ${5 * 300 * 1024} bytes; at most ${MiB} are allowed` }, 'unzip: by the declared total');
  const dest = path.join(tempDir(t), 'b');
  await t.rejects(extract(many, dest, SMALL), { name: 'ZipRejectedError', message: `the zip unpacks to more than ${MiB} bytes; at most ${MiB} are allowed` }, 'extract: by the bytes it wrote');
  const written = (await treeOf(dest)).map((f) => fs.statSync(path.join(dest, f)).size).reduce((a, b) => a + b, 0);
  t.ok(written <= MiB, `it stopped at the limit (${written} bytes written)`);
});

t.test('an unreadable zip, a corrupt entry, an unknown method, a clashing tree: refused, nothing left', async (t) => {
  await t.rejects(inspectZip(Buffer.from('PK\x03\x04 this is not a zip at all, only its first four bytes'), SMALL), {
    name: 'ZipRejectedError',
    message: /^the zip's central directory cannot be read: /,
  });
  const good = makeZip([{ name: 'a.txt', data: Buffer.from('x'.repeat(5000)) }]);
  await t.rejects(inspectZip(good.subarray(0, good.length - 30), SMALL), { message: /^the zip's central directory cannot be read: / }, 'a truncated zip');

  // Flip bytes inside the deflate stream of the only entry.
  const corrupt = Buffer.from(makeZip([{ name: 'c.txt', data: Buffer.from('hello world '.repeat(2000)) }]));
  for (let i = 40; i < 60; i++) corrupt[i] = 0xff;
  const root = path.join(tempDir(t), 'code');
  const cache = new CodeCache(root, SMALL);
  await t.rejects(cache.get(md5(corrupt), async () => corrupt), { name: 'ZipRejectedError', message: /^entry "c\.txt" cannot be unpacked: / });
  t.same(await treeOf(root), [], 'a corrupt entry leaves nothing');

  const bzip = makeZip([{ name: 'b.txt', data: Buffer.from('BZh9'), method: 12 }]);
  await t.rejects(inspectZip(bzip, SMALL), { message: 'entry "b.txt" uses compression method 12; only stored (0) and deflate (8) can be unpacked' });

  const clash = makeZip([
    { name: 'a', data: Buffer.from('a file') },
    { name: 'a/b', data: Buffer.from('under a file') },
  ]);
  await t.rejects(cache.get(md5(clash), async () => clash), { name: 'ZipRejectedError', message: /^entry "a\/b" cannot be unpacked: / });
  t.same(await treeOf(root), [], 'a clashing tree leaves nothing');
});

t.test('the code cache: once per checksum, and a crash\'s leftovers are swept at start', async (t) => {
  const root = path.join(tempDir(t), 'code');
  const zip = makeZip([{ name: 'x.txt', data: Buffer.from('x') }]);
  let fetches = 0;
  const cache = new CodeCache(root, SMALL);
  const [a, b] = await Promise.all([
    cache.get(md5(zip), async () => (fetches++, zip)),
    cache.get(md5(zip), async () => (fetches++, zip)),
  ]);
  t.equal(a, b);
  t.equal(fetches, 1, 'fetched once');
  t.equal(await cache.get(md5(zip), async () => (fetches++, zip)), a);
  t.equal(fetches, 1, 'served from disk after');

  // A process that died during an unpack left its tmp directory.
  const left = path.join(root, `${'0'.repeat(32)}.tmp-999-1`);
  fs.mkdirSync(path.join(left, 'half'), { recursive: true });
  fs.writeFileSync(path.join(left, 'half', 'file'), 'partial');
  new CodeCache(root, SMALL);
  t.notOk(fs.existsSync(left), 'removed by the next start');
  t.ok(fs.existsSync(path.join(a, 'x.txt')), 'complete packages stay');
});
