// The command line's configuration and its failures, through the real binary against a real
// control plane: gantry login checks a token before it writes iron.json (0600) and refuses a
// bad one; each setting comes from the first of flags, ./iron.json, the environment and
// ~/.iron.json that has it; a usage error, an API refusal and an unreachable server each
// have their exit status and say what to do next.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { startTestApi } from '../helpers/api.ts';
import { apiFlags, cliPlace, runCli } from '../helpers/cli.ts';
import { tempDir } from '../helpers/db.ts';

const BAD_TOKEN = 'f'.repeat(40);

/** A port nothing listens on: one the kernel gave a server that has closed since. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

t.test('login writes ./iron.json or ~/.iron.json after checking the token, and refuses a bad one', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const place = cliPlace(t);
  const u = new URL(api.url);

  const bad = await runCli(t, place, ['login', ...apiFlags(api.url, { ...api.user, token: BAD_TOKEN })]);
  t.equal(bad.code, 3, 'a refused token is an API error');
  t.match(bad.err, /^gantry: the token was refused by http:\/\/127\.0\.0\.1:\d+\/2: .*\(HTTP 401\)\n  check the token .*nothing was written\n$/);
  t.notOk(fs.existsSync(path.join(place.cwd, 'iron.json')), 'nothing written');

  const otherProject = await runCli(t, place, ['login', ...apiFlags(api.url, { ...api.user, projectId: '0'.repeat(24) })]);
  t.equal(otherProject.code, 3);
  t.match(otherProject.err, /no project 0{24} for this token/, 'a project the token cannot see is named');

  const ok = await runCli(t, place, ['login', ...apiFlags(api.url, api.user)]);
  t.equal(ok.code, 0, ok.err);
  const file = path.join(place.cwd, 'iron.json');
  t.match(ok.out, `wrote ${file}`);
  t.same(JSON.parse(fs.readFileSync(file, 'utf8')), { host: u.hostname, port: Number(u.port), protocol: 'http', project_id: api.user.projectId, token: api.user.token });
  t.equal(fs.statSync(file).mode & 0o777, 0o600, 'iron.json is readable by its owner only');
  const codes = await runCli(t, place, ['codes', '--json']);
  t.equal(codes.code, 0, codes.err);
  t.same(JSON.parse(codes.out), { codes: [] }, 'later commands use it');

  const global = await runCli(t, place, ['login', '--global', ...apiFlags(api.url, api.user)]);
  t.equal(global.code, 0, global.err);
  t.equal(fs.statSync(path.join(place.home, '.iron.json')).mode & 0o777, 0o600, '--global writes ~/.iron.json, 0600');

  const noToken = await runCli(t, cliPlace(t), ['login', '--project-id', api.user.projectId]);
  t.equal(noToken.code, 2, 'login without a token and no terminal to ask on is a usage error');
  t.match(noToken.err, /needs a token/);
});

t.test('each setting comes from the first of flags, ./iron.json, IRON_* and ~/.iron.json that has it', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const u = new URL(api.url);
  const dead = await closedPort();
  const write = (file: string, o: object) => fs.writeFileSync(file, JSON.stringify(o));
  const works = async (what: string, place: ReturnType<typeof cliPlace>, args: string[] = []) => {
    const r = await runCli(t, place, ['codes', '--json', ...args]);
    t.equal(r.code, 0, `${what}: ${r.err}`);
    return r;
  };

  // ./iron.json beats the environment, which beats ~/.iron.json: the right token is in the higher source each time.
  let place = cliPlace(t, { IRON_HOST: u.hostname, IRON_PORT: u.port, IRON_PROJECT_ID: api.user.projectId, IRON_TOKEN: BAD_TOKEN });
  write(path.join(place.cwd, 'iron.json'), { token: api.user.token });
  write(path.join(place.home, '.iron.json'), { token: BAD_TOKEN, port: dead });
  await works('./iron.json token over IRON_TOKEN; IRON_PORT over ~/.iron.json port', place);

  place = cliPlace(t, { IRON_TOKEN: api.user.token });
  write(path.join(place.home, '.iron.json'), { token: BAD_TOKEN, host: u.hostname, port: Number(u.port), project_id: api.user.projectId });
  await works('IRON_TOKEN over ~/.iron.json; the rest from ~/.iron.json', place);

  // The product's own object and IRON_WORKER_* come before the top level and IRON_*.
  place = cliPlace(t, { IRON_TOKEN: BAD_TOKEN, IRON_WORKER_TOKEN: api.user.token, IRON_PORT: String(dead) });
  write(path.join(place.home, '.iron.json'), { host: u.hostname, project_id: api.user.projectId });
  write(path.join(place.cwd, 'iron.json'), { port: dead, iron_worker: { port: Number(u.port) } });
  await works('IRON_WORKER_TOKEN over IRON_TOKEN; iron_worker.port over the top-level port', place);

  // Flags beat everything.
  place = cliPlace(t, { IRON_TOKEN: BAD_TOKEN, IRON_PORT: String(dead) });
  write(path.join(place.cwd, 'iron.json'), { token: BAD_TOKEN, host: 'nowhere.invalid', port: dead, project_id: '0'.repeat(24) });
  await works('flags over all', place, apiFlags(api.url, api.user));

  // And the lower source is really read: with the right token only in ~/.iron.json, a wrong one above it fails.
  place = cliPlace(t, { IRON_TOKEN: BAD_TOKEN });
  write(path.join(place.home, '.iron.json'), { token: api.user.token, host: u.hostname, port: Number(u.port), project_id: api.user.projectId });
  const refused = await runCli(t, place, ['codes']);
  t.equal(refused.code, 3, 'IRON_TOKEN (wrong) is used before ~/.iron.json (right)');
  t.match(refused.err, /\(HTTP 401\)\n  check your token: gantry login\n$/, 'a 401 says to check the token');
});

t.test('exit statuses: usage 2, API refusal 3 (its msg, and JSON under --json), unreachable 4', async (t) => {
  const api = await startTestApi(t, 'pglite');
  const place = cliPlace(t);
  const flags = apiFlags(api.url, api.user);

  const usage = await runCli(t, place, ['queue', ...flags]);
  t.equal(usage.code, 2, 'a missing argument');
  t.match(usage.err, /missing required argument 'code'/);
  const badValue = await runCli(t, place, ['queue', 'hello', '--priority', '9', ...flags]);
  t.equal(badValue.code, 2, 'a value out of range');
  t.match(badValue.err, /--priority <n>.*must be from 0 to 2/);
  const unknown = await runCli(t, place, ['tasks', '--bogus', ...flags]);
  t.equal(unknown.code, 2, 'an unknown option');
  const noConfig = await runCli(t, place, ['codes']);
  t.equal(noConfig.code, 2, 'no token anywhere');
  t.match(noConfig.err, /no token configured\n  run gantry login/);

  const missing = await runCli(t, place, ['queue', 'no-such-code', ...flags]);
  t.equal(missing.code, 3, 'the API refused it');
  t.match(missing.err, /^gantry: .*no-such-code.*\(HTTP 404\)\n  check the id or name/, "the API's msg and a hint");
  const missingJson = await runCli(t, place, ['queue', 'no-such-code', '--json', ...flags]);
  t.equal(missingJson.code, 3);
  t.match(JSON.parse(missingJson.out), { msg: /no-such-code/ }, "--json: the API's error reply on stdout, parseable");

  const dead = await closedPort();
  const down = await runCli(t, place, ['codes', '--host', '127.0.0.1', '--port', String(dead), '--token', api.user.token, '--project-id', api.user.projectId]);
  t.equal(down.code, 4, 'nothing listens there');
  t.equal(down.err, `gantry: cannot reach the API at http://127.0.0.1:${dead}/2: ECONNREFUSED\n  is Gantry running there? check host, port and protocol (iron.json, IRON_HOST/IRON_PORT, or gantry login)\n`);
});

t.test('--help lists the client commands and every admin command; help admin is the control plane\'s usage', async (t) => {
  const place = cliPlace(t);
  const help = await runCli(t, place, ['--help']);
  t.equal(help.code, 0, help.err);
  for (const cmd of ['login', 'upload', 'queue', 'schedule', 'log', 'cancel', 'retry', 'codes', 'tasks', 'schedules', 'clusters', 'runners', 'worker']) {
    t.match(help.out, new RegExp(`^  ${cmd}\\b`, 'm'), `lists ${cmd}`);
  }
  const { USAGE } = await import('../../control-plane/admin.ts');
  const admin = [...USAGE.matchAll(/^  ([a-z]+)(?: ([a-z]+))?\b/gm)].map((m) => [m[1]!, m[2]]);
  t.ok(admin.length >= 20, `the admin commands read from their usage (${admin.length})`);
  for (const [noun, verb] of admin) {
    const line = new RegExp(`^  ${noun}${verb && !['--email', '--user'].includes(verb) ? ` [a-z|]*\\b${verb}\\b` : '\\b'}`, 'm');
    t.match(help.out, line, `lists the admin command ${noun}${verb ? ` ${verb}` : ''}`);
  }
  const worker = await runCli(t, place, ['worker', '--help']);
  for (const verb of ['upload', 'queue', 'schedule', 'status', 'log']) t.match(worker.out, new RegExp(`^  ${verb}\\b`, 'm'), `worker ${verb}`);
  const unknown = await runCli(t, place, ['frobnicate']);
  t.same({ code: unknown.code, err: unknown.err.split('\n')[0] }, { code: 2, err: "gantry: unknown command 'frobnicate'" }, 'an unknown command is a usage error');
  const admin1 = await runCli(t, place, ['user', 'list'], { GANTRY_DATA_DIR: tempDir(t) });
  t.same({ code: admin1.code, out: admin1.out }, { code: 0, out: '(no users)\n' }, 'the admin commands still go to the control plane');
  const adminHelp = await runCli(t, place, ['help', 'admin']);
  t.equal(adminHelp.code, 0, adminHelp.err);
  t.equal(adminHelp.out, `${USAGE}\n`, "gantry help admin prints the control plane's usage");
});
