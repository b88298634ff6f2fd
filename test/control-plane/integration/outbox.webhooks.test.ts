// Outcome webhooks end to end, against real receivers on loopback (allow-listed): which
// outcomes reach which lists, the signature a Standard Webhooks library verifies, retries
// through a receiver that fails, hangs or is down, giving up and redelivery, the history
// the API shows, and the egress checks when loopback is not allowed.
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { Webhook } from 'standardwebhooks';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, uploadCode, type ApiUser, type TestApi } from '../../helpers/api.ts';
import { startTestRunner, until } from '../../helpers/runner.ts';
import { startReceiver, type Received } from '../../helpers/receiver.ts';

const FAST = {
  GANTRY_BEAT_INTERVAL_MS: '200',
  GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
  GANTRY_SWEEP_INTERVAL_MS: '100',
  GANTRY_WEBHOOK_ALLOW: '127.0.0.0/8',
  GANTRY_WEBHOOK_RETRY_BASE_MS: '100',
  GANTRY_WEBHOOK_RETRY_MAX_MS: '300',
  GANTRY_WEBHOOK_TIMEOUT_MS: '1000',
  GANTRY_WEBHOOK_POLL_MS: '100',
  // The signing secrets are sealed at rest; an injected store gets its keys from here.
  GANTRY_SECRET_KEYS: `k1:${randomBytes(32).toString('base64')}`,
};

async function secretFor(u: ApiUser): Promise<string> {
  const r = await u.project('POST', '/webhook_secret', { json: {} });
  if (r.status !== 200) throw new Error(`webhook_secret: ${r.status} ${r.text}`);
  return r.body.secret;
}

async function queue(u: ApiUser, task: Record<string, unknown>): Promise<string> {
  const r = await u.project('POST', '/tasks', { json: { tasks: [task] } });
  if (r.status !== 200) throw new Error(`queue: ${r.status} ${r.text}`);
  return r.body.tasks[0].id;
}

async function final(u: ApiUser, id: string) {
  return until(`task ${id} final`, async () => {
    const r = await u.project('GET', `/tasks/${id}`);
    return ['complete', 'error', 'timeout', 'cancelled', 'killed'].includes(r.body.status) ? r.body : undefined;
  });
}

async function deliveries(u: ApiUser, id: string) {
  const r = await u.project('GET', `/tasks/${id}/deliveries`);
  if (r.status !== 200) throw new Error(`deliveries: ${r.status} ${r.text}`);
  return r.body.deliveries as any[];
}

const forTask = (id: string) => (r: Received) => JSON.parse(r.body).data.id === id;

