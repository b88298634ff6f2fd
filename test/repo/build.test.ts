/**
 * The production build and the npm package: a copy of the repository (its tracked files and
 * the untracked ones git does not ignore) is packed with `npm pack` (whose prepack step runs
 * `npm run build`), the tarball is installed with `npm install -g --omit=dev` into a
 * temporary prefix (dependencies from the npm registry), and the installed `gantry` is started
 * on its embedded default (PGlite, one local runner): it answers /healthz, the token it
 * printed lists the project's code packages, its local runner runs a task in Docker, neither
 * process runs through tsx (which the install does not even hold), and SIGTERM stops it with
 * exit 0 and its runner with it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { startGantryProcess } from '../helpers/process.ts';
import { until } from '../helpers/runner.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';
const run = promisify(execFile);

/** The files a fresh clone plus the change under test would have. */
async function copyRepository(to: string): Promise<void> {
  const { stdout } = await run('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: ROOT, maxBuffer: 64 << 20 });
  for (const f of stdout.split('\0').filter(Boolean)) {
    if (f === 'node_modules' || !fs.existsSync(path.join(ROOT, f))) continue;
    fs.mkdirSync(path.dirname(path.join(to, f)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, f), path.join(to, f));
  }
  fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(to, 'node_modules'));
}

/** The process's command line, from /proc. */
function cmdline(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

/** Whether the process still runs (a zombie waiting for its parent to reap it does not). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

t.test('npm pack makes a package that installs without dev dependencies and runs with plain node', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-build-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const src = path.join(tmp, 'src');
  const prefix = path.join(tmp, 'prefix');
  await copyRepository(src);

  const packed = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: src, maxBuffer: 64 << 20 });
  t.match(packed.stdout, /\[build\] dist: compiled, \d+ run-time files copied/, 'the prepack step ran the build');
  const manifest = JSON.parse(packed.stdout.slice(packed.stdout.search(/^\[\s*$/m))) as { filename: string; files: { path: string }[] }[];
  const files = manifest[0]!.files.map((f) => f.path);
  const runtimeFiles = ['control-plane/store/sql', 'control-plane/store/migrations']
    .flatMap((d) => fs.readdirSync(path.join(ROOT, d)).map((f) => `${d}/${f}`))
    .concat('cloud-config/default.yaml');
  t.same(runtimeFiles.filter((f) => !files.includes(`dist/${f}`)), [], 'every SQL file, migration and the cloud-config template is in the package');
  t.ok(files.includes('dist/control-plane/main.js') && files.includes('dist/runner/main.js') && files.includes('bin/gantry.js'), 'the entry points are in it');
  t.same(files.filter((f) => f.endsWith('.ts') || f.startsWith('test/') || f.startsWith('bench/')), [], 'no TypeScript source, test or benchmark is in it');

  await run('npm', ['install', '-g', '--prefix', prefix, '--omit=dev', '--no-audit', '--no-fund', path.join(tmp, manifest[0]!.filename)], {
    cwd: tmp,
    maxBuffer: 64 << 20,
  });
  const installed = path.join(prefix, 'lib', 'node_modules', 'gantry');
  const resolveFromPackage = createRequire(path.join(installed, 'bin', 'gantry.js'));
  t.throws(() => resolveFromPackage.resolve('tsx'), { code: 'MODULE_NOT_FOUND' }, 'tsx cannot be resolved from the installed package');
  t.throws(() => resolveFromPackage.resolve('typescript'), { code: 'MODULE_NOT_FOUND' }, 'nor typescript');

  const dataDir = path.join(tmp, 'data');
  const g = await startGantryProcess(t, { GANTRY_DATA_DIR: dataDir, GANTRY_LOCAL_RUNNERS: '1', HOME: tmp }, 90000, undefined, {
    file: path.join(prefix, 'bin', 'gantry'),
    args: ['start'],
    cwd: tmp,
  });
  const argv = cmdline(g.proc.pid!);
  t.same(argv.filter((a) => /tsx|^--(import|loader|require)|^-r$/.test(a)), [], `gantry runs without a loader: ${argv.join(' ')}`);
  t.equal(argv[1], path.join(prefix, 'bin', 'gantry'), 'through the installed bin');

  const health = await fetch(`${g.url}/healthz`);
  t.equal(health.status, 200, '/healthz answers 200');
  const auth = { Authorization: `OAuth ${g.token}` };
  const codes = await fetch(`${g.url}/2/projects/${g.projectId}/codes`, { headers: auth });
  t.equal(codes.status, 200, 'the printed token lists the printed project’s code packages');
  t.same(((await codes.json()) as { codes: unknown[] }).codes, [], 'none yet');
  t.equal((await fetch(`${g.url}/2/projects/${g.projectId}/codes`)).status, 401, 'and without it the API refuses');

  // The local runner the start launched: the built runner, with plain node.
  const stateFile = path.join(dataDir, 'instances', 'state.json');
  const runnerPid = await until('a running local runner', async () => {
    const s = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { instances: { pid?: number; state: string }[] };
    return s.instances.find((i) => i.state === 'running' && i.pid)?.pid;
  }, 60000);
  t.same(cmdline(runnerPid), [process.execPath, path.join(installed, 'dist', 'runner', 'main.js')], 'the local runner runs dist/runner/main.js with plain node');

  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'built', image: IMAGE, command: 'echo ran-from-the-package' }));
  t.equal((await fetch(`${g.url}/2/projects/${g.projectId}/codes`, { method: 'POST', headers: auth, body: form })).status, 200, 'a code package uploads');
  const queued = await fetch(`${g.url}/2/projects/${g.projectId}/tasks`, {
    method: 'POST',
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: JSON.stringify({ tasks: [{ code_name: 'built', payload: '{}' }] }),
  });
  const taskId = ((await queued.json()) as { tasks: { id: string }[] }).tasks[0]!.id;
  const final = await until('the task to finish', async () => {
    const r = (await (await fetch(`${g.url}/2/projects/${g.projectId}/tasks/${taskId}`, { headers: auth })).json()) as { status: string; msg?: string };
    return ['complete', 'error', 'timeout', 'killed', 'cancelled'].includes(r.status) && r;
  }, 60000, 200);
  t.equal(final.status, 'complete', `the local runner ran the task in Docker (${final.msg ?? ''})`);
  const log = await fetch(`${g.url}/2/projects/${g.projectId}/tasks/${taskId}/log`, { headers: auth });
  t.match(await log.text(), /ran-from-the-package/, 'and its log is stored');

  g.proc.kill('SIGTERM');
  t.equal(await g.exited, 0, 'SIGTERM stops it with exit 0');
  t.ok(await until('the local runner to exit', async () => !alive(runnerPid), 30000), 'its local runner stopped with it');
});
