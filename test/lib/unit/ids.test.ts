import t from 'tap';
import { isId, newId } from '../../../lib/ids.ts';

t.test('ids are 24 lowercase hex characters, unique and increasing within a process', async (t) => {
  const ids = Array.from({ length: 20000 }, () => newId());
  t.ok(ids.every(isId), 'every id is 24 hex characters');
  t.equal(new Set(ids).size, ids.length, 'no duplicates');
  const sorted = [...ids].sort();
  t.same(sorted, ids, 'lexical order is creation order');
});

t.test('ids start with the creation time in milliseconds', async (t) => {
  const before = Date.now();
  const id = newId();
  const ms = parseInt(id.slice(0, 12), 16);
  t.ok(ms >= before && ms <= Date.now(), 'the first 12 hex digits are the time');
});

t.test('isId refuses other shapes', async (t) => {
  for (const bad of ['', 'x'.repeat(24), '01A20CD412C4A78674411B5E', '01a20cd412c4a78674411b5', 42, null]) {
    t.notOk(isId(bad), `${String(bad)} is not an id`);
  }
});
