import t from 'tap';
import { afterFiring } from '../../../control-plane/store/schedules.ts';
import { CronError, firstFire, nextFireAfter, parseCron, upcomingFires } from '../../../lib/cron.ts';

const S = new Date('2026-01-01T00:00:00Z');
const at = (sec: number) => new Date(S.getTime() + sec * 1000);
const every = (runEvery: number | null, startAt = S) => ({ startAt, runEvery, cron: null, timezone: null });
const cron = (expr: string, timezone: string | null = null, startAt = S) => ({ startAt, runEvery: null, cron: expr, timezone });
const iso = (ds: Date[]) => ds.map((d) => d.toISOString());

t.test('run_every: the first period boundary strictly after now', async (t) => {
  t.same(nextFireAfter(every(60), at(0)), at(60), 'firing on time moves one period on');
  t.same(nextFireAfter(every(60), at(59)), at(60));
  t.same(nextFireAfter(every(60), at(60)), at(120));
  t.same(nextFireAfter(every(60), at(601)), at(660), 'after downtime: the next future boundary, no burst');
  t.same(nextFireAfter(every(60, at(100)), at(0)), at(160), 'never before start_at + one period');
  t.same(firstFire(every(60, at(100))), at(100), 'an interval schedule first fires at start_at');
  t.equal(nextFireAfter(every(null), at(0)), null, 'a single run has no next');
});

t.test('cron: instants in UTC and in a time zone, strictly after now, from start_at on', async (t) => {
  t.same(nextFireAfter(cron('*/15 * * * *'), at(0)), at(900), 'strictly after a fire instant');
  t.same(nextFireAfter(cron('*/15 * * * *'), at(3601)), at(4500), 'after downtime: the next future instant, no burst');
  t.same(firstFire(cron('0 * * * *')), S, 'an instant exactly at start_at fires');
  t.same(firstFire(cron('0 * * * *', null, at(1))), at(3600), 'otherwise the first instant after it');
  t.same(nextFireAfter(cron('0 * * * *', null, at(7200)), at(0)), at(7200), 'never before start_at');
  t.same(iso(upcomingFires({ ...cron('0 9 * * 1-5', 'Europe/Berlin'), endAt: null, runsLeft: null }, firstFire(cron('0 9 * * 1-5', 'Europe/Berlin')))), [
    '2026-01-01T08:00:00.000Z', '2026-01-02T08:00:00.000Z', '2026-01-05T08:00:00.000Z', '2026-01-06T08:00:00.000Z', '2026-01-07T08:00:00.000Z',
  ], 'weekdays at 09:00 in Berlin (UTC+1 in winter)');
  t.same(iso(upcomingFires({ ...cron('@hourly'), endAt: at(7200), runsLeft: null }, S)), ['2026-01-01T00:00:00.000Z', '2026-01-01T01:00:00.000Z', '2026-01-01T02:00:00.000Z'], 'end_at bounds them');
  t.same(iso(upcomingFires({ ...cron('@hourly'), endAt: null, runsLeft: 2 }, S)), ['2026-01-01T00:00:00.000Z', '2026-01-01T01:00:00.000Z'], 'and the runs left');
});

t.test('cron across daylight-saving transitions: a time in the gap fires once just after it, a time in the repeated hour once', async (t) => {
  // Berlin springs forward on 2026-03-29: 02:00 CET becomes 03:00 CEST, 02:30 does not exist.
  const spring = cron('30 2 * * *', 'Europe/Berlin', new Date('2026-03-27T00:00:00Z'));
  t.same(iso(upcomingFires({ ...spring, endAt: null, runsLeft: null }, firstFire(spring), 4)), [
    '2026-03-27T01:30:00.000Z', '2026-03-28T01:30:00.000Z', '2026-03-29T01:00:00.000Z', '2026-03-30T00:30:00.000Z',
  ]);
  // New York falls back on 2026-11-01: 01:30 happens twice (EDT, then EST); it fires once.
  const fall = cron('30 1 * * *', 'America/New_York', new Date('2026-10-31T12:00:00Z'));
  t.same(iso(upcomingFires({ ...fall, endAt: null, runsLeft: null }, firstFire(fall), 3)), [
    '2026-11-01T05:30:00.000Z', '2026-11-02T06:30:00.000Z', '2026-11-03T06:30:00.000Z',
  ]);
  // Hourly keeps one fire per real hour through the repeated hour.
  const hourly = cron('0 * * * *', 'America/New_York', new Date('2026-11-01T04:30:00Z'));
  t.same(iso(upcomingFires({ ...hourly, endAt: null, runsLeft: null }, firstFire(hourly), 4)), [
    '2026-11-01T05:00:00.000Z', '2026-11-01T06:00:00.000Z', '2026-11-01T07:00:00.000Z', '2026-11-01T08:00:00.000Z',
  ]);
});

t.test('cron: what is refused, and why', async (t) => {
  for (const [expr, tz, field, why] of [
    ['* * * * * *', 'UTC', 'cron', /requires exactly 5 parts/],
    ['* * * *', 'UTC', 'cron', /five/],
    ['61 * * * *', 'UTC', 'cron', /Invalid value for minute: 61/],
    ['0 0 30 2 *', 'UTC', 'cron', /never fires/],
    ['not cron', 'UTC', 'cron', /./],
    ['* * * * *', 'Mars/Base', 'timezone', /unknown time zone "Mars\/Base"/],
  ] as const) {
    t.throws(() => parseCron(expr, tz), { constructor: CronError, field, message: why }, `${expr} in ${tz}`);
  }
});

t.test('afterFiring ends schedules by run_times, end_at, or a single run', async (t) => {
  const base = { ...every(60), endAt: null, runTimes: null, runCount: 0 };
  t.match(afterFiring(base, at(0)), { runCount: 1, status: 'scheduled', nextStart: at(60) });
  t.match(afterFiring({ ...base, runTimes: 3, runCount: 2 }, at(120)), { runCount: 3, status: 'complete', msg: 'Ran max times.' });
  t.match(afterFiring({ ...base, endAt: at(90) }, at(60)), { status: 'complete', msg: 'Reached end_at.' });
  t.match(afterFiring({ ...base, endAt: at(120) }, at(60)), { status: 'scheduled', nextStart: at(120) }, 'end_at inclusive');
  t.match(afterFiring({ ...base, runEvery: null }, at(0)), { status: 'complete', nextStart: null });
  t.match(afterFiring({ ...base, ...cron('0 */6 * * *') }, at(60)), { status: 'scheduled', nextStart: at(6 * 3600) }, 'cron: the next instant');
});
