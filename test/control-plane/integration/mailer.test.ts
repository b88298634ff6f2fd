/**
 * E-mail notifications (control-plane/outbox/mailer.ts) through real SMTP servers on
 * 127.0.0.1 (smtp-server): the message as it arrives (parsed with mailparser), the login the
 * server received, STARTTLS that is required and never skipped, answers that are permanent
 * (5xx) or not (4xx, a server that is down), and the settings read from the environment.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { simpleParser, type ParsedMail } from 'mailparser';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { ConfigError } from '../../../lib/errors.ts';
import { checkEmailAddress, Mailer, smtpConfigFromEnv, type SmtpConfig } from '../../../control-plane/outbox/mailer.ts';
import { tempDir } from '../../helpers/db.ts';

const USER = 'gantry-relay';
const PASSWORD = 'pa55-w0rd:with spaces';

interface Server {
  port: number;
  messages: ParsedMail[];
  logins: { user: string | undefined; password: string | null | undefined }[];
  secured: boolean[];
}

/**
 * An SMTP server on 127.0.0.1 that takes the message and records it, the logins it saw and
 * whether each session was encrypted. Recipients starting with "reject550" or "reject451" are
 * refused with that code.
 */
async function smtpServer(t: Test, options: SMTPServerOptions): Promise<Server> {
  const s: Server = { port: 0, messages: [], logins: [], secured: [] };
  const server = new SMTPServer({
    logger: false,
    ...options,
    onAuth(auth, _session, callback) {
      s.logins.push({ user: auth.username, password: auth.password });
      if (auth.username === USER && auth.password === PASSWORD) callback(null, { user: auth.username });
      else callback(Object.assign(new Error('Invalid username or password'), { responseCode: 535 }));
    },
    onRcptTo(address, _session, callback) {
      const m = /^reject(\d{3})/.exec(address.address);
      if (m) callback(Object.assign(new Error(m[1] === '550' ? '5.1.1 no such mailbox' : '4.2.1 mailbox busy, try later'), { responseCode: Number(m[1]) }));
      else callback();
    },
    onData(stream, session, callback) {
      s.secured.push(session.secure);
      simpleParser(stream).then(
        (mail) => {
          s.messages.push(mail);
          callback();
        },
        (err: Error) => callback(err),
      );
    },
  });
  server.on('error', () => {
    // A client that hangs up mid-session is the client's business.
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  s.port = (server.server.address() as AddressInfo).port;
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return s;
}

/** A self-signed certificate for 127.0.0.1, written to files in `dir`. */
function selfSigned(dir: string, cn: string): { certFile: string; cert: string; key: string } {
  const certFile = path.join(dir, `${cn}.crt`);
  const keyFile = path.join(dir, `${cn}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${cn}`,
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  return { certFile, cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8') };
}

function config(env: Record<string, string>): SmtpConfig {
  const cfg = smtpConfigFromEnv({ GANTRY_SMTP_FROM: 'Gantry <gantry@example.com>', GANTRY_SMTP_TIMEOUT_MS: '5000', ...env });
  if (!cfg) throw new Error('no SMTP config');
  return cfg;
}

function mailer(t: Test, cfg: SmtpConfig): Mailer {
  const m = new Mailer(cfg);
  t.teardown(() => m.close());
  return m;
}

const mail = (to: string) => ({
  to,
  subject: 'Task t1 complete',
  text: 'Task t1 (hello-world) completed in 3 s.\n',
  messageId: '<dlv_0123456789abcdef@gantry>',
  headers: { 'X-Gantry-Task': 't1' },
});

t.test('through a relay without TLS, with a login: the message arrives as sent', async (t) => {
  const server = await smtpServer(t, { secure: false, disabledCommands: ['STARTTLS'], allowInsecureAuth: true, authOptional: false });
  const m = mailer(t, config({ GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(server.port), GANTRY_SMTP_SECURITY: 'none', GANTRY_SMTP_USER: USER, GANTRY_SMTP_PASSWORD: PASSWORD }));
  const r = await m.send(mail('ops@example.com'));
  t.match(r, { ok: true, statusCode: 250 });
  t.notOk(r.error);
  t.same(server.logins, [{ user: USER, password: PASSWORD }], 'the server received the configured login');
  t.equal(server.messages.length, 1);
  const got = server.messages[0]!;
  t.equal(got.subject, 'Task t1 complete');
  t.equal(got.text, 'Task t1 (hello-world) completed in 3 s.\n');
  t.equal(got.messageId, '<dlv_0123456789abcdef@gantry>', 'the Message-ID given, stable across attempts');
  t.same(got.to && !Array.isArray(got.to) ? got.to.value.map((a) => a.address) : [], ['ops@example.com']);
  t.same(got.from?.value, [{ address: 'gantry@example.com', name: 'Gantry' }]);
  t.equal(got.headers.get('x-gantry-task'), 't1');
  t.equal(got.headers.get('auto-submitted'), 'auto-generated', 'marked automatic, so auto-responders stay quiet');
  t.same(server.secured, [false]);

  // The same delivery again: the same Message-ID, for a relay or mail client to drop.
  await m.send(mail('ops@example.com'));
  t.equal(server.messages[1]?.messageId, got.messageId);
});

t.test('recipients refused: 550 is permanent, 451 is not; a wrong password is reported without it', async (t) => {
  const server = await smtpServer(t, { secure: false, disabledCommands: ['STARTTLS'], allowInsecureAuth: true, authOptional: false });
  const env = { GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(server.port), GANTRY_SMTP_SECURITY: 'none', GANTRY_SMTP_USER: USER, GANTRY_SMTP_PASSWORD: PASSWORD };
  const m = mailer(t, config(env));
  const r550 = await m.send(mail('reject550@example.com'));
  t.match(r550, { ok: false, statusCode: 550, permanent: true, error: /refused the message: 550 5\.1\.1 no such mailbox/ });
  const r451 = await m.send(mail('reject451@example.com'));
  t.match(r451, { ok: false, statusCode: 451, error: /451 4\.2\.1 mailbox busy/ });
  t.notOk(r451.permanent, 'a 4xx may pass later');
  t.equal(server.messages.length, 0);

  const { GANTRY_SMTP_USER: _u, GANTRY_SMTP_PASSWORD: _p, ...anonymous } = env;
  const noLogin = await mailer(t, config(anonymous)).send(mail('ops@example.com'));
  t.match(noLogin, { ok: false, statusCode: 530, error: /refused the login/ }, 'a server that wants a login Gantry lacks');
  t.notOk(noLogin.permanent, "the operator's setting is missing, not the message wrong");

  const wrong = mailer(t, config({ ...env, GANTRY_SMTP_PASSWORD: 'not-the-password' }));
  const denied = await wrong.send(mail('ops@example.com'));
  t.match(denied, { ok: false, statusCode: 535, error: /refused the login/ });
  t.notOk(denied.permanent, "the operator's setting is wrong, not the message");
  t.notOk(JSON.stringify(denied).includes('not-the-password'), 'the password is not echoed');
});

t.test('a server that is down: an error, not permanent', async (t) => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const r = await mailer(t, config({ GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(port), GANTRY_SMTP_SECURITY: 'none' })).send(mail('ops@example.com'));
  t.match(r, { ok: false, error: `connection to the SMTP server 127.0.0.1:${port} refused` });
  t.notOk(r.permanent);
  t.notOk(r.statusCode);
});

t.test('a server that never greets: timed out within the timeout', async (t) => {
  const silent = net.createServer((socket) => socket.on('error', () => {}));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    silent.close(() => resolve());
  }));
  const port = (silent.address() as AddressInfo).port;
  const r = await mailer(t, config({ GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(port), GANTRY_SMTP_SECURITY: 'none', GANTRY_SMTP_TIMEOUT_MS: '300' })).send(mail('ops@example.com'));
  t.match(r, { ok: false, error: /^timed out after 300 ms/ });
  t.notOk(r.permanent);
  t.ok(r.latencyMs < 2000, `gave up after ${r.latencyMs} ms`);
});