for (const engine of ENGINES) {
  t.test(`each outcome reaches its lists, signed; retries until a receiver answers (${engine})`, async (t) => {
    const api = await startTestApi(t, engine, { scheduler: true, env: FAST });
    await startTestRunner(t, api, { env: { GANTRY_RUNNER_EXECUTOR: 'noop' } });
    const rx = await startReceiver(t);
    const u = api.user;

    // Webhooks need the project's signing secret first, and the 400 says how to make one.
    const early = await uploadCode(u, { name: 'hooked', webhooks: { succeeds: [`${rx.url}/ok`] } });
    t.equal(early.status, 400);
    t.match(early.body.msg, /^webhooks: the project has no signing secret yet.*POST \/2\/projects\/[0-9a-f]{24}\/webhook_secret/);
    t.same((await u.project('GET', '/webhook_secret')).body, { set: false });
    const secret = await secretFor(u);
    t.match(secret, /^whsec_/);
    const info = (await u.project('GET', '/webhook_secret')).body;
    t.equal(info.set, true);
    t.notOk(JSON.stringify(info).includes(secret.slice(6)), 'the secret is never shown again');

    const up = await uploadCode(u, {
      name: 'hooked',
      webhooks: { succeeds: [`${rx.url}/ok`], fails: [`${rx.url}/fail`], finishes: [`${rx.url}/fin`, `${rx.url}/fin`] },
    });
    t.equal(up.status, 200);
    t.same(up.body.webhooks, { succeeds: [`${rx.url}/ok`], fails: [`${rx.url}/fail`], finishes: [`${rx.url}/fin`] }, 'the package shows its lists, duplicates dropped');
    t.notOk('notify' in up.body, 'a kind never given is not shown');

    // complete → succeeds and finishes
    const ok = await queue(u, { code_name: 'hooked', payload: 'fine' });
    t.equal((await final(u, ok)).status, 'complete');
    let got = await rx.waitFor('both deliveries of the complete task', (all) => all.filter(forTask(ok)).length === 2);
    const okPaths = got.filter(forTask(ok)).map((r) => r.path).sort();
    t.same(okPaths, ['/fin', '/ok'], 'a complete task reaches succeeds and finishes');
    const one = got.find((r) => forTask(ok)(r) && r.path === '/ok')!;
    const wh = new Webhook(secret);
    const verified = wh.verify(one.body, one.headers as Record<string, string>) as any;
    t.equal(verified.data.id, ok, 'the Standard Webhooks library verifies the signature');
    t.equal(verified.type, 'task.complete');
    t.same(verified.outcome, { status: 'complete', events: ['succeeds'] });
    t.equal(verified.data.payload, 'fine', 'the body is the task as the API shows it');
    t.equal(one.headers['idempotency-key'], one.headers['webhook-id']);
    t.equal(one.headers['gantry-event'], 'task.complete');
    t.throws(() => wh.verify(one.body.replace('fine', 'f1ne'), one.headers as Record<string, string>), 'a changed body fails verification');
    const shown = (await u.project('GET', `/tasks/${ok}`)).body;
    t.same(shown.webhooks, up.body.webhooks, 'the task shows the hooks it inherited');
    const okDeliveries = await deliveries(u, ok);
    t.equal(okDeliveries.length, 2);
    t.ok(okDeliveries.every((d) => d.state === 'delivered' && d.attempts.length === 1 && d.attempts[0].status_code === 200), 'each delivered at its first attempt');

    // error → fails and finishes
    const bad = await queue(u, { code_name: 'hooked', payload: JSON.stringify({ noop_exit_code: 3 }) });
    t.equal((await final(u, bad)).status, 'error');
    got = await rx.waitFor('both deliveries of the failed task', (all) => all.filter(forTask(bad)).length === 2);
    t.same(got.filter(forTask(bad)).map((r) => r.path).sort(), ['/fail', '/fin'], 'an error reaches fails and finishes');

    // timeout → fails and finishes
    const slow = await queue(u, { code_name: 'hooked', payload: JSON.stringify({ noop_sleep_ms: 10000 }), timeout: 1 });
    t.equal((await final(u, slow)).status, 'timeout');
    got = await rx.waitFor('both deliveries of the timed-out task', (all) => all.filter(forTask(slow)).length === 2);
    t.same(got.filter(forTask(slow)).map((r) => r.path).sort(), ['/fail', '/fin'], 'a timeout reaches fails and finishes');

    // cancelled while queued → finishes only
    const later = await queue(u, { code_name: 'hooked', delay: 3600 });
    t.equal((await u.project('POST', `/tasks/${later}/cancel`)).status, 200);
    t.equal((await final(u, later)).status, 'cancelled');
    got = await rx.waitFor('the delivery of the cancelled task', (all) => all.some(forTask(later)));
    const cancelledOne = got.filter(forTask(later));
    t.same(cancelledOne.map((r) => r.path), ['/fin'], 'a cancelled task reaches finishes only');
    t.same(JSON.parse(cancelledOne[0]!.body).outcome, { status: 'cancelled', events: ['finishes'] });

    // A task's own lists replace its package's; {} sends none.
    const own = await queue(u, { code_name: 'hooked', payload: 'own', webhooks: { finishes: [`${rx.url}/own`] } });
    const none = await queue(u, { code_name: 'hooked', payload: 'none', webhooks: {} });
    await final(u, own);
    await final(u, none);
    got = await rx.waitFor('the task-level receiver', (all) => all.some(forTask(own)));
    t.same(got.filter(forTask(own)).map((r) => r.path), ['/own'], "a task's webhooks replace its package's");
    t.same(await deliveries(u, none), [], 'webhooks {} sends none (the outbox row would exist with the final status)');
    t.notOk('webhooks' in (await u.project('GET', `/tasks/${none}`)).body);

    // Retries: 500 twice, then a hang (the attempt times out), then 200.
    let calls = 0;
    rx.answer((r) => {
      if (r.path !== '/flaky') return { status: 200 };
      calls++;
      return calls <= 2 ? { status: 500, body: 'boom' } : calls === 3 ? { hang: true } : { status: 204 };
    });
    const flaky = await queue(u, { code_name: 'hooked', payload: 'flaky', webhooks: { succeeds: [`${rx.url}/flaky`] } });
    await final(u, flaky);
    got = await rx.waitFor('the fourth attempt', (all) => all.filter((r) => r.path === '/flaky').length === 4);
    const attempts = got.filter((r) => r.path === '/flaky');
    t.equal(new Set(attempts.map((r) => r.headers['webhook-id'])).size, 1, 'every attempt carries the same idempotency key');
    const shownFlaky = await until('the flaky delivery recorded as delivered', async () => {
      const [d] = await deliveries(u, flaky);
      return d?.state === 'delivered' ? d : undefined;
    });
    t.same(
      shownFlaky.attempts.map((a: any) => [a.n, a.status_code ?? null, a.error ? a.error.replace(/\d+/g, 'N') : null]),
      [
        [1, 500, 'answered N'],
        [2, 500, 'answered N'],
        [3, null, 'timed out after N ms'],
        [4, 204, null],
      ],
      'the history shows each attempt: status code or error',
    );
    t.equal(shownFlaky.attempts[0].response, 'boom', "the start of the receiver's answer is kept");
    t.ok(shownFlaky.attempts.every((a: any) => Number.isInteger(a.latency_ms)), 'with its latency');
    t.ok(shownFlaky.attempts[2].latency_ms >= 1000, 'the hung attempt took the timeout');

    // A receiver that is down, then comes back on the same port.
    const down = await startReceiver(t);
    const port = down.port;
    await down.close();
    const late = await queue(u, { code_name: 'hooked', payload: 'late', webhooks: { succeeds: [`http://127.0.0.1:${port}/back`] } });
    await final(u, late);
    await until('a refused attempt', async () => (await deliveries(u, late))[0]?.attempts.some((a: any) => /refused/.test(a.error ?? '')));
    const back = await startReceiver(t, { port });
    await back.waitFor('the delivery once the receiver is back', (all) => all.some(forTask(late)));
    await until('recorded as delivered', async () => (await deliveries(u, late))[0]?.state === 'delivered');

    const metrics = await (await fetch(`${api.url}/metrics`)).text();
    t.match(metrics, /gantry_deliveries_total\{kind="webhook",result="delivered"\} \d+/);
    t.match(metrics, /gantry_deliveries_total\{kind="webhook",result="retried"\} \d+/);
  });
}

