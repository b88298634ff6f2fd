/**
 * The autoscaler's leader loop backs off a cluster whose provider calls fail, on both
 * engines, in virtual time, against the wire-level fake EC2 (the real SDK signs and sends
 * every request): two clusters with credentials EC2 does not know and one whose calls EC2
 * throttles make a bounded number of EC2 calls and log lines over 130 ticks (10 s → 10 min
 * between attempts, one line per attempt), while a healthy cluster beside them is served at
 * every tick; when the throttling stops, the next attempt succeeds, is logged once, and the
 * cluster is served every tick again; new settings end a back-off at once.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import { createLogger } from '../../../lib/logger.ts';
import { SecretBox } from '../../../lib/secretbox.ts';
import { createAutoscaler, FAILURE_BACKOFF } from '../../../autoscaler/index.ts';
import { loadConfig } from '../../../control-plane/config.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';
import { Ec2Fake } from '../../helpers/ec2-fake.ts';

const REGION = 'eu-west-1';
const GOOD = 'AKIDGANTRYGOOD000001';
const THROTTLED = 'AKIDGANTRYTHROTTLED1';
const TICK_MS = 10_000;

/** When a cluster failing from t = 0 is tried again, with the loop ticking every 10 s: 10 s, 20 s, … then every 10 min. */
function attemptTimes(untilMs: number): number[] {
  const out: number[] = [];
  let next = 0;
  for (let k = 1, at = 0; at < untilMs; at += TICK_MS) {
    if (at < next) continue;
    out.push(at);
    next = at + Math.min(FAILURE_BACKOFF.maxMs, FAILURE_BACKOFF.baseMs * 2 ** (k - 1));
    k++;
  }
  return out;
}

