import { createCipheriv } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { ConfigError } from '../../../lib/errors.ts';
import {
  SecretBox,
  SecretDecryptError,
  ensureSecretKeyFile,
  generateSecretKey,
  loadSecretBox,
  parseSecretKeys,
  sealedKeyId,
} from '../../../lib/secretbox.ts';

const K1 = Buffer.alloc(32, 1).toString('base64');
const K2 = Buffer.alloc(32, 2).toString('base64');

t.test('seal then open gives the plaintext back, for any text and context', async (t) => {
  const box = SecretBox.fromSpec(`a:${K1}`);
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme' }), fc.string({ maxLength: 80 }), (plain, ctx) => box.open(box.seal(plain, ctx), ctx) === plain),
    { numRuns: 300 },
  );
  t.equal(box.open(box.seal('', 'c'), 'c'), '', 'the empty string too');
});

t.test('the sealed form: versioned, names its key, fresh nonce, no plaintext', async (t) => {
  const box = SecretBox.fromSpec(`primary:${K1}`);
  const a = box.seal('AKIAEXAMPLESECRET', 'cluster/x/access_key_id');
  const b = box.seal('AKIAEXAMPLESECRET', 'cluster/x/access_key_id');
  t.match(a, /^g1\.primary\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]+$/);
  t.not(a, b, 'a fresh nonce per seal: equal plaintexts do not look equal');
  t.notOk(a.includes('AKIA'), 'no plaintext in the sealed text');
  t.equal(sealedKeyId(a), 'primary');
});

t.test('a known answer pins the format: AES-256-GCM, AAD = header|context', async (t) => {
  const key = Buffer.alloc(32, 7);
  const nonce = Buffer.alloc(12, 9);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(Buffer.from('g1.kx|cluster/abc/docker_auth'));
  const ct = Buffer.concat([c.update('dXNlcjpwYXNz', 'utf8'), c.final()]);
  const sealed = `g1.kx.${nonce.toString('base64url')}.${c.getAuthTag().toString('base64url')}.${ct.toString('base64url')}`;
  const box = SecretBox.fromSpec(`kx:${key.toString('base64')}`);
  t.equal(box.open(sealed, 'cluster/abc/docker_auth'), 'dXNlcjpwYXNz');
});

t.test('a value opens only in its own context, unaltered, with its own key', async (t) => {
  const box = SecretBox.fromSpec(`a:${K1}`);
  const s = box.seal('wJalrXUtnFEMI', 'cluster/1/secret_access_key');
  t.throws(() => box.open(s, 'cluster/2/secret_access_key'), SecretDecryptError, 'another row');
  t.throws(() => box.open(s, 'cluster/1/docker_auth'), SecretDecryptError, 'another field');
  const parts = s.split('.');
  const flipped = Buffer.from(parts[4]!, 'base64url');
  flipped[0]! ^= 1;
  t.throws(() => box.open([...parts.slice(0, 4), flipped.toString('base64url')].join('.'), 'cluster/1/secret_access_key'), SecretDecryptError, 'a flipped bit');
  const other = SecretBox.fromSpec(`a:${K2}`);
  t.throws(() => other.open(s, 'cluster/1/secret_access_key'), /failed authentication/, 'the same id with another key');
  const renamed = SecretBox.fromSpec(`b:${K1}`);
  t.throws(() => renamed.open(s, 'cluster/1/secret_access_key'), /key id a, which is not among the configured keys \(b\)/, 'an unknown key id is named');
  t.throws(() => renamed.open(`b${s.slice(1)}`, 'x'), /not in the g1 format/);
  for (const bad of ['', 'plain text', 'g1.a.x.y', 'g2.a.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA.AA']) {
    t.throws(() => box.open(bad, 'c'), SecretDecryptError, `malformed ${JSON.stringify(bad)}`);
  }
  try {
    other.open(s, 'cluster/1/secret_access_key');
  } catch (err) {
    t.notOk((err as Error).message.includes('wJalrXUtnFEMI'), 'the error does not quote the value');
  }
});