t.test('STARTTLS: required, verified against GANTRY_SMTP_TLS_CA, never skipped', async (t) => {
  const dir = tempDir(t);
  const { certFile, cert, key } = selfSigned(dir, 'relay');
  const other = selfSigned(dir, 'other');
  const tlsServer = await smtpServer(t, { secure: false, key, cert, authOptional: false });
  const env = { GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(tlsServer.port), GANTRY_SMTP_USER: USER, GANTRY_SMTP_PASSWORD: PASSWORD };

  const cfg = config({ ...env, GANTRY_SMTP_TLS_CA: certFile });
  t.equal(cfg.security, 'starttls', 'the default');
  const r = await mailer(t, cfg).send(mail('ops@example.com'));
  t.match(r, { ok: true, statusCode: 250 });
  t.same(tlsServer.secured, [true], 'the message went over TLS');
  t.same(tlsServer.logins, [{ user: USER, password: PASSWORD }], 'and the login too');

  const untrusted = await mailer(t, config({ ...env, GANTRY_SMTP_TLS_CA: other.certFile })).send(mail('ops@example.com'));
  t.match(untrusted, { ok: false, error: `the certificate of the SMTP server 127.0.0.1:${tlsServer.port} is not trusted (GANTRY_SMTP_TLS_CA): self-signed certificate` });
  t.notOk(untrusted.permanent);
  t.equal(tlsServer.logins.length, 1, 'no login is sent to a server whose certificate is not trusted');
  const mismatched = await mailer(t, config({ ...env, GANTRY_SMTP_SECURITY: 'tls', GANTRY_SMTP_TLS_CA: certFile })).send(mail('ops@example.com'));
  t.match(mismatched, { ok: false, error: /is GANTRY_SMTP_SECURITY right for port \d+\?/ }, 'TLS from the first byte to a STARTTLS port');

  // A server (or a man in the middle) that does not offer STARTTLS: nothing goes in clear.
  const plain = await smtpServer(t, { secure: false, disabledCommands: ['STARTTLS'], allowInsecureAuth: true, authOptional: false });
  const downgraded = await mailer(t, config({ ...env, GANTRY_SMTP_PORT: String(plain.port) })).send(mail('ops@example.com'));
  t.match(downgraded, { ok: false, error: /TLS|STARTTLS/ });
  t.same([plain.logins.length, plain.messages.length], [0, 0], 'neither the login nor the message crossed in clear');
});

