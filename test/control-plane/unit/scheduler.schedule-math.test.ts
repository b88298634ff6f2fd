import t from 'tap';
import { afterFiring, nextPeriodAfter } from '../../../control-plane/store/schedules.ts';

const S = new Date('2026-01-01T00:00:00Z');
const at = (sec: number) => new Date(S.getTime() + sec * 1000);

t.test('nextPeriodAfter is the first period boundary strictly after now', async (t) => {
  t.same(nextPeriodAfter(S, 60, at(0)), at(60), 'firing on time moves one period on');
  t.same(nextPeriodAfter(S, 60, at(59)), at(60));
  t.same(nextPeriodAfter(S, 60, at(60)), at(120));
  t.same(nextPeriodAfter(S, 60, at(601)), at(660), 'after downtime: the next future boundary, no burst');
  t.same(nextPeriodAfter(at(100), 60, at(0)), at(160), 'never before start_at + one period');
});

t.test('afterFiring ends schedules by run_times, end_at, or a single run', async (t) => {
  const base = { startAt: S, runEvery: 60, endAt: null, runTimes: null, runCount: 0 };
  t.match(afterFiring(base, at(0)), { runCount: 1, status: 'scheduled', nextStart: at(60) });
  t.match(afterFiring({ ...base, runTimes: 3, runCount: 2 }, at(120)), { runCount: 3, status: 'complete', msg: 'Ran max times.' });
  t.match(afterFiring({ ...base, endAt: at(90) }, at(60)), { status: 'complete', msg: 'Reached end_at.' });
  t.match(afterFiring({ ...base, endAt: at(120) }, at(60)), { status: 'scheduled', nextStart: at(120) }, 'end_at inclusive');
  t.match(afterFiring({ ...base, runEvery: null }, at(0)), { status: 'complete', nextStart: null });
});