t.test('a delivery is given up after its retry window; a redelivery sends it again under the same id', async (t) => {
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: { ...FAST, GANTRY_WEBHOOK_RETRY_FOR_S: '1' } });
  const rx = await startReceiver(t);
  const u = api.user;
  await secretFor(u);
  t.equal((await uploadCode(u, { name: 'w' })).status, 200);
  let healthy = false;
  rx.answer(() => (healthy ? { status: 200 } : { status: 503 }));
  const id = await queue(u, { code_name: 'w', delay: 3600, webhooks: { finishes: [`${rx.url}/x`] } });
  await u.project('POST', `/tasks/${id}/cancel`);
  const failed = await until('given up', async () => {
    const [d] = await deliveries(u, id);
    return d?.state === 'failed' ? d : undefined;
  });
  t.ok(failed.attempts.length >= 2, `retried before giving up (${failed.attempts.length} attempts)`);
  t.match(failed.error, /given up after \d+ attempt/);
  const log = await (await fetch(`${api.url}/metrics`)).text();
  t.match(log, /gantry_deliveries_total\{kind="webhook",result="failed"\} 1/);

  healthy = true;
  const before = rx.received.length;
  const again = await u.project('POST', `/tasks/${id}/deliveries/${failed.id}/redeliver`);
  t.equal(again.status, 200);
  t.equal(again.body.state, 'pending');
  const got = await rx.waitFor('the redelivery', (all) => all.length > before && all.at(-1)!.headers['webhook-id'] === failed.id);
  t.equal(got.at(-1)!.headers['webhook-id'], failed.id, 'under the same id');
  await until('delivered', async () => (await deliveries(u, id))[0]?.state === 'delivered');

  t.equal((await u.project('POST', `/tasks/${id}/deliveries/ffffffffffffffffffffffff/redeliver`)).status, 404);
  const other = await api.newUser();
  t.equal((await other.project('GET', `/tasks/${id}/deliveries`)).status, 404, "another project's task's deliveries are not found");
});