t.test('TLS from the first byte (security tls)', async (t) => {
  const dir = tempDir(t);
  const { certFile, cert, key } = selfSigned(dir, 'relay');
  const server = await smtpServer(t, { secure: true, key, cert, authOptional: true });
  const r = await mailer(t, config({ GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: String(server.port), GANTRY_SMTP_SECURITY: 'tls', GANTRY_SMTP_TLS_CA: certFile })).send(mail('ops@example.com'));
  t.match(r, { ok: true, statusCode: 250 });
  t.same(server.secured, [true]);
  t.equal(server.messages[0]?.subject, 'Task t1 complete');
});

t.test('a message the mailer will not send', async (t) => {
  const m = mailer(t, config({ GANTRY_SMTP_HOST: '127.0.0.1', GANTRY_SMTP_PORT: '1', GANTRY_SMTP_SECURITY: 'none' }));
  t.match(await m.send(mail('Ops <ops@example.com>')), { ok: false, permanent: true, error: /^not sent: / }, 'a display name');
  t.match(await m.send({ ...mail('ops@example.com'), messageId: 'no-brackets' }), { ok: false, error: /^not sent: / }, 'a malformed Message-ID');
});

t.test('settings from the environment', async (t) => {
  t.equal(smtpConfigFromEnv({}), undefined, 'no host: no e-mail');
  t.equal(smtpConfigFromEnv({ GANTRY_SMTP_HOST: '' }), undefined);
  t.same(smtpConfigFromEnv({ GANTRY_SMTP_HOST: 'mail.example.com' }), { host: 'mail.example.com', port: 587, security: 'starttls', from: 'gantry@mail.example.com', timeoutMs: 10_000 }, 'the defaults');
  t.match(smtpConfigFromEnv({ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_SECURITY: 'tls' }), { port: 465, security: 'tls' });
  t.match(smtpConfigFromEnv({ GANTRY_SMTP_HOST: 'relay', GANTRY_SMTP_SECURITY: 'none', GANTRY_SMTP_PORT: '25' }), { port: 25, security: 'none', from: 'gantry@relay' }, 'a single-label relay host');
  t.match(smtpConfigFromEnv({ GANTRY_SMTP_HOST: '10.0.0.25', GANTRY_SMTP_FROM: 'ops@example.com' }), { host: '10.0.0.25', from: 'ops@example.com' });

  const withLogin = smtpConfigFromEnv({ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_USER: 'u', GANTRY_SMTP_PASSWORD: 'sekrit' })!;
  t.equal(withLogin.user, 'u');
  t.equal(withLogin.password, 'sekrit', 'the password is there to read');
  t.notOk(JSON.stringify(withLogin).includes('sekrit'), 'but a JSON copy (the logged config) leaves it out');
  t.notOk(JSON.stringify({ ...withLogin }).includes('sekrit'), 'and so does a spread');
  t.ok(Object.isFrozen(withLogin));

  const dir = tempDir(t);
  const notPem = path.join(dir, 'not.pem');
  fs.writeFileSync(notPem, 'hello');
  const brokenPem = path.join(dir, 'broken.pem');
  fs.writeFileSync(brokenPem, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
  const refused: [Record<string, string>, RegExp][] = [
    [{ GANTRY_SMTP_FROM: 'a@example.com' }, /^GANTRY_SMTP_FROM is set but GANTRY_SMTP_HOST is not/],
    [{ GANTRY_SMTP_HOST: 'smtp://mail.example.com' }, /^GANTRY_SMTP_HOST must be a host name/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com:587' }, /^GANTRY_SMTP_HOST must be a host name/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_PORT: 'x' }, /^GANTRY_SMTP_PORT must be an integer/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_PORT: '70000' }, /^GANTRY_SMTP_PORT must be at most 65535/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_SECURITY: 'ssl' }, /^GANTRY_SMTP_SECURITY must be one of starttls, tls, none/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_USER: 'u' }, /^GANTRY_SMTP_USER and GANTRY_SMTP_PASSWORD go together.*GANTRY_SMTP_PASSWORD is missing/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_PASSWORD: 'p' }, /^GANTRY_SMTP_USER and GANTRY_SMTP_PASSWORD go together.*GANTRY_SMTP_USER is missing/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_FROM: 'a@b@example.com' }, /^GANTRY_SMTP_FROM "a@b@example.com": /],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_FROM: 'Gantry <nope>' }, /^GANTRY_SMTP_FROM /],
    [{ GANTRY_SMTP_HOST: '10.0.0.25' }, /^GANTRY_SMTP_FROM must be set: the default, gantry@10\.0\.0\.25, is not an address/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_TIMEOUT_MS: '5' }, /^GANTRY_SMTP_TIMEOUT_MS must be at least 100/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_TLS_CA: path.join(dir, 'missing.pem') }, /^GANTRY_SMTP_TLS_CA: cannot read .*missing\.pem \(ENOENT\)/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_TLS_CA: notPem }, /^GANTRY_SMTP_TLS_CA: .*holds no PEM certificate/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_TLS_CA: brokenPem }, /^GANTRY_SMTP_TLS_CA: .*holds a certificate that does not load/],
    [{ GANTRY_SMTP_HOST: '::1' }, /^GANTRY_SMTP_FROM must be set: the default, gantry@::1, is not an address/],
    [{ GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_SECURITY: 'none', GANTRY_SMTP_TLS_CA: notPem }, /^GANTRY_SMTP_TLS_CA is set but GANTRY_SMTP_SECURITY is none/],
  ];
  for (const [env, message] of refused) {
    t.throws(() => smtpConfigFromEnv(env), ConfigError, JSON.stringify(env));
    t.throws(() => smtpConfigFromEnv(env), { message }, JSON.stringify(env));
  }
  const leaking = { GANTRY_SMTP_HOST: 'mail.example.com', GANTRY_SMTP_PASSWORD: 'sekrit' };
  try {
    smtpConfigFromEnv(leaking);
    t.fail('a password without a user is refused');
  } catch (err) {
    t.notOk((err as Error).message.includes('sekrit'), 'an error never shows the password');
  }
});

