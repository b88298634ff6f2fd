/**
 * Both images build for real, from a base image made here: no registry serves
 * node:20-bookworm-slim to this machine, so `docker import` makes one of the host's own node
 * and npm, the shared libraries node needs, busybox for /bin/sh, and the host's CA bundle
 * (npm inside the build reaches the npm registry with --network host). It is tagged by a hash
 * of what went in, so reruns reuse it, and Docker's layer cache keeps `npm ci` from running
 * again while the lockfile is unchanged. Then the control-plane image runs (host network,
 * embedded PGlite on free ports): /healthz, the printed token, its own HEALTHCHECK, the user it
 * runs as, no tsx in it, and `docker stop` ending it with exit 0. The runner image starts its
 * agent and refuses to run unconfigured (exit 2, naming the variable).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { until } from '../helpers/runner.ts';
import { RUN_ID } from '../helpers/services.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BUSYBOX = '/bin/busybox';
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
const run = promisify(execFile);

async function docker(...args: string[]): Promise<string> {
  return (await run('docker', args, { maxBuffer: 64 << 20 })).stdout.trim();
}
async function imageId(tag: string): Promise<string | undefined> {
  return docker('image', 'inspect', '-f', '{{.Id}}', tag).catch(() => undefined);
}

/** The shared libraries a binary loads, from ldd. */
async function libraries(bin: string): Promise<string[]> {
  const { stdout } = await run('ldd', [bin]);
  return [...stdout.matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]!);
}

