/** lib/lifecycle.ts: releases run last first, all of them, within the deadline. */
import t from 'tap';
import { ReleaseError, Releases, startWith } from '../../../lib/lifecycle.ts';

t.test('releases run last first, every one even when one fails, and report the failures together', async (t) => {
  const r = new Releases();
  const order: string[] = [];
  r.add('store', () => order.push('store'));
  r.add('gateway', () => {
    order.push('gateway');
    throw new Error('port stuck');
  });
  r.add('health', async () => order.push('health'));
  const err = await r.releaseAll().then(() => undefined, (e: unknown) => e);
  t.same(order, ['health', 'gateway', 'store']);
  t.type(err, ReleaseError);
  t.match((err as ReleaseError).message, /gateway \(port stuck\)/);
  t.same((err as ReleaseError).failures.map((f) => f.name), ['gateway']);
  t.resolves(r.releaseAll().catch(() => 'again'), 'a second call does not run them twice');
});

t.test('a release still running at the deadline is left behind; the rest still run', async (t) => {
  const r = new Releases();
  const order: string[] = [];
  r.add('first', () => order.push('first'));
  r.add('hangs', () => new Promise(() => undefined));
  const err = await r.releaseAll(Date.now() + 50).then(() => undefined, (e: unknown) => e);
  t.same(order, ['first']);
  t.match((err as ReleaseError).message, /hangs \(the stop deadline passed\)/);
});

t.test('a start that fails halfway releases what its earlier steps acquired', async (t) => {
  const released: string[] = [];
  await t.rejects(
    startWith(async (r) => {
      r.add('a', () => released.push('a'));
      r.add('b', () => released.push('b'));
      throw new Error('step c failed');
    }),
    /step c failed/,
  );
  t.same(released, ['b', 'a']);
});
