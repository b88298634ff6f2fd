/**
 * Keys a user chooses (environment variables, tags, labels) named like Object's own
 * properties are ordinary keys everywhere Gantry copies them.
 */
import t from 'tap';
import { Type } from '@sinclair/typebox';
import { putOwn } from '../../../lib/record.ts';
import { check } from '../../../control-plane/http/schema/validator.ts';
import { Dict, Str } from '../../../control-plane/http/schema/kit.ts';

t.test('putOwn keeps __proto__ as an own key and leaves the prototype alone', async (t) => {
  const o: Record<string, unknown> = {};
  putOwn(o, '__proto__', { polluted: true });
  putOwn(o, 'constructor', 'c');
  t.ok(Object.hasOwn(o, '__proto__'));
  t.equal(Object.getPrototypeOf(o), Object.prototype, 'the prototype is unchanged');
  t.equal((o as { polluted?: boolean }).polluted, undefined, 'no key reads through a new prototype');
  t.same(JSON.parse(JSON.stringify(o)), JSON.parse('{"__proto__":{"polluted":true},"constructor":"c"}'), 'and it serialises as sent');
});

t.test('request validation keeps a map key named __proto__ (it once vanished while being normalized)', async (t) => {
  const schema = Type.Object({ tags: Dict(Str(64)) }, { additionalProperties: false });
  const sent = JSON.parse('{"tags":{"__proto__":"x","a":"1"}}') as unknown;
  const got = check<{ tags: Record<string, string> }>(schema, sent);
  t.same(Object.entries(got.tags), [['__proto__', 'x'], ['a', '1']]);
  t.throws(() => check(schema, JSON.parse('{"tags":{"__proto__":{"a":"1"}}}')), /tags\.__proto__/, 'an object under it is still checked as a value');
});