/** gantry-test/node-base:<hash>, made from the host's node, npm, libraries and busybox unless present. */
async function baseImage(): Promise<string> {
  if (!fs.existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is required (Debian package busybox-static; scripts/services.sh docker)`);
  const node = fs.realpathSync(process.execPath);
  const npm = path.resolve(path.dirname(fs.realpathSync((await run('sh', ['-c', 'command -v npm'])).stdout.trim())), '..');
  // node's libraries, and those of the native module the build stage runs (rolldown, Vite's
  // bundler, needs librt and libdl): node:20-bookworm-slim has all of libc6.
  const binding = path.join(ROOT, 'node_modules/@rolldown/binding-linux-x64-gnu');
  const native = fs.existsSync(binding) ? fs.readdirSync(binding).filter((f) => f.endsWith('.node')).map((f) => path.join(binding, f)) : [];
  const libs = [...new Set([...(await libraries(node)), ...(await Promise.all(native.map(libraries))).flat()])].sort();
  const hash = createHash('sha256').update('node-base v1\n');
  for (const f of [node, BUSYBOX, CA_BUNDLE, path.join(npm, 'package.json'), ...libs]) hash.update(`${f}\n`).update(fs.readFileSync(f));
  const tag = `gantry-test/node-base:${hash.digest('hex').slice(0, 16)}`;
  if (await imageId(tag)) return tag;

  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-node-base-'));
  try {
    const put = (to: string, from: string) => {
      fs.mkdirSync(path.dirname(path.join(root, to)), { recursive: true });
      fs.cpSync(from, path.join(root, to), { recursive: true, dereference: true });
    };
    put('usr/local/bin/node', node);
    for (const l of libs) put(l, l);
    put('usr/local/lib/node_modules/npm', npm);
    fs.symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(root, 'usr/local/bin/npm'));
    put('bin/busybox', BUSYBOX);
    for (const applet of (await run(BUSYBOX, ['--list'])).stdout.split('\n').filter(Boolean)) {
      if (!fs.existsSync(path.join(root, 'bin', applet))) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    }
    fs.mkdirSync(path.join(root, 'usr/bin'), { recursive: true });
    fs.symlinkSync('/bin/busybox', path.join(root, 'usr/bin/env'));
    put(CA_BUNDLE, CA_BUNDLE);
    // The users node's images have: root, and node (1000) for the control plane's USER.
    fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n');
    for (const d of ['root', 'home/node', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    fs.chownSync(path.join(root, 'home/node'), 1000, 1000);
    const tar = (await run('sh', ['-c', `tar -C '${root}' -c . | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'ENV NODE_EXTRA_CA_CERTS=${CA_BUNDLE}' --change 'CMD ["node"]' - ${tag}`])).stdout;
    if (!tar.startsWith('sha256:')) throw new Error(`docker import said: ${tar}`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  // Bases made of an earlier node or npm go.
  for (const old of (await docker('images', 'gantry-test/node-base', '--format', '{{.Repository}}:{{.Tag}}')).split('\n').filter(Boolean)) {
    if (old !== tag) await docker('rmi', old).catch(() => undefined);
  }
  return tag;
}

/** Builds `dockerfile` as `tag` on `base`; the image it replaces is removed (the layers they share stay cached). */
async function build(dockerfile: string, tag: string, base: string): Promise<void> {
  const before = await imageId(tag);
  await run('docker', ['build', '--network', 'host', '--build-arg', `BASE_IMAGE=${base}`, '-f', dockerfile, '-t', tag, '.'], { cwd: ROOT, maxBuffer: 256 << 20 }).catch(
    (err: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`docker build -f ${dockerfile} failed: ${err.message}\n${(err.stdout ?? '').slice(-4000)}\n${err.stderr ?? ''}`);
    },
  );
  const after = await imageId(tag);
  if (before && before !== after) await docker('rmi', before).catch(() => undefined);
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

const CP_IMAGE = 'gantry-test/control-plane:latest';
const RUNNER_IMAGE = 'gantry-test/runner:latest';

t.test('the control-plane and runner images build from a local base and run', async (t) => {
  const base = await baseImage();
  t.pass(`base image ${base}`);
  await build('deploy/docker/control-plane.Dockerfile', CP_IMAGE, base);
  t.ok(await imageId(CP_IMAGE), 'the control-plane image builds (npm ci, npm run build, npm ci --omit=dev)');
  await build('runner/Dockerfile', RUNNER_IMAGE, base);
  t.ok(await imageId(RUNNER_IMAGE), 'the runner image builds');

  for (const image of [CP_IMAGE, RUNNER_IMAGE]) {
    const probe = "import('tsx').then(()=>console.log('tsx present'),()=>console.log('no tsx'))";
    t.equal(await docker('run', '--rm', '--network', 'none', '--entrypoint', 'node', image, '--input-type=module', '-e', probe), 'no tsx', `${image} holds no tsx`);
  }

  const name = `gantry-test-cp-${RUN_ID}`;
  t.teardown(() => docker('rm', '-f', '-v', name).catch(() => undefined));
  const port = await freePort();
  const grpcPort = await freePort();
  await docker(
    'run', '-d', '--name', name, '--network', 'host', '--health-interval', '1s', '--health-start-period', '60s',
    '-e', `GANTRY_PORT=${port}`, '-e', `GANTRY_GRPC_PORT=${grpcPort}`, '-e', 'GANTRY_HOST=127.0.0.1', '-e', 'GANTRY_GRPC_HOST=127.0.0.1', '-e', 'LOG_LEVEL=warn',
    CP_IMAGE,
  );
  const url = `http://127.0.0.1:${port}`;
  const banner = await until('the container to print its banner', async () => {
    const { stderr } = await run('docker', ['logs', name]);
    return /Press Ctrl-C to stop/.test(stderr) && stderr;
  }, 90000, 200);
  t.equal((await fetch(`${url}/healthz`)).status, 200, 'it answers /healthz');
  const projectId = /project id:\s+(\S+)/.exec(banner)![1]!;
  const token = /token:\s+(\S+)/.exec(banner)![1]!;
  t.equal((await fetch(`${url}/2/projects/${projectId}/codes`, { headers: { Authorization: `OAuth ${token}` } })).status, 200, 'the printed token works');
  t.equal(await until('the HEALTHCHECK to pass', async () => (await docker('inspect', '-f', '{{.State.Health.Status}}', name)) === 'healthy' && 'healthy', 60000, 200), 'healthy', 'the image’s HEALTHCHECK passes');
  t.equal(await docker('exec', name, 'id', '-u'), '1000', 'it runs as uid 1000 (node)');
  t.same((await docker('exec', name, 'cat', '/proc/1/cmdline')).split('\0').filter(Boolean), ['node', '/opt/gantry/bin/gantry.js', 'start'], 'with plain node');

  await docker('stop', '-t', '60', name);
  t.equal(await docker('inspect', '-f', '{{.State.ExitCode}}', name), '0', 'docker stop (SIGTERM) ends it with exit 0');

  const unconfigured = await run('docker', ['run', '--rm', '--network', 'none', RUNNER_IMAGE]).then(
    () => ({ code: 0, stderr: '' }),
    (err: { code: number; stderr: string }) => err,
  );
  t.equal(unconfigured.code, 2, 'the runner image starts the agent, which refuses to run unconfigured (exit 2)');
  t.match(unconfigured.stderr, /GANTRY_CONTROL_PLANE/, 'naming the variable');
});
