/**
 * HTTPS for the REST API (GANTRY_TLS_CERT, GANTRY_TLS_KEY): the API answers over TLS with
 * the configured certificate; a renewed certificate written over the files is served to new
 * connections without a restart; a changed pair that does not load keeps the one in use and
 * is logged; settings that cannot work are refused at start, naming the variable.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import t from 'tap';
import { loadConfig } from '../../../control-plane/config.ts';
import { startControlPlane } from '../../../control-plane/start.ts';
import { createLogger } from '../../../lib/logger.ts';
import { ConfigError } from '../../../lib/errors.ts';
import { freshStore, tempDir } from '../../helpers/db.ts';
import { until } from '../../helpers/runner.ts';

/** A self-signed certificate for 127.0.0.1 (and its key), as PEM text. */
function selfSigned(dir: string, cn: string): { cert: string; key: string } {
  const cert = path.join(dir, `${cn}.crt`);
  const key = path.join(dir, `${cn}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${cn}`,
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  return { cert: fs.readFileSync(cert, 'utf8'), key: fs.readFileSync(key, 'utf8') };
}

/** GET over a new TLS connection that trusts `ca`: the status, the body and the certificate's CN. */
function get(url: string, ca: string): Promise<{ status: number; body: string; cn: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, agent: false }, (res) => {
      const cn = String((res.socket as TLSSocket).getPeerCertificate().subject?.CN);
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, cn }));
    });
    req.on('error', reject);
  });
}

t.test('the API over TLS; a renewed certificate without a restart; a bad one keeps the last', async (t) => {
  const dir = tempDir(t);
  const a = selfSigned(dir, 'gantry-a');
  const b = selfSigned(dir, 'gantry-b');
  const certFile = path.join(dir, 'api.crt');
  const keyFile = path.join(dir, 'api.key');
  fs.writeFileSync(certFile, a.cert);
  fs.writeFileSync(keyFile, a.key);
  const lines: string[] = [];
  const log = createLogger({ name: 'gantry', level: 'info', destination: { write: (l: string) => lines.push(l) } as unknown as NodeJS.WritableStream });
  const store = await freshStore(t, 'pglite');
  const config = loadConfig({ GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', GANTRY_TLS_CERT: certFile, GANTRY_TLS_KEY: keyFile });
  const cp = await startControlPlane(config, log, { store, scheduler: false });
  t.teardown(() => cp.stop());
  t.match(cp.url, /^https:\/\/127\.0\.0\.1:\d+$/, 'the URL says https');
  const first = await get(`${cp.url}/healthz`, a.cert);
  t.same([first.status, first.cn], [200, 'gantry-a'], 'served with the configured certificate');
  await t.rejects(get(`${cp.url}/healthz`, b.cert), 'a client that trusts another certificate is refused');
  await t.rejects(fetch(cp.url.replace('https:', 'http:') + '/healthz'), 'plain HTTP is not served');

  // A renewal: the files are written over (key first, as tools often do).
  fs.writeFileSync(keyFile, b.key);
  fs.writeFileSync(certFile, b.cert);
  const renewed = await until('new connections get the renewed certificate', async () => {
    const r = await get(`${cp.url}/healthz`, b.cert).catch(() => undefined);
    return r?.cn === 'gantry-b' ? r : undefined;
  }, 20_000, 200);
  t.equal(renewed.status, 200);
  t.ok(lines.some((l) => l.includes('"msg":"TLS certificate reloaded"')), 'the reload is logged');

  // A half-written renewal: the pair does not load; B stays.
  fs.writeFileSync(certFile, a.cert); // A's certificate with B's key
  await until('the bad pair is logged', async () => lines.some((l) => l.includes('does not load; still serving the previous one')), 20_000, 200);
  t.equal((await get(`${cp.url}/healthz`, b.cert)).cn, 'gantry-b', 'still serving B');
});

t.test('TLS settings that cannot work are refused at start, naming the variable', async (t) => {
  const dir = tempDir(t);
  const a = selfSigned(dir, 'one');
  const b = selfSigned(dir, 'two');
  fs.writeFileSync(path.join(dir, 'a.crt'), a.cert);
  fs.writeFileSync(path.join(dir, 'b.key'), b.key);
  const load = (env: Record<string, string>) => () => loadConfig({ GANTRY_LOCAL_RUNNERS: '0', ...env });
  t.throws(load({ GANTRY_TLS_CERT: path.join(dir, 'a.crt') }), new ConfigError('GANTRY_TLS_CERT and GANTRY_TLS_KEY go together: set both (PEM files) for HTTPS, or neither (GANTRY_TLS_KEY is missing)'));
  t.throws(load({ GANTRY_TLS_CERT: path.join(dir, 'nope.crt'), GANTRY_TLS_KEY: path.join(dir, 'b.key') }), { message: /^GANTRY_TLS_CERT: cannot read .*nope\.crt \(ENOENT\)$/ });
  t.throws(load({ GANTRY_TLS_CERT: path.join(dir, 'a.crt'), GANTRY_TLS_KEY: path.join(dir, 'b.key') }), { message: /^GANTRY_TLS_CERT and GANTRY_TLS_KEY do not load as a PEM certificate and its key/ });
});