t.test('egress: loopback and private receivers are refused unless allow-listed, by address, by DNS and through redirects', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: { ...FAST, GANTRY_WEBHOOK_ALLOW: '' } });
  const u = api.user;
  await secretFor(u);
  const rx = await startReceiver(t);
  for (const [url, why] of [
    [`${rx.url}/x`, /loopback/],
    ['http://10.1.2.3/x', /private/],
    ['http://169.254.169.254/latest/meta-data', /metadata|link-local/],
    ['http://[::1]:80/x', /loopback/],
    ['ftp://example.com/x', /only http and https/],
    ['http://user:pw@example.com/x', /credentials|user/],
  ] as const) {
    const r = await uploadCode(u, { name: 'x', webhooks: { fails: ['https://example.com/ok', url] } });
    t.equal(r.status, 400, `${url} refused`);
    t.match(r.body.msg, /^webhooks\.fails\[1\]: /, 'naming the field');
    t.match(r.body.msg, why);
  }
  t.equal((await u.project('GET', '/codes')).body.codes.length, 0, 'and nothing was stored');

  // A name that resolves to loopback is accepted (names are judged when sent), then refused at the send.
  t.equal((await uploadCode(u, { name: 'x' })).status, 200);
  const id = await queue(u, { code_name: 'x', delay: 3600, webhooks: { finishes: [`http://localhost:${rx.port}/dns`] } });
  await u.project('POST', `/tasks/${id}/cancel`);
  const d = await until('refused for good', async () => {
    const [x] = await deliveries(u, id);
    return x?.state === 'failed' ? x : undefined;
  });
  t.equal(d.attempts.length, 1, 'not retried: the address will not change its class');
  t.match(d.attempts[0].error, /localhost.*127\.0\.0\.1.*loopback/);
  t.equal(rx.received.length, 0, 'the receiver never saw a request');
});

t.test('a redirect is never followed, to an allowed address or not', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  const u = api.user;
  await secretFor(u);
  const target = await startReceiver(t);
  const rx = await startReceiver(t);
  rx.answer(() => ({ status: 302, headers: { location: `${target.url}/inner` } }));
  t.equal((await uploadCode(u, { name: 'x' })).status, 200);
  const id = await queue(u, { code_name: 'x', delay: 3600, webhooks: { finishes: [`${rx.url}/moved`] } });
  await u.project('POST', `/tasks/${id}/cancel`);
  const d = await until('an attempt', async () => (await deliveries(u, id))[0]?.attempts[0]);
  t.equal(d.status_code, 302);
  t.match(d.error, /redirect/);
  t.equal(target.received.length, 0, 'the redirect target never saw a request');
});

