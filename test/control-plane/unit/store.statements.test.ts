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
