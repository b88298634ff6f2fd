/**
 * A cluster's `container` settings end to end: set through the Clusters API, sent with the
 * Offer, applied by a real runner's Docker executor, and read from inside the task's
 * container through its log. Also: a change reaches a connected runner's next tasks without
 * a reconnect, the `default` cluster runs with the defaults, and so does the embedded start
 * (a real `gantry start` process whose local runner processes run the tasks).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { startTestApi, uploadCode, type TestApi } from '../../helpers/api.ts';
import { tempDir } from '../../helpers/db.ts';
import { startGantryProcess } from '../../helpers/process.ts';
import { startTestRunner, TEST_IMAGE, testCluster, until } from '../../helpers/runner.ts';

const MiB = 1024 * 1024;
const FAST = { GANTRY_BEAT_INTERVAL_MS: '200', GANTRY_LOG_FLUSH_INTERVAL_MS: '50', GANTRY_SWEEP_INTERVAL_MS: '100' };

/** One `key=value` line per setting, as the task sees it. */
const PROBE = [
  `echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"`,
  `echo "pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"`,
  `echo "nofile=$(ulimit -n)"`,
  `echo "uid=$(id -u)"`,
  `if mknod /tmp/blk b 1 1 2>/dev/null; then echo mknod=ok; else echo mknod=refused; fi`,
  `if touch /rootfs-probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi`,
  `echo probe-done`,
].join('; ');

const FINAL = ['complete', 'error', 'timeout', 'cancelled', 'killed'];

/** The container's interfaces, sorted, comma-terminated. */
const NET_PROBE = `echo "ifs=$(ls /sys/class/net | sort | tr '\\n' ,)"; echo probe-done`;