t.test("one project's hanging receiver does not hold up another project's deliveries", async (t) => {
  const api: TestApi = await startTestApi(t, 'postgres', {
    scheduler: true,
    env: { ...FAST, GANTRY_WEBHOOK_TIMEOUT_MS: '20000', GANTRY_WEBHOOK_PROJECT_IN_FLIGHT: '3', GANTRY_WEBHOOK_IN_FLIGHT: '8' },
  });
  const hang = await startReceiver(t);
  hang.answer(() => ({ hang: true }));
  const fine = await startReceiver(t);
  const a = api.user;
  const b = await api.newUser();
  for (const u of [a, b]) {
    await secretFor(u);
    t.equal((await uploadCode(u, { name: 'x' })).status, 200);
  }
  // Project A: 20 outcomes for a receiver that never answers.
  const r = await a.project('POST', '/tasks', {
    json: { tasks: Array.from({ length: 20 }, () => ({ code_name: 'x', delay: 3600, webhooks: { finishes: [`${hang.url}/a`] } })) },
  });
  for (const x of r.body.tasks) await a.project('POST', `/tasks/${x.id}/cancel`);
  await hang.waitFor("A's share of sends in flight", (all) => all.length >= 3);
  // Project B's outcome goes out while A's sends hang.
  const id = await queue(b, { code_name: 'x', delay: 3600, webhooks: { finishes: [`${fine.url}/b`] } });
  await b.project('POST', `/tasks/${id}/cancel`);
  await fine.waitFor("B's delivery", (all) => all.length === 1, 10000);
  t.equal(hang.open(), 3, "A holds exactly its share of sends (GANTRY_WEBHOOK_PROJECT_IN_FLIGHT), not the replica's");
  t.equal(hang.peakOpen(), 3);
});

t.test('a rotated secret signs beside the previous one while the overlap lasts; a secret of your own is checked', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  const u = api.user;
  const rx = await startReceiver(t);
  const bad = await u.project('POST', '/webhook_secret', { json: { secret: 'whsec_short' } });
  t.equal(bad.status, 400);
  t.match(bad.body.msg, /^secret /);
  const weak = await u.project('POST', '/webhook_secret', { json: { secret: `whsec_${Buffer.alloc(66, 1).toString('base64')}` } });
  t.equal(weak.status, 400, 'a key longer than 64 bytes is refused');
  t.match(weak.body.msg, /^secret: /);
  t.same((await u.project('GET', '/webhook_secret')).body, { set: false }, 'and nothing was stored');

  const mine = `whsec_${randomBytes(32).toString('base64')}`;
  const made = await u.project('POST', '/webhook_secret', { json: { secret: mine } });
  t.equal(made.status, 200);
  t.equal(made.body.secret, mine);
  t.notOk('previous_valid_until' in made.body, 'a first secret has no previous one');
  const rotated = await u.project('POST', '/webhook_secret', { json: {} });
  t.equal(rotated.status, 200);
  t.not(rotated.body.secret, mine);
  t.ok(Date.parse(rotated.body.previous_valid_until) > Date.now() + 86_000_000, 'the previous secret signs for a day by default');
  const info = (await u.project('GET', '/webhook_secret')).body;
  t.same(Object.keys(info).sort(), ['previous_valid_until', 'rotated_at', 'set']);

  t.equal((await uploadCode(u, { name: 'x' })).status, 200);
  const id = await queue(u, { code_name: 'x', delay: 3600, webhooks: { finishes: [`${rx.url}/r`] } });
  await u.project('POST', `/tasks/${id}/cancel`);
  const [got] = await rx.waitFor('the delivery', (all) => all.length === 1);
  t.equal(String(got!.headers['webhook-signature']).split(' ').length, 2, 'two signatures');
  for (const s of [rotated.body.secret, mine]) {
    t.equal((new Webhook(s).verify(got!.body, got!.headers as Record<string, string>) as any).data.id, id, 'each secret verifies');
  }
  t.throws(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(got!.body, got!.headers as Record<string, string>), 'another secret does not');
});