for (const engine of ENGINES) {
  t.test(`failing clusters are backed off, healthy ones served every tick (${engine})`, async (t) => {
    const clock = new ManualClock(Date.UTC(2026, 5, 1, 9));
    const t0 = clock.now().getTime();
    const fake = await Ec2Fake.start({ region: REGION, credentials: { [GOOD]: 'good-secret', [THROTTLED]: 'throttled-secret' }, clock });
    t.teardown(() => fake.close());
    const store = await freshStore(t, engine, clock);
    store.clusters.useSecrets(SecretBox.fromSpec(`k1:${randomBytes(32).toString('base64')}`, 'test'));
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({
      level: 'info',
      name: 'backoff-test',
      destination: new Writable({
        write(chunk, _enc, cb) {
          for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
          cb();
        },
      }),
    });
    const user = await store.accounts.createUser(`backoff-${engine}@example.com`);
    const cluster = async (name: string, accessKeyId: string, secret: string) =>
      (
        await store.clusters.createCluster(user.id, {
          name,
          memoryMb: 512,
          diskBytes: 10 * 2 ** 30,
          aws: { region: REGION, instance_type: 'c5.large', image_id: 'ami-0123456789abcdef0' },
          userData: null,
          disable: false,
          runnersMin: 0,
          runnersMax: 4,
          runnersPerInstance: 1,
          sharedTo: [],
          secrets: { awsAccessKeyId: accessKeyId, awsSecretAccessKey: secret },
        })
      ).cluster.id;
    const good = await cluster('healthy', GOOD, 'good-secret');
    const bad1 = await cluster('bad-1', 'AKIDUNKNOWN000000001', 'nope');
    const bad2 = await cluster('bad-2', 'AKIDUNKNOWN000000002', 'nope');
    const throttled = await cluster('throttled', THROTTLED, 'throttled-secret');
    const stopThrottling = fake.inject({
      action: '*',
      code: 'RequestLimitExceeded',
      message: 'Request limit exceeded.',
      times: Infinity,
      when: (r) => r.accessKeyId === THROTTLED,
    });

    const config = loadConfig({ GANTRY_EC2_ENDPOINT: fake.endpoint, GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent' });
    const autoscaler = createAutoscaler({ secrets: store.clusters, settings: config, local: { endpoint: '127.0.0.1:1' }, instancesChanged: () => {}, log, clock, providerClock: clock });
    t.teardown(() => autoscaler.close());
    const fence = { term: 1, holder: 'test' };
    const job = { tick: (f: typeof fence, signal: AbortSignal) => autoscaler.tick(store.autoscale.fleet(f), signal) };
    const signal = new AbortController().signal;
    const describes = (key: string) => fake.calls('DescribeInstances').filter((r) => r.accessKeyId === key).length;
    const callsOf = (key: string) => fake.requests.filter((r) => r.accessKeyId === key).length;
    const linesOf = (id: string) => lines.filter((l) => l.clusterId === id);
    const savedAt = async (id: string) =>
      (await store.db.query<{ updated_at: Date }>('SELECT updated_at FROM autoscaler_state WHERE cluster_id = $1', [id])).rows[0]?.updated_at.getTime();

    // 130 ticks (21.5 min: the back-off reaches its cap) with three failing clusters.
    const TICKS = 130;
    let servedEveryTick = true;
    for (let i = 0; i < TICKS; i++) {
      await job.tick(fence, signal);
      if ((await savedAt(good)) !== clock.now().getTime()) servedEveryTick = false;
      clock.advance(TICK_MS);
    }
    const attempts = attemptTimes(TICKS * TICK_MS);
    t.same(attempts, [0, 10, 30, 70, 150, 310, 630, 1230].map((s) => s * 1000), 'tried after 10 s, 20 s, 40 s, … 10 min');

    t.ok(servedEveryTick, 'the healthy cluster was served (its state saved) at every tick');
    t.equal(describes(GOOD), TICKS, 'and its instances listed at every tick');
    t.same(linesOf(good), [], 'a healthy cluster with nothing to do logs nothing');

    for (const [id, key] of [[bad1, 'AKIDUNKNOWN000000001'], [bad2, 'AKIDUNKNOWN000000002']] as const) {
      t.equal(callsOf(key), attempts.length, `bad credentials: one EC2 call per attempt (${attempts.length}), not one per tick`);
      const logged = linesOf(id);
      t.equal(logged.length, attempts.length, 'one log line per attempt');
      t.same(
        logged.map((l) => [l.level, l.msg, l.code]),
        logged.map(() => [50, "autoscaler: the cluster's provider calls fail; backing off", 'AuthFailure']),
        'each an error naming the cloud\'s code',
      );
      t.same(logged.map((l) => l.attempts), attempts.map((_, i) => i + 1));
      t.same(
        logged.map((l) => l.retryInMs),
        [10, 20, 40, 80, 160, 320, 600, 600].map((s) => s * 1000),
        'the back-off doubles from 10 s and stops at 10 min',
      );
      t.notOk(JSON.stringify(logged).includes('nope'), 'no secret in the lines');
    }

    t.equal(callsOf(THROTTLED), attempts.length, 'throttled: one EC2 call per attempt');
    const tl = linesOf(throttled);
    t.equal(tl.filter((l) => l.msg === "autoscaler: the cluster's provider calls fail; backing off").length, attempts.length);
    t.equal(tl.filter((l) => l.msg === 'EC2 throttled the call: backing off').length, attempts.length, "and the provider's own line, once per attempt");
    t.equal(tl.length, 2 * attempts.length, 'nothing else');
    t.ok(tl.filter((l) => l.attempts !== undefined).every((l) => l.code === 'RequestLimitExceeded'));

    // The throttling stops: the next attempt (10 min after the last) succeeds and says so
    // once. Ticks in between (a few: virtual time jumps) try nothing.
    stopThrottling();
    const last = attempts[attempts.length - 1]!;
    const recoverAt = t0 + last + FAILURE_BACKOFF.maxMs;
    const before = tl.length;
    const callsAtStop = callsOf(THROTTLED);
    for (const at of [recoverAt - 590_000, recoverAt - 300_000, recoverAt - TICK_MS]) {
      clock.set(at);
      await job.tick(fence, signal);
    }
    t.equal(callsOf(THROTTLED), callsAtStop, 'no call before the back-off ends');
    t.equal(linesOf(throttled).length, before, 'and no line');
    clock.set(recoverAt);
    const callsBefore = describes(THROTTLED);
    for (let i = 0; i < 5; i++) {
      await job.tick(fence, signal);
      t.equal(await savedAt(throttled), clock.now().getTime(), `served again at tick ${i + 1} after recovering`);
      clock.advance(TICK_MS);
    }
    t.equal(describes(THROTTLED) - callsBefore, 5, 'and listed at every tick');
    const after = linesOf(throttled).slice(before);
    t.equal(after.length, 1, 'one line when it recovers');
    t.match(after[0], { level: 30, msg: "autoscaler: the cluster's provider answers again", attempts: attempts.length });

    // New settings (here new credentials that work) end a back-off at once.
    const b1 = callsOf('AKIDUNKNOWN000000001');
    await store.clusters.update(bad1, { secrets: { awsAccessKeyId: GOOD, awsSecretAccessKey: 'good-secret' } });
    await job.tick(fence, signal);
    t.equal(await savedAt(bad1), clock.now().getTime(), 'a cluster whose settings changed is tried at the next tick');
    t.equal(callsOf('AKIDUNKNOWN000000001'), b1, 'with its new credentials');
  });
}
