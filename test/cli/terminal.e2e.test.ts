// On a terminal (a pseudo-terminal from util-linux `script`), the command line asks and
// shows progress: gantry login prompts for each setting and writes what was typed; an
// upload draws its bytes with a progress bar; queue --wait shows the task's status changes.
// (Off a terminal the same commands print only their results: see worker.e2e.test.ts.)
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startTestApi } from '../helpers/api.ts';
import { cliPlace, runCli, startCli } from '../helpers/cli.ts';
import { tempDir } from '../helpers/db.ts';
import { startTestRunner, TEST_IMAGE } from '../helpers/runner.ts';

const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100' };

t.test('login prompts, an upload\'s progress bar, and queue --wait\'s status changes (PGlite, Docker)', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  await startTestRunner(t, api);
  const place = cliPlace(t);
  const u = new URL(api.url);

  // Each setting is asked for in turn; a bad token is refused before anything is written.
  const answer = async (cli: ReturnType<typeof startCli>, prompt: RegExp, text: string) => {
    await cli.waitForOutput(prompt);
    cli.input(`${text}\r`);
  };
  const refused = startCli(t, place, ['login'], {}, { terminal: true });
  await answer(refused, /host \[127\.0\.0\.1\]: $/, u.hostname);
  await answer(refused, /port \[8080\]: $/, u.port);
  await answer(refused, /protocol \[http\]: $/, '');
  await answer(refused, /project_id: $/, api.user.projectId);
  await answer(refused, /token: $/, 'not-a-token');
  const r1 = await refused.done;
  t.equal(r1.code, 3, 'refused');
  t.match(r1.out, /the token was refused/);
  t.notOk(fs.existsSync(path.join(place.cwd, 'iron.json')));

  const login = startCli(t, place, ['login'], {}, { terminal: true });
  await answer(login, /host \[127\.0\.0\.1\]: $/, u.hostname);
  await answer(login, /port \[8080\]: $/, u.port);
  await answer(login, /protocol \[http\]: $/, 'http');
  await answer(login, /project_id: $/, api.user.projectId);
  await answer(login, /token: $/, api.user.token);
  const r2 = await login.done;
  t.equal(r2.code, 0, r2.out);
  t.notMatch(r2.out, api.user.token, 'the token typed is not echoed');
  t.match(JSON.parse(fs.readFileSync(path.join(place.cwd, 'iron.json'), 'utf8')), { port: Number(u.port), project_id: api.user.projectId, token: api.user.token });

  // Asked again, the written values are the defaults (the token shown by its end only).
  const again = startCli(t, place, ['login'], {}, { terminal: true });
  for (const p of [/host \[127\.0\.0\.1\]: $/, new RegExp(`port \\[${u.port}\\]: $`), /protocol \[http\]: $/, new RegExp(`project_id \\[${api.user.projectId}\\]: $`), new RegExp(`token \\[keep …${api.user.token.slice(-4)}\\]: $`)]) await answer(again, p, '');
  const r3 = await again.done;
  t.equal(r3.code, 0, r3.out);
  t.notMatch(r3.out, api.user.token, 'the token itself is never shown');

  // An upload of 3 MB of incompressible bytes draws a bar to 100%.
  const dir = tempDir(t, 'gantry-cli-big-');
  fs.writeFileSync(path.join(dir, 'blob.bin'), crypto.randomBytes(3 * 1024 * 1024));
  fs.writeFileSync(path.join(dir, 'run.sh'), '#!/bin/sh\necho big: $(wc -c < blob.bin)\n', { mode: 0o755 });
  const up = await startCli(t, place, ['upload', dir, '--name', 'big', '--image', TEST_IMAGE, '--command', './run.sh'], {}, { terminal: true }).done;
  t.equal(up.code, 0, up.out);
  t.match(up.out, /zipped .*: 2 entries, \d+ bytes/, 'says what it zipped');
  t.match(up.out, /uploading .* 100% \| (\d+)\/\1 bytes/, 'the bar reaches every byte');
  t.match(up.out, /uploaded big: revision 1/);

  // queue --wait: the status changes, then the task's output, then how it ended.
  const waited = await startCli(t, place, ['queue', 'big', '--wait'], {}, { terminal: true }).done;
  t.equal(waited.code, 0, waited.out);
  t.match(waited.out, /queued task ([0-9a-f]{24}) \(big\)[\s\S]*task \1: (queued|running) \([\d.]+ s\)[\s\S]*big: 3145728[\s\S]*task \1: complete \([\d.]+ s\)/);

  // Off the terminal, the same wait prints only the log.
  const quiet = await runCli(t, place, ['queue', 'big', '--wait']);
  t.same({ code: quiet.code, out: quiet.out, err: quiet.err }, { code: 0, out: 'big: 3145728\n', err: '' });
});