t.test('rotation: the first key seals, every key opens, isStale finds values to rewrite', async (t) => {
  const old = SecretBox.fromSpec(`old:${K1}`);
  const sealedOld = old.seal('v', 'ctx');
  const both = SecretBox.fromSpec(`new:${K2}, old:${K1}`);
  t.same(both.keyIds, ['new', 'old']);
  t.equal(both.primaryKeyId, 'new');
  t.equal(both.open(sealedOld, 'ctx'), 'v', 'the old key still opens old values');
  t.ok(both.isStale(sealedOld));
  const resealed = both.seal(both.open(sealedOld, 'ctx'), 'ctx');
  t.notOk(both.isStale(resealed));
  t.equal(SecretBox.fromSpec(`new:${K2}`).open(resealed, 'ctx'), 'v', 'after the re-encryption the old key can go');
  t.throws(() => SecretBox.fromSpec(`new:${K2}`).open(sealedOld, 'ctx'), /key id old/);
});

t.test('key lists: parsed strictly, errors name the entry but never the key', async (t) => {
  t.same(parseSecretKeys(`a:${K1}`).map((k) => [k.id, k.key.length]), [['a', 32]]);
  t.same(parseSecretKeys(` a:${K1} ,b:${Buffer.alloc(32, 3).toString('base64url')}, `).map((k) => k.id), ['a', 'b'], 'spaces, base64url, a trailing comma');
  const cases: [string, RegExp][] = [
    ['', /at least one key/],
    [K1, /key 1 must look like keyid:base64/],
    [`bad id:${K1}`, /key 1 must look like/],
    [`a:${Buffer.alloc(16).toString('base64')}`, /key a must be 32 bytes \(AES-256\), got 16/],
    [`a:not*base64`, /key a is not base64/],
    [`a:${K1},a:${K2}`, /key id a appears twice/],
  ];
  for (const [spec, re] of cases) {
    try {
      parseSecretKeys(spec);
      t.fail(`accepted ${spec}`);
    } catch (err) {
      t.type(err, ConfigError);
      t.match((err as Error).message, re);
      t.match((err as Error).message, /^GANTRY_SECRET_KEYS/, 'names the variable');
      t.notOk((err as Error).message.includes(K1.slice(0, 12)), 'no key material in the message');
    }
  }
  t.match(generateSecretKey('k2'), /^k2:[A-Za-z0-9+/]{43}=$/);
  t.equal(parseSecretKeys(generateSecretKey('k3'))[0]!.key.length, 32);
});

t.test('the embedded key file: created once with mode 0600, then reused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-secretbox-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = ensureSecretKeyFile(path.join(dir, 'data'));
  t.ok(first.created);
  t.equal(fs.statSync(first.file).mode & 0o777, 0o600);
  t.match(first.spec, /^local-[0-9a-f]{8}:/);
  const second = ensureSecretKeyFile(path.join(dir, 'data'));
  t.notOk(second.created);
  t.equal(second.spec, first.spec, 'the same key on the next start');
  const warnings: string[] = [];
  const box = loadSecretBox({ keys: undefined, dataDir: path.join(dir, 'data'), shared: true, warn: (m) => warnings.push(m) });
  t.equal(box.primaryKeyId, first.spec.split(':')[0]);
  t.match(warnings, [/every replica needs the same keys/], 'beside PostgreSQL, a key file is worth a warning');
  fs.chmodSync(first.file, 0o644);
  loadSecretBox({ keys: undefined, dataDir: path.join(dir, 'data'), warn: (m) => warnings.push(m) });
  t.match(warnings[1], /readable by other users/);
  const configured = loadSecretBox({ keys: `env:${K1}`, dataDir: path.join(dir, 'unused') });
  t.equal(configured.primaryKeyId, 'env', 'GANTRY_SECRET_KEYS wins over the file');
  t.notOk(fs.existsSync(path.join(dir, 'unused')), 'and no file is made then');
});