/** Queues a task, waits for its end and its whole log; the task and what PROBE printed. */
async function runProbe(
  call: (method: string, path: string, json?: unknown) => Promise<{ status: number; body: any; text: string }>,
  code: string,
  cluster?: string,
) {
  const q = await call('POST', '/tasks', { tasks: [{ code_name: code, payload: '{"p":1}', ...(cluster ? { cluster } : {}) }] });
  if (q.status !== 200) throw new Error(q.text);
  const id = q.body.tasks[0].id as string;
  const task = await until(`task ${id} ends`, async () => {
    const r = await call('GET', `/tasks/${id}`);
    return FINAL.includes(r.body.status) ? r.body : undefined;
  }, 60_000);
  const log = await until(`task ${id} log`, async () => {
    const r = await call('GET', `/tasks/${id}/log`);
    return r.status === 200 && r.text.includes('probe-done') ? r.text : undefined;
  }, 20_000);
  const seen = Object.fromEntries(
    log.split('\n').filter((l) => /^[a-z-]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  return { task, log, seen };
}

function projectCall(api: TestApi) {
  return (method: string, p: string, json?: unknown) => api.user.project(method, p, json === undefined ? {} : { json });
}

t.test('a cluster\'s settings reach its tasks; a change reaches a connected runner without a reconnect', async (t) => {
  // Files the runner writes under umask 077 must still reach a non-root task.
  const umask = process.umask(0o077);
  t.teardown(() => void process.umask(umask));
  const api = await startTestApi(t, 'postgres', { scheduler: true, env: FAST });
  const call = projectCall(api);
  const created = await api.request('POST', '/2/clusters', {
    json: { name: 'locked', container: { cap_add: ['chown'], pids_limit: 64, read_only_rootfs: true, user: '1000:1000', nofile: 512 } },
  });
  t.equal(created.status, 200, created.text);
  const runner = await startTestRunner(t, api, { cluster: { id: created.body.id, token: created.body.token } });

  // A zip package: the script, unpacked by the runner under its umask, must be readable by uid 1000.
  const dir = tempDir(t, 'gantry-policy-zip-');
  fs.writeFileSync(path.join(dir, 'probe.sh'), `echo "zip-payload=$(cat $PAYLOAD_FILE)"; ${PROBE}\n`);
  const zip = path.join(dir, 'code.zip');
  execFileSync('python3', ['-c', `import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1],'w')\ni=zipfile.ZipInfo('probe.sh')\ni.external_attr=0o644<<16\nz.writestr(i, open(sys.argv[2]).read())\nz.close()`, zip, path.join(dir, 'probe.sh')]);
  const up = await uploadCode(api.user, { name: 'zipped-probe', image: TEST_IMAGE, command: 'sh ./probe.sh' }, { data: fs.readFileSync(zip), name: 'code.zip' });
  t.equal(up.status, 200, up.text);

  const first = await runProbe(call, 'zipped-probe', 'locked');
  t.equal(first.task.status, 'complete', first.log);
  t.same(first.seen, {
    'zip-payload': '{"p":1}',
    // A process of a non-root user holds no effective capability whatever was added back
    // (Docker sets no ambient capabilities): cap_add matters to tasks that run as root.
    capeff: '0000000000000000',
    pids: '64',
    nofile: '512',
    uid: '1000',
    mknod: 'refused',
    rootfs: 'read-only',
  }, '64 pids, 512 files, uid 1000, read-only root; the zip and the payload readable');
  const asRoot = await api.request('PUT', `/2/clusters/${created.body.id}`, { json: { container: { user: '0:0' } } });
  t.equal(asRoot.status, 200, asRoot.text);
  const root = await until('a task runs as root', async () => {
    const r = await runProbe(call, 'zipped-probe', 'locked');
    return r.seen.uid === '0' ? r : undefined;
  }, 30_000, 0);
  t.match(root.seen, { capeff: '0000000000000001', pids: '64', rootfs: 'read-only' }, 'as root, CHOWN and nothing else');

  const epoch = async () =>
    Number((await api.store.db.query<{ session_epoch: number }>('SELECT session_epoch FROM runners WHERE id = $1', [runner.agent.runnerId])).rows[0]!.session_epoch);
  const epochBefore = await epoch();
  const put = await api.request('PUT', `/2/clusters/${created.body.id}`, {
    json: { container: { cap_add: [], pids_limit: 128, read_only_rootfs: false, user: null } },
  });
  t.equal(put.status, 200, put.text);
  t.same(put.body.cluster.container, { cap_add: [], pids_limit: 128, read_only_rootfs: false, tmp_size: 64 * MiB, user: null, nofile: 512, network: 'bridge' });
  // The session re-reads the policy every beat interval (200 ms here): run until a task shows it.
  const after = await until('a task runs with the new settings', async () => {
    const r = await runProbe(call, 'zipped-probe', 'locked');
    return r.seen.pids === '128' ? r : undefined;
  }, 30_000, 0);
  t.same(after.seen, { 'zip-payload': '{"p":1}', capeff: '0000000000000000', pids: '128', nofile: '512', uid: '0', mknod: 'refused', rootfs: 'writable' });
  t.equal(await epoch(), epochBefore, 'the runner did not reconnect: the connected session picked the change up');
});

t.test('the default cluster runs its tasks with the defaults (PGlite)', async (t) => {
  const api = await startTestApi(t, 'pglite', { scheduler: true, env: FAST });
  await startTestRunner(t, api, { cluster: await testCluster(api) });
  t.equal((await uploadCode(api.user, { name: 'probe', image: TEST_IMAGE, command: PROBE })).status, 200);
  const r = await runProbe(projectCall(api), 'probe');
  t.equal(r.task.status, 'complete', r.log);
  t.same(r.seen, { capeff: '0000000000000000', pids: '1024', nofile: '4096', uid: '0', mknod: 'refused', rootfs: 'writable' });
});

/**
 * `gantry start` on the embedded default with one local runner process (Docker); stopped
 * cleanly at teardown (the local runners are detached: they outlive a crash of the control
 * plane, and a clean stop ends them). `raw` calls /2, `call` the project's part of it.
 */
async function embedded(t: Test, env: Record<string, string>) {
  const g = await startGantryProcess(t, {
    GANTRY_LOCAL_RUNNERS: '1',
    GANTRY_LOCAL_RUNNER_SLOTS: '1',
    GANTRY_LOCAL_EXECUTOR: 'docker',
    GANTRY_BEAT_INTERVAL_MS: '200',
    GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
    ...env,
  });
  t.teardown(async () => {
    g.proc.kill('SIGTERM');
    await g.exited;
  });
  const raw = async (method: string, p: string, json?: unknown, form?: FormData) => {
    const res = await fetch(`${g.url}/2${p}`, {
      method,
      headers: { Authorization: `OAuth ${g.token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
      body: json ? JSON.stringify(json) : form,
    });
    const text = await res.text();
    return { status: res.status, text, body: text && (res.headers.get('content-type') ?? '').includes('json') ? (JSON.parse(text) as any) : text };
  };
  const call = (method: string, p: string, json?: unknown) => raw(method, `/projects/${g.projectId}${p}`, json);
  return { g, raw, call };
}

t.test('the embedded start: local runner processes apply the default cluster\'s settings', async (t) => {
  const { g, raw, call } = await embedded(t, { GANTRY_DATA_DIR: tempDir(t, 'gantry-policy-embedded-') });
  const listed = (await raw('GET', '/clusters')).body.clusters as { id: string; name: string }[];
  const def = listed.find((c) => c.name === 'default');
  t.ok(def, 'the embedded user sees the default cluster');
  const shown = await raw('GET', `/clusters/${def!.id}`);
  t.same(shown.body.cluster.container, { cap_add: [], pids_limit: 1024, read_only_rootfs: false, tmp_size: 64 * MiB, user: null, nofile: 4096, network: 'bridge' });

  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'probe', image: TEST_IMAGE, command: PROBE }));
  t.equal((await raw('POST', `/projects/${g.projectId}/codes`, undefined, form)).status, 200);
  const r = await runProbe(call, 'probe');
  t.equal(r.task.status, 'complete', r.log);
  t.same(r.seen, { capeff: '0000000000000000', pids: '1024', nofile: '4096', uid: '0', mknod: 'refused', rootfs: 'writable' });

  t.equal((await raw('PUT', `/clusters/${def!.id}`, { container: { read_only_rootfs: true, nofile: 1024 } })).status, 200);
  const after = await until('a task runs with the new settings', async () => {
    const x = await runProbe(call, 'probe');
    return x.seen.rootfs === 'read-only' ? x : undefined;
  }, 30_000, 0);
  t.match(after.seen, { capeff: '0000000000000000', nofile: '1024', rootfs: 'read-only' }, 'the owner of the default cluster may tighten it');

  // The network: the host's, once the cluster says so, reaching the local runner's tasks.
  const hostIfs = `${fs.readdirSync('/sys/class/net').sort().join(',')},`;
  const netForm = new FormData();
  netForm.append('data', JSON.stringify({ name: 'net-probe', image: TEST_IMAGE, command: NET_PROBE }));
  t.equal((await raw('POST', `/projects/${g.projectId}/codes`, undefined, netForm)).status, 200);
  t.equal((await runProbe(call, 'net-probe')).seen.ifs, 'lo,', "bridge on this engine (it has no default bridge): loopback only");
  t.equal((await raw('PUT', `/clusters/${def!.id}`, { container: { network: 'host' } })).status, 200);
  const onHost = await until('a task runs on the host network', async () => {
    const x = await runProbe(call, 'net-probe');
    return x.seen.ifs !== 'lo,' ? x : undefined;
  }, 30_000, 0);
  t.equal(onHost.seen.ifs, hostIfs, "the host's own interfaces");
});

t.test("the embedded start passes GANTRY_RUNNER_NETWORK to its local runners: it wins over the cluster's network", async (t) => {
  const { g, raw, call } = await embedded(t, { GANTRY_DATA_DIR: tempDir(t, 'gantry-net-embedded-'), GANTRY_RUNNER_NETWORK: 'none' });
  const def = ((await raw('GET', '/clusters')).body.clusters as { id: string; name: string }[]).find((c) => c.name === 'default')!;
  const put = await raw('PUT', `/clusters/${def.id}`, { container: { network: 'host' } });
  t.equal(put.status, 200, put.text);
  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'net-probe', image: TEST_IMAGE, command: NET_PROBE }));
  t.equal((await raw('POST', `/projects/${g.projectId}/codes`, undefined, form)).status, 200);
  const r = await runProbe(call, 'net-probe');
  t.equal(r.task.status, 'complete', r.log);
  t.equal(r.seen.ifs, 'lo,', 'loopback only, though the cluster says host');
});
