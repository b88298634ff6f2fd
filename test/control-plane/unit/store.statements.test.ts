/**
 * The store's statement files: every one loads, its header names exactly the parameters it
 * uses, and the checker refuses a file whose header and body disagree.
 */
import t from 'tap';
import { parseStatement, statement, statementNames } from '../../../control-plane/store/statements.ts';

t.test('every statement file loads and names its parameters', async (t) => {
  const names = statementNames();
  t.ok(names.length >= 20, `${names.length} statement files`);
  for (const n of names) {
    const s = statement(n);
    t.equal(s.name, n);
    t.notMatch(s.text, /^--/, `${n}: the header is not sent`);
  }
});

t.test('a header and a body that disagree are refused at load', async (t) => {
  t.throws(() => parseStatement('x', 'SELECT 1'), /no header comment/);
  t.throws(() => parseStatement('x', '-- x\n--   $1 a  text\nSELECT $1, $2'), /\$2 is not named in the header/);
  t.throws(() => parseStatement('x', '-- x\n--   $1 a  text\n--   $2 b  text\nSELECT $1'), /\$2 is named but not used/);
  t.equal(parseStatement('x', '-- x\n--   $1 a  text\nSELECT $1 -- and $2 in a comment\n, \'$3 in a string\'').params, 1, 'placeholders in comments and strings do not count');
  t.equal(parseStatement('x', '-- x\n--   $1..$3 the values\nSELECT $1, $2, $3').params, 3, 'a range names each');
});

/**
 * A part written in more than one file (each statement is one whole file, so the queue's
 * candidates, the grant and the quota are repeated), with comments dropped, whitespace
 * collapsed and, with `anyParams`, placeholder numbers read as one.
 */
function part(name: string, from: string, to: string, anyParams = false): string {
  const text = statement(name).text;
  const start = text.indexOf(from);
  const end = text.indexOf(to, start + from.length);
  if (start < 0 || end < 0) throw new Error(`${name}: no part from ${JSON.stringify(from)} to ${JSON.stringify(to)}`);
  const s = text.slice(start, end).replace(/--[^\n]*/g, '').replace(/\s+/g, ' ').trim();
  return anyParams ? s.replace(/\$\d+/g, '$n') : s;
}

t.test('a part that several statements repeat is the same in each', async (t) => {
  const candidates = (n: string) => part(n, 'head AS (', ')\nSELECT', false).replace(/\),? limited AS .*$/s, '').trim();
  t.equal(candidates('claim-candidates'), candidates('claim-unlimited'), 'the queue head and the offer order: claim-candidates and claim-unlimited');
  t.match(candidates('claim-unlimited'), /^head AS .* ordered AS \(.*row_number\(\) OVER \(PARTITION BY code_id, eff/s, 'the part compared is the whole order');
  const grant = (n: string) => part(n, 'upd AS (', ')\nSELECT', true);
  t.equal(grant('claim-grant'), grant('claim-unlimited'), 'the grant (task update, lease insert, log reset): claim-grant and claim-unlimited');
  const quota = (n: string) => part(n, 'quota_limit AS (', 'SELECT * FROM');
  t.equal(quota('queue-many'), quota('queue-one'), 'the quota reservation and the columns: queue-many and queue-one');
  t.not(candidates('claim-candidates').replace('eff DESC, rr', 'rr, eff DESC'), candidates('claim-unlimited'), 'a changed order would be seen');
});
