// Outcome e-mails (`notify`) through a real SMTP server on loopback (smtp-server), and
// their refusal when the installation has no SMTP server.
import { EventEmitter } from 'node:events';
import type { AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { SMTPServer } from 'smtp-server';
import { simpleParser, type ParsedMail } from 'mailparser';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { startTestRunner, until } from '../../helpers/runner.ts';

interface Mailbox {
  port: number;
  mails: ParsedMail[];
  auth: { user: string; pass: string }[];
  waitFor(n: number): Promise<ParsedMail[]>;
}

async function startSmtp(t: Test): Promise<Mailbox> {
  const mails: ParsedMail[] = [];
  const auth: { user: string; pass: string }[] = [];
  const events = new EventEmitter();
  const server = new SMTPServer({
    secure: false,
    disabledCommands: ['STARTTLS'],
    authOptional: false,
    allowInsecureAuth: true,
    onAuth(a, _session, cb) {
      auth.push({ user: a.username ?? '', pass: a.password ?? '' });
      cb(null, { user: a.username });
    },
    onData(stream, _session, cb) {
      simpleParser(stream)
        .then((m) => {
          mails.push(m);
          events.emit('mail');
          cb();
        })
        .catch(cb);
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return {
    port: (server.server.address() as AddressInfo).port,
    mails,
    auth,
    waitFor: (n) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${mails.length} of ${n} mails arrived`)), 30000);
        const check = () => {
          if (mails.length < n) return;
          clearTimeout(timer);
          events.off('mail', check);
          resolve(mails);
        };
        events.on('mail', check);
        check();
      }),
  };
}

t.test('without an SMTP server, notify is refused with what to do', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const r = await uploadCode(api.user, { name: 'm', notify: { fails: ['ops@example.com'] } });
  t.equal(r.status, 400);
  t.match(r.body.msg, /^notify: e-mail notifications need an SMTP server.*GANTRY_SMTP_HOST/);
  const bad = await uploadCode(api.user, { name: 'm', notify: { fails: ['not an address'] } });
  t.equal(bad.status, 400);
  t.match(bad.body.msg, /^notify\.fails\[0\]: /);
});

t.test("a task's outcome is e-mailed to its notify lists, through the operator's SMTP server", async (t) => {
  const smtp = await startSmtp(t);
  const api = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: {
      GANTRY_BEAT_INTERVAL_MS: '200',
      GANTRY_SWEEP_INTERVAL_MS: '100',
      GANTRY_WEBHOOK_POLL_MS: '100',
      GANTRY_SMTP_HOST: '127.0.0.1',
      GANTRY_SMTP_PORT: String(smtp.port),
      GANTRY_SMTP_SECURITY: 'none',
      GANTRY_SMTP_USER: 'gantry',
      GANTRY_SMTP_PASSWORD: 'smtp-password-1',
      GANTRY_SMTP_FROM: 'gantry@ops.example.com',
    },
  });
  await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
  const u = api.user;
  const up = await uploadCode(u, { name: 'mailer', notify: { fails: ['oncall@example.com'], finishes: ['log@example.com'] } });
  t.equal(up.status, 200);
  t.same(up.body.notify, { succeeds: [], fails: ['oncall@example.com'], finishes: ['log@example.com'] });

  const q = await u.project('POST', '/tasks', { json: { tasks: [{ code_name: 'mailer', payload: JSON.stringify({ noop_exit_code: 2, token: 'payload-secret' }) }] } });
  const id = q.body.tasks[0].id;
  const mails = await smtp.waitFor(2);
  t.same(mails.map((m) => (m.to as { text: string }).text).sort(), ['log@example.com', 'oncall@example.com'], 'fails and finishes');
  for (const m of mails) {
    t.match(m.subject, new RegExp(`mailer: task ${id} error`));
    t.equal((m.from as { text: string }).text, 'gantry@ops.example.com');
    t.match(m.messageId, /^<[0-9a-f]{24}@gantry>$/, 'the delivery id is the Message-ID');
    t.match(m.text, /ended: error/);
    t.match(m.text, new RegExp(`${api.url}/2/projects/${u.projectId}/tasks/${id}`), 'a link to the task');
    t.notOk(m.text?.includes('payload-secret'), 'the payload is not mailed');
  }
  t.same(smtp.auth, [{ user: 'gantry', pass: 'smtp-password-1' }, { user: 'gantry', pass: 'smtp-password-1' }], 'with the configured credentials');
  const ds = await until('both recorded', async () => {
    const r = await u.project('GET', `/tasks/${id}/deliveries`);
    return r.body.deliveries.every((d: any) => d.state === 'delivered') && r.body.deliveries.length === 2 ? r.body.deliveries : undefined;
  });
  t.same(ds.map((d: any) => [d.kind, d.address]).sort(), [['email', 'log@example.com'], ['email', 'oncall@example.com']]);
  t.ok(ds.every((d: any) => d.attempts[0].status_code === 250), "the SMTP server's reply code");
  t.notOk(JSON.stringify(ds).includes('smtp-password-1'), 'the SMTP password is in no reply');
});
