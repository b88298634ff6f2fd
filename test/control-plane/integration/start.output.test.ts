/**
 * What `gantry start` prints: the banner on stderr (where the API is, which clusters have
 * runners, how to use it), log lines on stdout — one JSON object a line, no key twice in one
 * object, when stdout is not a terminal — or lines for a person with GANTRY_LOG_FORMAT=pretty.
 * A whole life is logged at debug level: start, a cluster made, a task run by a local runner,
 * and a clean stop.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { tempDir } from '../../helpers/db.ts';
import { until } from '../../helpers/runner.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The keys that appear more than once in one object of a JSON text, at any depth. */
export function duplicateKeys(json: string): string[] {
  const dups: string[] = [];
  const stack: Set<string>[] = [];
  let i = 0;
  const str = () => {
    const start = ++i;
    while (json[i] !== '"') i += json[i] === '\\' ? 2 : 1;
    return JSON.parse(json.slice(start - 1, ++i)) as string;
  };
  while (i < json.length) {
    const c = json[i]!;
    if (c === '{') {
      stack.push(new Set());
      i++;
    } else if (c === '}') {
      stack.pop();
      i++;
    } else if (c === '"') {
      const s = str();
      let j = i;
      while (json[j] === ' ') j++;
      if (json[j] === ':' && stack.length > 0) {
        const keys = stack[stack.length - 1]!;
        if (keys.has(s)) dups.push(s);
        keys.add(s);
      }
    } else i++;
  }
  return dups;
}

async function life(t: Test, env: Record<string, string>) {
  const dataDir = tempDir(t);
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), 'start'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '', GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_DATA_DIR: dataDir, GANTRY_LOCAL_RUNNERS: '1',
      GANTRY_LOCAL_EXECUTOR: 'noop', GANTRY_BEAT_INTERVAL_MS: '200', LOG_LEVEL: 'debug', ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? sig ?? -1)));
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  await until('the banner', async () => err.includes('Press Ctrl-C to stop'), 60_000);
  const url = /API base URL: (\S+)\/2\//.exec(err)![1]!;
  const projectId = /project id:\s+([0-9a-f]{24})/.exec(err)![1]!;
  const token = /token:\s+([0-9a-f]+)/.exec(err)![1]!;
  const call = async (method: string, p: string, body?: unknown, form?: FormData) => {
    const r = await fetch(`${url}/2${p}`, {
      method,
      headers: { Authorization: `OAuth ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : form,
    });
    return (await r.json()) as any;
  };
  await call('POST', '/clusters', { name: 'spare' });
  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'hello', image: 'busybox' }));
  await call('POST', `/projects/${projectId}/codes`, undefined, form);
  const id = (await call('POST', `/projects/${projectId}/tasks`, { tasks: [{ code_name: 'hello' }] })).tasks[0].id;
  await until('the task is complete', async () => (await call('GET', `/projects/${projectId}/tasks/${id}`)).status === 'complete', 60_000);
  proc.kill('SIGTERM');
  t.equal(await exited, 0, 'a clean stop');
  // The local runners' own log lines, kept in their instance directories.
  const instances = path.join(dataDir, 'instances');
  const runnerLog = fs.readdirSync(instances, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => fs.readFileSync(path.join(instances, d.name, 'runner.log'), 'utf8')).join('');
  return { out, err, runnerLog };
}

t.test('the banner on stderr, JSON log lines on stdout, no key twice in a line', async (t) => {
  const { out, err, runnerLog } = await life(t, {});
  t.match(err, /Gantry is running \(pglite, data in .*\)\.\n  API base URL: http:\/\/127\.0\.0\.1:\d+\/2\//);
  t.match(err, /^  runners in:   default \((its local runners are starting|1 runner connected)\)$/m, 'which clusters have runners');
  t.notMatch(err, /^\{/m, 'no log line on stderr');
  const lines = out.split('\n').filter(Boolean);
  t.ok(lines.length > 20, `${lines.length} log lines`);
  const notJson = lines.filter((l) => {
    try {
      return typeof JSON.parse(l) !== 'object';
    } catch {
      return true;
    }
  });
  t.same(notJson, [], 'every stdout line is a JSON object');
  const twice = lines.map((l) => ({ l, d: duplicateKeys(l) })).filter((x) => x.d.length > 0);
  t.same(twice.map((x) => `${x.d.join(',')}: ${x.l.slice(0, 160)}`), [], 'no key twice in one object');
  t.match(out, /"msg":"cluster created"/, 'the life was logged');
  const runnerLines = runnerLog.split('\n').filter((l) => l.startsWith('{'));
  t.ok(runnerLines.some((l) => l.includes('"msg":"runner started"')), 'and the local runner logged its own');
  t.same(runnerLines.filter((l) => duplicateKeys(l).length > 0), [], "no key twice in the runner's lines either");
  t.notMatch(out, /Press Ctrl-C/, 'the banner is not in the log stream');
  t.same(duplicateKeys('{"a":1,"b":{"a":2,"c":3},"a":4}'), ['a'], 'the check finds a key twice (and not across depths)');
});

t.test('GANTRY_LOG_FORMAT=pretty: lines for a person', async (t) => {
  const { out } = await life(t, { GANTRY_LOG_FORMAT: 'pretty' });
  const lines = out.split('\n').filter(Boolean);
  t.ok(lines.some((l) => /INFO.*: cluster created/.test(l)), 'levels and messages in words');
  t.notOk(lines.some((l) => l.startsWith('{')), 'no JSON line');
});
