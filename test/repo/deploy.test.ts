/**
 * The deployment files in deploy/, checked as far as a machine without a registry allows
 * (test/repo/docker-images.test.ts builds the images for real):
 * - the systemd units pass `systemd-analyze verify` in a stub root where their ExecStart
 *   exists (and broken copies do not), keep their hardening under an exposure threshold of
 *   `systemd-analyze security`, and say what the docs promise (KillMode=process, the docker
 *   group, EnvironmentFile=, Restart=on-failure);
 * - the compose file passes `docker-compose config` (Debian's docker-compose, v1) and the
 *   configuration it resolves to wires PostgreSQL, etcd, two replicas and a runner together;
 * - the example env files name only variables the programs read;
 * - the Dockerfiles' stages, users, health checks and COPY sources.
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { parse as parseYaml } from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DEPLOY = path.join(ROOT, 'deploy');
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';
const DOCKER_COMPOSE = '/usr/bin/docker-compose';
const UNITS = ['gantry.service', 'gantry-runner.service'];
const run = promisify(execFile);

function tmpDir(t: Test, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `gantry-${name}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// systemd

/** A root holding the host's base units, stubs of the units ours require, the units and their ExecStart. */
function unitRoot(t: Test, units: Record<string, string>): string {
  if (!fs.existsSync(SYSTEMD_ANALYZE)) throw new Error(`${SYSTEMD_ANALYZE} is required (Debian package systemd; scripts/services.sh tools)`);
  const root = tmpDir(t, 'units');
  fs.cpSync('/usr/lib/systemd/system', path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  const etc = path.join(root, 'etc/systemd/system');
  fs.mkdirSync(etc, { recursive: true });
  for (const stub of ['docker.service', 'postgresql.service', 'etcd.service']) {
    fs.writeFileSync(path.join(etc, stub), `[Unit]\nDescription=${stub} (stub)\n\n[Service]\nExecStart=/usr/local/bin/gantry\n`);
  }
  fs.mkdirSync(path.join(root, 'usr/local/bin'), { recursive: true });
  fs.writeFileSync(path.join(root, 'usr/local/bin/gantry'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  for (const [name, content] of Object.entries(units)) fs.writeFileSync(path.join(etc, name), content);
  return root;
}

/** Verified: exit 0 and nothing said (systemd only warns about unknown keys and bad values). */
function verify(root: string, name: string): { ok: boolean; output: string } {
  const r = spawnSync(SYSTEMD_ANALYZE, ['verify', '--man=no', '--generators=no', `--root=${root}`, name], { encoding: 'utf8' });
  const output = `${r.stdout}${r.stderr}`.trim();
  return { ok: r.status === 0 && output === '', output };
}

/** `systemd-analyze security` exposure at most `threshold` (0 best, 10 worst; its option counts tenths). */
function exposure(root: string, name: string, threshold: number): { ok: boolean; summary: string } {
  const r = spawnSync(SYSTEMD_ANALYZE, ['security', '--offline=yes', `--root=${root}`, `--threshold=${Math.round(threshold * 10)}`, name], { encoding: 'utf8' });
  const summary = /Overall exposure level[^\n]*/.exec(r.stdout)?.[0] ?? `${r.stdout}${r.stderr}`.trim();
  return { ok: r.status === 0, summary };
}

const unitText = (name: string): string => fs.readFileSync(path.join(DEPLOY, 'systemd', name), 'utf8');

/** The [Service] section's settings, each key with every value it is given. */
function serviceSettings(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const line of text.split('\n')) {
    const s = /^\[(.+)\]$/.exec(line.trim());
    if (s) section = s[1]!;
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (section === 'Service' && kv) out.set(kv[1]!, [...(out.get(kv[1]!) ?? []), kv[2]!]);
  }
  return out;
}

const SECURITY_THRESHOLD = 3;

t.test('the systemd units verify, and broken copies do not', async (t) => {
  const good = Object.fromEntries(UNITS.map((u) => [u, unitText(u)]));
  const broken = {
    'missing-binary.service': good['gantry.service']!.replace(/^ExecStart=\/usr\/local\/bin\/gantry/m, 'ExecStart=/usr/local/bin/gantri'),
    'bad-value.service': good['gantry.service']!.replace(/^Restart=on-failure$/m, 'Restart=sometimes'),
    'unknown-key.service': good['gantry-runner.service']!.replace(/^KillMode=process$/m, 'KilMode=process'),
    'unhardened.service': good['gantry.service']!.split('# Hardening')[0]!,
  };
  const root = unitRoot(t, { ...good, ...broken });
  for (const u of UNITS) {
    const v = verify(root, u);
    t.ok(v.ok, `${u} verifies${v.output ? `:\n${v.output}` : ''}`);
    const e = exposure(root, u, SECURITY_THRESHOLD);
    t.ok(e.ok, `${u}: exposure at most ${SECURITY_THRESHOLD} (${e.summary})`);
  }
  for (const b of ['missing-binary.service', 'bad-value.service', 'unknown-key.service']) {
    const v = verify(root, b);
    t.notOk(v.ok, `a copy with a ${b.replace('.service', '').replace('-', ' ')} fails: ${v.output.split('\n')[0]}`);
  }
  const e = exposure(root, 'unhardened.service', SECURITY_THRESHOLD);
  t.notOk(e.ok, `a copy without the hardening options is over the threshold (${e.summary})`);
});

t.test('the units say what the docs promise', async (t) => {
  const cp = serviceSettings(unitText('gantry.service'));
  const runner = serviceSettings(unitText('gantry-runner.service'));
  for (const [name, s, cmd] of [
    ['gantry.service', cp, 'start'],
    ['gantry-runner.service', runner, 'runner'],
  ] as const) {
    t.same(s.get('ExecStart'), [`/usr/local/bin/gantry ${cmd}`], `${name} runs the installed gantry ${cmd}`);
    t.same(s.get('KillMode'), ['process'], `${name}: KillMode=process (detached runners and their work survive a restart)`);
    t.same(s.get('Restart'), ['on-failure'], `${name}: Restart=on-failure`);
    t.equal(s.get('EnvironmentFile')?.length, 1, `${name} reads an EnvironmentFile`);
    t.same(s.get('User'), ['gantry'], `${name} runs as the user gantry`);
    t.same(s.get('NoNewPrivileges'), ['yes'], `${name}: NoNewPrivileges`);
    t.notOk(s.has('MemoryDenyWriteExecute'), `${name} leaves V8's JIT its writable executable memory`);
  }
  t.same(runner.get('SupplementaryGroups'), ['docker'], 'the runner is in the docker group (the socket)');
  t.match(unitText('gantry-runner.service'), /^Requires=docker\.service$/m, 'and requires Docker');
  t.ok(Number(runner.get('TimeoutStopSec')?.[0]) > 3600, 'its stop timeout outlasts the default drain timeout');
});

/** Variables an example env file sets. */
function envNames(file: string): string[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => /^#?([A-Z][A-Z0-9_]*)=/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined);
}
const readBy = (sources: string[]) => {
  const text = sources.map((f) => fs.readFileSync(path.join(ROOT, f), 'utf8')).join('\n');
  return (name: string) => text.includes(`'${name}'`);
};
const readByControlPlane = readBy(['control-plane/config.ts']);
const readByRunner = readBy(['runner/config.ts']);

t.test('the example env files name only variables the programs read', async (t) => {
  const files: [string, (n: string) => boolean][] = [
    ['systemd/gantry.env', readByControlPlane],
    ['systemd/gantry-runner.env', readByRunner],
    ['compose/control-plane.env', readByControlPlane],
    ['compose/runner.env', readByRunner],
  ];
  for (const [f, reads] of files) {
    const names = envNames(path.join(DEPLOY, f));
    t.ok(names.length > 3, `${f} sets ${names.length} variables`);
    t.same(names.filter((n) => !reads(n)), [], `${f}: every variable is one the program reads`);
  }
  t.notOk(readByControlPlane('GANTRY_NO_SUCH_SETTING'), 'and a made-up one would be caught');
});

// ---------------------------------------------------------------------------------------------
// compose

interface ComposeService {
  build?: { context: string; dockerfile: string };
  image: string;
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  volumes?: string[];
  ports?: { published: number; target: number }[];
}

async function composeConfig(dir: string): Promise<{ services: Record<string, ComposeService>; volumes: Record<string, unknown> }> {
  if (!fs.existsSync(DOCKER_COMPOSE)) throw new Error(`${DOCKER_COMPOSE} is required (Debian package docker-compose; scripts/services.sh tools)`);
  const { stdout } = await run(DOCKER_COMPOSE, ['--project-directory', dir, '-f', path.join(dir, 'compose.yml'), 'config'], { cwd: dir });
  return parseYaml(stdout) as { services: Record<string, ComposeService>; volumes: Record<string, unknown> };
}

t.test('the compose file validates and wires PostgreSQL, etcd, two replicas and a runner', async (t) => {
  const c = await composeConfig(path.join(DEPLOY, 'compose'));
  const s = c.services;
  t.same(Object.keys(s).sort(), ['cp-1', 'cp-2', 'etcd', 'postgres', 'runner'], 'the five services');
  for (const [name, svc] of Object.entries(s)) t.ok(svc.healthcheck?.test.length, `${name} has a health check`);
  for (const cp of ['cp-1', 'cp-2']) {
    const svc = s[cp]!;
    t.same(svc.build, { context: ROOT, dockerfile: 'deploy/docker/control-plane.Dockerfile' }, `${cp} is built from the repository's control-plane Dockerfile`);
    t.same(svc.depends_on, { postgres: { condition: 'service_healthy' }, etcd: { condition: 'service_healthy' } }, `${cp} waits for healthy PostgreSQL and etcd`);
    const env = svc.environment!;
    t.equal(env.GANTRY_SERVER_ID, cp, `${cp} has its own server id`);
    t.equal(env.ETCD_ENDPOINTS, 'http://etcd:2379', `${cp} coordinates through the etcd service`);
    const db = new URL(env.DATABASE_URL!);
    const pg = s.postgres!.environment!;
    t.same([db.hostname, db.username, db.password, db.pathname], ['postgres', pg.POSTGRES_USER, pg.POSTGRES_PASSWORD, `/${pg.POSTGRES_DB}`], `${cp} uses the postgres service's user, password and database`);
    t.ok(svc.healthcheck!.test.join(' ').includes('/readyz'), `${cp} is healthy when ready (/readyz)`);
  }
  t.equal(s['cp-1']!.environment!.GANTRY_SECRET_KEYS, s['cp-2']!.environment!.GANTRY_SECRET_KEYS, 'both replicas seal with the same keys');
  t.not(s['cp-1']!.ports![0]!.published, s['cp-2']!.ports![0]!.published, 'on different host ports');
  const r = s.runner!;
  t.same(r.build, { context: ROOT, dockerfile: 'runner/Dockerfile' }, 'the runner is built from runner/Dockerfile');
  t.same(r.depends_on, { 'cp-1': { condition: 'service_healthy' }, 'cp-2': { condition: 'service_healthy' } }, 'and waits for both replicas');
  t.equal(r.environment!.GANTRY_CONTROL_PLANE, 'cp-1:9090,cp-2:9090', 'it dials both replicas’ gRPC ports');
  t.ok(r.volumes!.some((v) => v.startsWith('/var/run/docker.sock:/var/run/docker.sock')), 'it has the Docker socket');
  const work = r.environment!.GANTRY_RUNNER_WORK_DIR!;
  t.ok(r.volumes!.some((v) => v.startsWith(`${work}:${work}`)), 'its work directory is the same path on the host (task files are bind-mounted from it)');
  t.same(Object.keys(c.volumes).sort(), ['etcddata', 'pgdata'], 'PostgreSQL and etcd keep their data in named volumes');
  for (const svc of ['postgres', 'etcd']) t.ok(s[svc]!.volumes!.some((v) => v.split(':')[0]! in c.volumes), `${svc} mounts its volume`);
});

t.test('docker-compose config refuses a broken copy of the compose file', async (t) => {
  const dir = tmpDir(t, 'compose');
  fs.cpSync(path.join(DEPLOY, 'compose'), dir, { recursive: true });
  const file = path.join(dir, 'compose.yml');
  const text = fs.readFileSync(file, 'utf8');
  fs.writeFileSync(file, text.replace('condition: service_healthy', 'condition: service_healthz'));
  await t.rejects(composeConfig(dir), /service_healthz/, 'an unknown depends_on condition');
  fs.writeFileSync(file, text.replace('    restart: unless-stopped\n', '    restart: unless-stopped\n    helthcheck: {}\n'));
  await t.rejects(composeConfig(dir), /helthcheck/, 'an unknown service key');
  fs.writeFileSync(file, text);
  fs.rmSync(path.join(dir, 'runner.env'));
  await t.rejects(composeConfig(dir), /runner\.env/, 'a missing env file');
});

// ---------------------------------------------------------------------------------------------
// Dockerfiles

interface Instruction {
  op: string;
  args: string;
}

/** Instructions by stage (continuation lines joined, comments dropped). */
function stages(file: string): { header: Instruction[]; stages: Instruction[][] } {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8').replace(/\\\n/g, ' ');
  const all = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => ({ op: l.split(/\s+/)[0]!.toUpperCase(), args: l.replace(/^\S+\s*/, '') }));
  const out: Instruction[][] = [];
  const header: Instruction[] = [];
  for (const i of all) {
    if (i.op === 'FROM') out.push([]);
    (out.length ? out[out.length - 1]! : header).push(i);
  }
  return { header, stages: out };
}

const ignored = fs
  .readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .filter((l) => l && !l.startsWith('#'));
const buildInclude = (JSON.parse(fs.readFileSync(path.join(ROOT, 'tsconfig.build.json'), 'utf8').replace(/^\s*\/\/.*$/gm, '')) as { include: string[] }).include;

t.test('the Dockerfiles: a build stage and a runtime stage on a base image chosen by ARG', async (t) => {
  for (const [file, entry] of [
    ['deploy/docker/control-plane.Dockerfile', 'start'],
    ['runner/Dockerfile', 'runner'],
  ] as const) {
    const { header, stages: [build, runtime, ...more] } = stages(file);
    t.same(header, [{ op: 'ARG', args: 'BASE_IMAGE=node:20-bookworm-slim' }], `${file}: the base image is an ARG, node:20-bookworm-slim by default`);
    t.equal(more.length, 0, `${file}: two stages`);
    t.same([build![0], runtime![0]], [{ op: 'FROM', args: '${BASE_IMAGE} AS build' }, { op: 'FROM', args: '${BASE_IMAGE}' }], `${file}: both stages on the base`);
    const runs = (st: Instruction[]) => st.filter((i) => i.op === 'RUN').map((i) => i.args);
    t.ok(runs(build!).some((r) => /^npm ci\b/.test(r) && !r.includes('--omit')) && runs(build!).includes('npm run build'), `${file}: the build stage installs everything and runs npm run build`);
    t.ok(runs(runtime!).some((r) => /^npm ci --omit=dev\b/.test(r)), `${file}: the runtime stage installs production dependencies only`);
    const copies = (st: Instruction[]) => st.filter((i) => i.op === 'COPY').map((i) => i.args.split(/\s+/));
    t.ok(copies(runtime!).some((c) => c[0] === '--from=build' && c[1] === '/src/dist'), `${file}: the runtime stage takes the built JavaScript`);
    const sources = [...copies(build!), ...copies(runtime!)].filter((c) => !c[0]!.startsWith('--')).flatMap((c) => c.slice(0, -1));
    t.same(sources.filter((s) => !fs.existsSync(path.join(ROOT, s))), [], `${file}: every COPY source exists`);
    t.same(sources.filter((s) => ignored.some((i) => s === i || s.startsWith(`${i}/`))), [], `${file}: and none is left out by .dockerignore`);
    t.same(buildInclude.filter((d) => !sources.includes(d)), [], `${file}: the build stage has every folder tsconfig.build.json compiles`);
    const one = (op: string) => runtime!.filter((i) => i.op === op).map((i) => i.args);
    t.equal(one('HEALTHCHECK').length, 1, `${file}: a HEALTHCHECK`);
    t.match(one('HEALTHCHECK')[0], /\/healthz/, `${file}: on /healthz`);
    t.same(one('STOPSIGNAL'), ['SIGTERM'], `${file}: STOPSIGNAL SIGTERM`);
    const ep = JSON.parse(one('ENTRYPOINT')[0]!) as string[];
    t.same(ep.slice(0, 2), ['node', '/opt/gantry/bin/gantry.js'], `${file}: runs bin/gantry.js with plain node`);
    t.equal([...ep.slice(2), ...(one('CMD')[0] ? (JSON.parse(one('CMD')[0]!) as string[]) : [])][0], entry, `${file}: gantry ${entry}`);
  }
  const cpRuntime = stages('deploy/docker/control-plane.Dockerfile').stages[1]!;
  t.same(cpRuntime.filter((i) => i.op === 'USER').map((i) => i.args), ['node'], 'the control plane runs as the unprivileged user node');
  t.notOk(stages('runner/Dockerfile').stages[1]!.some((i) => i.op === 'USER'), 'the runner runs as root (the Docker socket; see its header)');
});