t.test('e-mail addresses a tenant gives', async (t) => {
  for (const a of ['ops@example.com', 'first.last+tag@mail.example.co.uk', "o'brien@example.ie", 'x@xn--bcher-kva.example', 'a_b-c@sub-domain.example.org', `${'a'.repeat(64)}@example.com`]) {
    t.equal(checkEmailAddress(a), undefined, a);
  }
  const refused: [string, RegExp][] = [
    ['', /empty/],
    [`a@${'b'.repeat(250)}.com`, /longer than 254 characters/],
    ['ops example.com', /contains a space/],
    ['ops@example.com\u00a0', /contains a space/],
    ['ops@example.com\r\nBcc: all@example.com', /control character/],
    ['ops@exa\u0000mple.com', /control character/],
    ['Ops <ops@example.com>', /without a display name/],
    ['"ops"@example.com', /without a display name, quotes/],
    ['ops@example.com,boss@example.com', /commas/],
    ['ops@example.com;boss@example.com', /commas/],
    ['ops@[127.0.0.1]', /brackets/],
    ['opsexample.com', /exactly one @/],
    ['ops@@example.com', /exactly one @/],
    ['a@b@example.com', /exactly one @/],
    ['@example.com', /1 to 64 characters/],
    [`${'a'.repeat(65)}@example.com`, /1 to 64 characters/],
    ['.ops@example.com', /not a valid mailbox name/],
    ['o..ps@example.com', /not a valid mailbox name/],
    ['ops@localhost', /not a domain name/],
    ['ops@example', /not a domain name/],
    ['ops@10.0.0.1', /not a domain name/],
    ['ops@-example.com', /not a domain name/],
    ['ops@example.com.', /not a domain name/],
    ['jörg@example.de', /only ASCII/],
  ];
  for (const [a, reason] of refused) t.match(checkEmailAddress(a), reason, JSON.stringify(a));
});
