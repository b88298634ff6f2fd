import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { type Document, isMap, isScalar, isSeq, type Node, parseDocument } from 'yaml';
import {
  DEFAULT_USER_DATA_TEMPLATE,
  USER_DATA_MAX_BYTES,
  UserDataError,
  type UserDataVars,
  applyCloudinitSubstitutions,
  checkTemplate,
  clusterUserData,
  defaultUserData,
  renderUserData,
} from '../../../cloud-config/render.ts';

/*
 * Offline validation of the default user data (cloud-config/README.md, "Validating offline"):
 * golden files, a YAML 1.1 parse with a coreos-cloudinit key schema, `systemd-analyze verify`
 * of every unit, the host scripts run against stub commands, and adversarial values.
 * UPDATE_GOLDEN=1 rewrites the golden files.
 */

const GOLDEN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'golden');
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';

const VARS: UserDataVars = {
  clusterId: '65a1b2c3d4e5f60718293a4b',
  clusterToken: 'gct_9f2c4e1a7b3d5f60a8e2c4b6d8f0a1c3',
  runnersVersion: '0.1.0',
  controlPlane: 'gantry.example.com:9090',
  controlPlaneTls: true,
  runnerImage: 'registry.example.com/gantry/runner',
  dockerAuth: Buffer.from('robot:s3cret').toString('base64'),
  dockerEmail: 'robot@example.com',
  runnersPerInstance: 0,
  memory: 512,
};

/** What coreos-cloudinit substitutes before parsing; any fixed addresses will do. */
const SUBS = { $public_ipv4: '203.0.113.9', $private_ipv4: '10.1.2.3', $public_ipv6: '2001:db8::9', $private_ipv6: 'fd00::9' };

function parse(text: string): Document {
  const doc = parseDocument(applyCloudinitSubstitutions(text, SUBS), { version: '1.1' });
  if (doc.errors.length) throw new Error(`YAML 1.1 parse failed: ${doc.errors.map((e) => e.message).join('; ')}`);
  return doc;
}

interface WriteFile {
  path: string;
  content: string;
  permissions?: string;
  owner?: string;
}
interface Unit {
  name: string;
  content?: string;
  command?: string;
  mask?: boolean;
  drop_ins?: { name: string; content: string }[];
}
interface CloudConfig {
  write_files: WriteFile[];
  coreos: { units: Unit[] };
}
const js = (doc: Document) => doc.toJS() as CloudConfig;
/** A value for an assertion name: ASCII only (a raw U+2028 would break the TAP stream). */
const show = (v: string) => JSON.stringify(v).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/** Every key path of a document, sequence positions included ("coreos.units[3].name"). */
function keyPaths(node: unknown, at = '', out: string[] = []): string[] {
  if (isMap(node)) {
    for (const p of node.items) {
      const k = `${at}${at ? '.' : ''}${String(isScalar(p.key) ? p.key.value : p.key)}`;
      out.push(k);
      keyPaths(p.value, k, out);
    }
  } else if (isSeq(node)) {
    node.items.forEach((x, i) => keyPaths(x, `${at}[${i}]`, out));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// coreos-cloudinit schema (its `config/*.go` structs and `config/validate` rules): unknown or
// deprecated keys, wrong types, values outside the `valid` patterns (checked on the scalar's
// source text, as go-yaml v1 sees it), /usr paths, duplicate names. `strict` adds our own rule for the default template: modes
// and strategies are quoted, so no YAML 1.1 parser reads them as numbers or booleans.

const TOP = ['ssh_authorized_keys', 'hostname', 'users', 'write_files', 'manage_etc_hosts', 'coreos'];
const COREOS = ['update', 'locksmith', 'units', 'flannel', 'oem'];
const DEPRECATED = ['etcd', 'etcd2', 'fleet'];
const UNIT_KEYS = ['name', 'content', 'command', 'enable', 'runtime', 'mask', 'drop_ins'];
const FILE_KEYS = ['path', 'content', 'owner', 'permissions', 'encoding'];
const UPDATE_KEYS = ['reboot_strategy', 'group', 'server'];
const COMMANDS = ['start', 'stop', 'restart', 'reload', 'try-restart', 'reload-or-restart', 'reload-or-try-restart'];
const ENCODINGS = ['base64', 'b64', 'gz', 'gzip', 'gz+base64', 'gzip+base64', 'gz+b64', 'gzip+b64'];
const UNIT_SUFFIX = /\.(service|socket|device|mount|automount|swap|target|path|timer|slice|scope|network|netdev|link)$/;

function schemaProblems(doc: Document, strict: boolean): string[] {
  const problems: string[] = [];
  const norm = (k: unknown) => String(k).replace(/-/g, '_');
  const entries = (node: unknown, where: string): [string, Node | null][] => {
    if (!isMap(node)) {
      problems.push(`${where} must be a map`);
      return [];
    }
    return node.items.map((p) => [norm(isScalar(p.key) ? p.key.value : p.key), (p.value ?? null) as Node | null]);
  };
  const keys = (node: unknown, allowed: string[], where: string) => {
    const list = entries(node, where);
    for (const [k] of list) {
      if (DEPRECATED.includes(k) && where === 'coreos') problems.push(`coreos.${k} is deprecated (no longer shipped)`);
      else if (!allowed.includes(k)) problems.push(`unknown key ${where ? `${where}.` : ''}${k}`);
    }
    return new Map(list);
  };
  const str = (n: Node | null | undefined, where: string): string | undefined => {
    if (!isScalar(n) || typeof n.value !== 'string') {
      problems.push(`${where} must be a string`);
      return undefined;
    }
    return n.value;
  };
  const quoted = (n: Node | null | undefined) => isScalar(n) && (n.type === 'QUOTE_DOUBLE' || n.type === 'QUOTE_SINGLE');
  const source = (n: Node | null | undefined) => (isScalar(n) ? String(n.source ?? n.value) : '');
  const bool = (n: Node | null | undefined, where: string) => {
    if (!isScalar(n) || typeof n.value !== 'boolean') problems.push(`${where} must be a boolean`);
  };

  const top = keys(doc.contents, TOP, '');
  const files = top.get('write_files');
  if (files !== undefined) {
    if (!isSeq(files)) problems.push('write_files must be a list');
    else {
      const seen = new Set<string>();
      files.items.forEach((f, i) => {
        const w = `write_files[${i}]`;
        const m = keys(f, FILE_KEYS, w);
        const p = str(m.get('path'), `${w}.path`);
        if (p !== undefined) {
          if (!p.startsWith('/')) problems.push(`${w}.path must be absolute`);
          if (p === '/usr' || p.startsWith('/usr/')) problems.push(`${w}.path ${p} is on the read-only /usr`);
          if (seen.has(p)) problems.push(`${w}.path ${p} is written twice`);
          seen.add(p);
        }
        if (m.has('content')) str(m.get('content'), `${w}.content`);
        const perm = m.get('permissions');
        if (perm !== undefined) {
          // go-yaml v1 hands the scalar's text to a string field; upstream's regex applies to it.
          if (!/^0?[0-7]{3,4}$/.test(source(perm as Node))) problems.push(`${w}.permissions ${source(perm as Node)} is not an octal mode`);
          if (strict && !quoted(perm)) problems.push(`${w}.permissions must be quoted`);
        }
        const owner = m.get('owner');
        if (owner !== undefined && !/^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$/.test(str(owner, `${w}.owner`) ?? '')) problems.push(`${w}.owner must be user[:group]`);
        const enc = m.get('encoding');
        if (enc !== undefined && !ENCODINGS.includes(str(enc, `${w}.encoding`) ?? '')) problems.push(`${w}.encoding is not one of ${ENCODINGS.join(', ')}`);
      });
    }
  }
  const coreos = top.get('coreos');
  if (coreos !== undefined) {
    const c = keys(coreos, COREOS, 'coreos');
    const update = c.get('update');
    if (update !== undefined) {
      const u = keys(update, UPDATE_KEYS, 'coreos.update');
      const rs = u.get('reboot_strategy');
      if (rs !== undefined) {
        if (!['reboot', 'etcd-lock', 'off'].includes(source(rs as Node).replace(/^["']|["']$/g, ''))) problems.push('coreos.update.reboot_strategy is not reboot, etcd-lock or off');
        if (strict && !quoted(rs)) problems.push('coreos.update.reboot_strategy must be quoted');
      }
    }
    const units = c.get('units');
    if (units !== undefined) {
      if (!isSeq(units)) problems.push('coreos.units must be a list');
      else {
        const seen = new Set<string>();
        units.items.forEach((u, i) => {
          const w = `coreos.units[${i}]`;
          const m = keys(u, UNIT_KEYS, w);
          const name = str(m.get('name'), `${w}.name`);
          if (name !== undefined) {
            if (!UNIT_SUFFIX.test(name)) problems.push(`${w}.name ${name} has no unit suffix`);
            if (seen.has(name)) problems.push(`${w}.name ${name} appears twice`);
            seen.add(name);
          }
          if (m.has('content')) str(m.get('content'), `${w}.content`);
          const cmd = m.get('command');
          if (cmd !== undefined && !COMMANDS.includes(str(cmd, `${w}.command`) ?? '')) problems.push(`${w}.command is not one of ${COMMANDS.join(', ')}`);
          for (const b of ['enable', 'runtime', 'mask']) if (m.has(b)) bool(m.get(b), `${w}.${b}`);
          const drop = m.get('drop_ins');
          if (drop !== undefined) {
            if (!isSeq(drop)) problems.push(`${w}.drop_ins must be a list`);
            else
              drop.items.forEach((d, j) => {
                const dm = keys(d, ['name', 'content'], `${w}.drop_ins[${j}]`);
                const dn = str(dm.get('name'), `${w}.drop_ins[${j}].name`);
                if (dn !== undefined && !dn.endsWith('.conf')) problems.push(`${w}.drop_ins[${j}].name must end in .conf`);
                str(dm.get('content'), `${w}.drop_ins[${j}].content`);
              });
          }
        });
      }
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify in a stub Flatcar tree (cloud-config/README.md, "Validating offline"):
// the host's base units (so sysinit.target and friends resolve), stub Flatcar units and
// executables, the rendered write_files and units. With --root, a Requires= on a missing unit and a missing
// ExecStart binary fail; unknown keys only warn, so any output at all counts as a failure.

const FLATCAR_UNITS: Record<string, string> = {
  'docker.socket': '[Unit]\nDescription=Docker socket (Flatcar stub)\n\n[Socket]\nListenStream=/run/docker.sock\nSocketMode=0660\n',
  'docker.service': '[Unit]\nDescription=Docker (Flatcar stub)\nAfter=docker.socket containerd.service\nRequires=docker.socket\n\n[Service]\nExecStart=/usr/bin/dockerd --host=fd://\n',
  'containerd.service': '[Unit]\nDescription=containerd (Flatcar stub)\n\n[Service]\nExecStart=/usr/bin/containerd\n',
  'locksmithd.service': '[Unit]\nDescription=locksmithd (Flatcar stub)\n\n[Service]\nExecStart=/usr/lib/locksmith/locksmithd\n',
  'update-engine.service': '[Unit]\nDescription=update-engine (Flatcar stub)\n\n[Service]\nExecStart=/usr/sbin/update_engine -foreground\n',
  'systemd-udev-trigger.service': '[Unit]\nDescription=udev trigger (stub)\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/udevadm trigger\n',
};
/** Binaries a Flatcar host has at these paths. A unit pointing anywhere else fails to verify. */
const FLATCAR_BINARIES = ['/usr/bin/docker', '/usr/bin/dockerd', '/usr/bin/containerd', '/usr/bin/bash', '/usr/bin/curl', '/usr/bin/systemctl', '/usr/bin/udevadm', '/usr/lib/locksmith/locksmithd', '/usr/sbin/update_engine'];

function stubTree(cc: CloudConfig): string {
  if (!fs.existsSync(SYSTEMD_ANALYZE)) throw new Error(`${SYSTEMD_ANALYZE} is required (Debian package systemd)`);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-units-'));
  const base = path.join(root, 'usr/lib/systemd/system');
  fs.cpSync('/usr/lib/systemd/system', base, { recursive: true, verbatimSymlinks: true });
  for (const [name, content] of Object.entries(FLATCAR_UNITS)) {
    fs.rmSync(path.join(base, name), { force: true });
    fs.writeFileSync(path.join(base, name), content);
  }
  for (const b of FLATCAR_BINARIES) {
    fs.mkdirSync(path.dirname(root + b), { recursive: true });
    fs.writeFileSync(root + b, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  }
  for (const f of cc.write_files) {
    fs.mkdirSync(path.dirname(root + f.path), { recursive: true });
    fs.writeFileSync(root + f.path, f.content, { mode: Number.parseInt(f.permissions ?? '0644', 8) });
  }
  const etc = path.join(root, 'etc/systemd/system');
  fs.mkdirSync(etc, { recursive: true });
  for (const u of cc.coreos.units) {
    if (u.mask) fs.symlinkSync('/dev/null', path.join(etc, u.name));
    if (u.content !== undefined) fs.writeFileSync(path.join(etc, u.name), u.content);
    for (const d of u.drop_ins ?? []) {
      fs.mkdirSync(path.join(etc, `${u.name}.d`), { recursive: true });
      fs.writeFileSync(path.join(etc, `${u.name}.d`, d.name), d.content);
    }
  }
  return root;
}

function verifyUnit(root: string, name: string): { status: number | null; output: string } {
  const r = spawnSync(SYSTEMD_ANALYZE, ['verify', '--man=no', '--generators=no', `--root=${root}`, name], { encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

// ---------------------------------------------------------------------------------------------

t.test('golden: the default user data for a fixed cluster, byte for byte', async (t) => {
  const out = defaultUserData(VARS);
  const file = path.join(GOLDEN, 'default.yaml');
  if (process.env.UPDATE_GOLDEN === '1') fs.writeFileSync(file, out);
  t.equal(out, fs.readFileSync(file, 'utf8'), 'matches golden/default.yaml (UPDATE_GOLDEN=1 rewrites it)');
  t.ok(out.startsWith('#cloud-config\n'), 'first line is exactly #cloud-config (no BOM, no blank line)');
  const bytes = Buffer.byteLength(out);
  t.ok(bytes <= USER_DATA_MAX_BYTES, `under EC2's 16 KB limit: ${bytes} bytes`);
  t.equal(clusterUserData(null, VARS), out, 'a cluster without user_data gets the default');
  t.equal(clusterUserData('', VARS), out, 'an empty user_data counts as unset');
});

t.test('golden: an IronWorker-style custom user_data is used as given, variables filled in', async (t) => {
  const template = fs.readFileSync(path.join(GOLDEN, 'iron-style.template.yaml'), 'utf8');
  const out = clusterUserData(template, VARS);
  const file = path.join(GOLDEN, 'iron-style.yaml');
  if (process.env.UPDATE_GOLDEN === '1') fs.writeFileSync(file, out);
  t.equal(out, fs.readFileSync(file, 'utf8'), 'matches golden/iron-style.yaml');
  // Outside the variables, every byte of the template is kept: 0644 stays 0644, off stays off.
  t.match(out, /permissions: 0644\n/, 'an unquoted mode is not rewritten to 420');
  t.match(out, /reboot-strategy: off\n/, 'off is not rewritten to false');
  t.same(schemaProblems(parse(out), false), [], 'valid for coreos-cloudinit');
  const cc = js(parse(out));
  const cfg = cc.write_files.find((f) => f.path === '/home/core/.dockercfg')!;
  t.same(JSON.parse(cfg.content), { 'https://index.docker.io/v1/': { auth: VARS.dockerAuth, email: VARS.dockerEmail } }, 'block-scalar JSON gets the raw values');
});

t.test('the default parses as YAML 1.1 and passes the coreos-cloudinit key schema', async (t) => {
  const doc = parse(defaultUserData(VARS));
  t.same(schemaProblems(doc, true), [], 'no unknown keys, bad types, unquoted modes, /usr paths or duplicates');
  const cc = js(doc);
  const file = (p: string) => cc.write_files.find((f) => f.path === p);
  t.equal(file('/etc/gantry/runner/cluster-id')?.content, VARS.clusterId);
  t.equal(file('/etc/gantry/runner/cluster-token')?.content, VARS.clusterToken);
  t.equal(file('/etc/gantry/runner/control-plane')?.content, VARS.controlPlane);
  t.equal(file('/etc/gantry/runner/control-plane-tls')?.content, 'true');
  t.equal(file('/etc/gantry/runner/runner-image')?.content, VARS.runnerImage);
  t.equal(file('/etc/gantry/runner/runners-version')?.content, VARS.runnersVersion);
  t.equal(file('/etc/gantry/runner/slots')?.content, '0');
  t.equal(file('/etc/gantry/runner/task-memory-mb')?.content, '512');
  for (const f of cc.write_files.filter((f) => f.path.startsWith('/etc/gantry/') || f.path.startsWith('/root/'))) {
    t.equal(f.permissions, '0600', `${f.path} is root-only`);
    t.equal(f.owner, 'root:root', `${f.path} is owned by root`);
  }
  t.same(JSON.parse(file('/root/.docker/config.json')!.content), {
    auths: { 'registry.example.com': { auth: VARS.dockerAuth, email: VARS.dockerEmail } },
  }, 'Docker config.json in the current auths format, keyed by the runner image registry');
  const hub = js(parse(defaultUserData({ ...VARS, runnerImage: 'gantry/runner' })));
  t.same(Object.keys(JSON.parse(hub.write_files.find((f) => f.path === '/root/.docker/config.json')!.content).auths), ['https://index.docker.io/v1/'], 'Docker Hub images use the index key');
  const none = js(parse(defaultUserData({ ...VARS, dockerAuth: '', dockerEmail: '' })));
  t.same(JSON.parse(none.write_files.find((f) => f.path === '/root/.docker/config.json')!.content), { auths: {} }, 'no credentials: empty auths');
  t.match(file('/etc/flatcar/update.conf')?.content, /^SERVER=disabled$/m, 'Flatcar updates are disabled (no reboot under running tasks)');
  const units = new Map(cc.coreos.units.map((u) => [u.name, u]));
  t.match(units.get('update-engine.service'), { mask: true, command: 'stop' });
  t.match(units.get('locksmithd.service'), { mask: true, command: 'stop' });
  const runner = units.get('gantry-runner.service')!;
  t.equal(runner.command, 'start');
  t.notMatch(runner.content, /TOKEN|CLUSTER_ID|[0-9a-f]{24}/, 'no value on the unit or its command line');
  t.match(runner.content, /^TimeoutStopSec=3720$/m, 'stop waits for the drain (3600 s) and the hand-back');
  t.match(runner.content, /^Restart=on-failure$/m);
  t.match(runner.content, /^Requires=docker\.service gantry-data-disk\.service$/m);
  t.match(units.get('docker.service')?.drop_ins?.[0]?.content, /^Requires=gantry-data-disk\.service$/m, 'Docker waits for the data disk');
});

t.test('systemd-analyze verify passes for every generated unit, with no warning at all', async (t) => {
  const cc = js(parse(defaultUserData(VARS)));
  const root = stubTree(cc);
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const verified = cc.coreos.units.filter((u) => u.content !== undefined || u.drop_ins?.length);
  t.ok(verified.length >= 5, `${verified.length} units or drop-ins to verify`);
  for (const u of verified) {
    const r = verifyUnit(root, u.name);
    t.equal(r.output, '', `${u.name}: no output`);
    t.equal(r.status, 0, `${u.name}: exit 0`);
  }
  // The check can fail: a typo in a key, a dependency or a binary path is caught.
  const bad = path.join(root, 'etc/systemd/system/gantry-typo.service');
  fs.writeFileSync(bad, '[Unit]\nDescription=x\nRequires=dokcer.service\n\n[Service]\nExecStart=/usr/bin/docker run x\nRestart=sometimes\n');
  const r = verifyUnit(root, 'gantry-typo.service');
  t.match(r.output, /dokcer\.service/, 'a missing dependency is reported');
  fs.writeFileSync(bad, '[Unit]\nDescription=x\n\n[Service]\nExecStart=/usr/bin/dokcer run x\n');
  t.match(verifyUnit(root, 'gantry-typo.service').output, /not executable/, 'a missing binary is reported');
  fs.writeFileSync(bad, '[Unit]\nDescriptoin=x\n\n[Service]\nExecStart=/usr/bin/docker run x\n');
  const warn = verifyUnit(root, 'gantry-typo.service');
  t.equal(warn.status, 0, 'an unknown key only warns (exit 0)...');
  t.match(warn.output, /Unknown key/, '...so the test treats any output as failure');
});

t.test('the host scripts are valid bash', async (t) => {
  const cc = js(parse(defaultUserData(VARS)));
  const scripts = cc.write_files.filter((f) => f.content.startsWith('#!/bin/bash'));
  t.equal(scripts.length, 2);
  for (const f of scripts) {
    const r = spawnSync('bash', ['-n'], { input: f.content, encoding: 'utf8' });
    t.equal(r.status, 0, `${f.path}: bash -n ${r.stderr}`);
  }
});

// ---------------------------------------------------------------------------------------------
// The scripts, run against stub commands.

function stubBin(dir: string, name: string, body: string) {
  fs.writeFileSync(path.join(dir, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
}

/** Runs gantry-runner with stub docker and curl; returns what `docker run` got. */
function runRunnerScript(cc: CloudConfig): { env: Record<string, string>; args: string[]; calls: string; status: number | null; stderr: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-runner-'));
  try {
    const bin = path.join(dir, 'bin');
    const out = path.join(dir, 'out');
    fs.mkdirSync(bin);
    fs.mkdirSync(out);
    for (const f of cc.write_files.filter((f) => f.path.startsWith('/etc/gantry/runner/'))) {
      fs.mkdirSync(path.dirname(dir + f.path), { recursive: true });
      fs.writeFileSync(dir + f.path, f.content, 'utf8');
    }
    const names = ['GANTRY_CONTROL_PLANE', 'GANTRY_RUNNER_TLS', 'GANTRY_CLUSTER_ID', 'GANTRY_CLUSTER_TOKEN', 'GANTRY_RUNNER_SLOTS', 'GANTRY_RUNNER_TASK_MEMORY_MB', 'GANTRY_INSTANCE_ID'];
    stubBin(
      bin,
      'docker',
      `if [ "$1" = run ]; then printf '%s\\0' "$@" > "$STUB_OUT/args"; for n in ${names.join(' ')}; do printf '%s=%s\\0' "$n" "\${!n}"; done > "$STUB_OUT/env"; else echo "$*" >> "$STUB_OUT/calls"; fi`,
    );
    stubBin(bin, 'curl', `case "$*" in *api/token*) printf 'imds-token' ;; *'X-aws-ec2-metadata-token: imds-token'*instance-id*) printf 'i-0123456789abcdef0' ;; *) exit 22 ;; esac`);
    const script = cc.write_files.find((f) => f.path === '/opt/gantry/bin/gantry-runner')!.content;
    fs.writeFileSync(path.join(dir, 'gantry-runner'), script, { mode: 0o755 });
    const r = spawnSync('bash', [path.join(dir, 'gantry-runner')], {
      encoding: 'utf8',
      env: { PATH: `${bin}:${process.env.PATH}`, GANTRY_TEST_ROOT: dir, STUB_OUT: out },
    });
    const split = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\0').slice(0, -1) : []);
    const env: Record<string, string> = {};
    for (const kv of split(path.join(out, 'env'))) env[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
    const calls = fs.existsSync(path.join(out, 'calls')) ? fs.readFileSync(path.join(out, 'calls'), 'utf8') : '';
    return { env, args: split(path.join(out, 'args')), calls, status: r.status, stderr: r.stderr };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

t.test('gantry-runner hands every value to the container through its environment, byte for byte', async (t) => {
  const r = runRunnerScript(js(parse(defaultUserData(VARS))));
  t.equal(r.status, 0, r.stderr);
  t.same(r.env, {
    GANTRY_CONTROL_PLANE: VARS.controlPlane,
    GANTRY_RUNNER_TLS: 'true',
    GANTRY_CLUSTER_ID: VARS.clusterId,
    GANTRY_CLUSTER_TOKEN: VARS.clusterToken,
    GANTRY_RUNNER_SLOTS: '0',
    GANTRY_RUNNER_TASK_MEMORY_MB: '512',
    GANTRY_INSTANCE_ID: 'i-0123456789abcdef0',
  });
  t.equal(r.args.at(-1), `${VARS.runnerImage}:${VARS.runnersVersion}`, 'the image at RunnersVersion');
  t.notOk(r.args.some((a) => a.includes(VARS.clusterToken)), 'the token is on no command line');
  t.ok(r.args.includes('GANTRY_CLUSTER_TOKEN'), 'docker run -e NAME takes it from the environment');
  t.match(r.args.join(' '), /--stop-timeout 3660/, 'docker itself waits for the drain too');
  t.match(r.calls, /^stop --time 3660 gantry-runner$/m, 'a leftover container is drained, not killed');
  t.match(r.calls, /^pull --quiet registry\.example\.com\/gantry\/runner:0\.1\.0$/m);
  const digest = runRunnerScript(js(parse(defaultUserData({ ...VARS, runnersVersion: `sha256:${'a'.repeat(64)}` }))));
  t.equal(digest.args.at(-1), `${VARS.runnerImage}@sha256:${'a'.repeat(64)}`, 'a digest pins the image by digest');
});

/** Runs gantry-data-disk against stub block-device tools; `disks` lines are "NAME TYPE RO PARTITIONS". */
function runDiskScript(
  script: string,
  world: { disks: string[]; signatures?: string[]; label?: string; mounted?: string[]; instanceStore?: string[] },
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-disk-')),
) {
  const bin = path.join(dir, 'bin');
  const st = path.join(dir, 'state');
  fs.mkdirSync(bin, { recursive: true });
  fs.mkdirSync(st, { recursive: true });
  fs.writeFileSync(path.join(st, 'disks'), world.disks.join('\n') + '\n');
  fs.writeFileSync(path.join(st, 'signatures'), (world.signatures ?? []).join('\n') + '\n');
  if (world.label) fs.writeFileSync(path.join(st, 'label'), world.label);
  fs.writeFileSync(path.join(st, 'mounted'), (world.mounted ?? []).map((m) => dir + m).join('\n') + '\n');
  fs.rmSync(path.join(st, 'calls'), { force: true });
  const byId = path.join(dir, 'dev/disk/by-id');
  fs.mkdirSync(byId, { recursive: true });
  (world.instanceStore ?? []).forEach((dev, i) => {
    const link = path.join(byId, `nvme-Amazon_EC2_NVMe_Instance_Storage_AWS${i}`);
    fs.rmSync(link, { force: true });
    fs.symlinkSync(dev, link);
  });
  stubBin(
    bin,
    'lsblk',
    `dev="\${!#}"; case "$*" in
  "-dnpo NAME,TYPE") awk 'NF {print $1, $2}' "$STUB/disks" ;;
  "-dno TYPE "*) awk -v d="$dev" '$1 == d {print $2; f = 1} END {exit !f}' "$STUB/disks" ;;
  "-dno RO "*) awk -v d="$dev" '$1 == d {print "  " $3}' "$STUB/disks" ;;
  "-no NAME "*) awk -v d="$dev" '$1 == d {print d; for (i = 0; i < $4; i++) print "|-" d "p" i}' "$STUB/disks" ;;
  *) exit 64 ;;
esac`,
  );
  stubBin(bin, 'blkid', `case $1 in -L) [ -s "$STUB/label" ] && cat "$STUB/label" || exit 2 ;; -p) grep -qx -- "$2" "$STUB/signatures" && exit 0; exit 2 ;; *) exit 4 ;; esac`);
  stubBin(bin, 'mkfs.ext4', `echo "mkfs.ext4 $*" >> "$STUB/calls"; printf '%s' "\${!#}" > "$STUB/label"; echo "\${!#}" >> "$STUB/signatures"`);
  stubBin(bin, 'mount', `echo "mount $*" >> "$STUB/calls"; echo "\${!#}" >> "$STUB/mounted"`);
  stubBin(bin, 'mountpoint', `grep -qx -- "$2" "$STUB/mounted"`);
  stubBin(bin, 'udevadm', 'exit 0');
  fs.writeFileSync(path.join(dir, 'gantry-data-disk'), script, { mode: 0o755 });
  const r = spawnSync('bash', [path.join(dir, 'gantry-data-disk')], {
    encoding: 'utf8',
    env: { PATH: `${bin}:${process.env.PATH}`, GANTRY_TEST_ROOT: dir, STUB: st },
  });
  const calls = fs.existsSync(path.join(st, 'calls')) ? fs.readFileSync(path.join(st, 'calls'), 'utf8').replaceAll(dir, '$ROOT') : '';
  return { dir, status: r.status, stderr: r.stderr, calls };
}

t.test('gantry-data-disk finds the data disk on NVMe, formats it only when blank, and mounts it for Docker and the runner', async (t) => {
  const script = js(parse(defaultUserData(VARS))).write_files.find((f) => f.path === '/opt/gantry/bin/gantry-data-disk')!.content;
  const root = '/dev/nvme0n1 disk 0 9'; // Flatcar's disk: partitioned, never a candidate
  const dirs: string[] = [];
  t.teardown(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const run = (...a: Parameters<typeof runDiskScript>) => {
    const r = runDiskScript(...a);
    dirs.push(r.dir);
    return r;
  };

  const nitro = run(script, { disks: [root, '/dev/nvme1n1 disk 0 0', '/dev/nvme2n1 disk 0 0', '/dev/zram0 disk 0 0', '/dev/sr0 rom 1 0'], instanceStore: ['/dev/nvme2n1'] });
  t.equal(nitro.status, 0, nitro.stderr);
  t.equal(
    nitro.calls,
    'mkfs.ext4 -q -m 0 -L gantry-data /dev/nvme2n1\nmount -o noatime /dev/nvme2n1 $ROOT/var/lib/gantry\nmount --bind $ROOT/var/lib/gantry/docker $ROOT/var/lib/docker\n',
    'instance store preferred over a blank EBS volume; formatted, mounted, Docker bind-mounted onto it',
  );
  t.ok(fs.existsSync(path.join(nitro.dir, 'var/lib/gantry/runner')), 'runner work dir created');

  // Next boot: names may have swapped, the label finds the disk; nothing is formatted again.
  fs.writeFileSync(path.join(nitro.dir, 'state/label'), '/dev/nvme1n1');
  const reboot = run(script, { disks: [root, '/dev/nvme1n1 disk 0 0', '/dev/nvme2n1 disk 0 0'], signatures: ['/dev/nvme1n1'], label: '/dev/nvme1n1', instanceStore: ['/dev/nvme1n1'] }, nitro.dir);
  t.equal(reboot.calls, 'mount -o noatime /dev/nvme1n1 $ROOT/var/lib/gantry\nmount --bind $ROOT/var/lib/gantry/docker $ROOT/var/lib/docker\n', 'reboot: mounted by label, not formatted');

  const ebs = run(script, { disks: [root, '/dev/nvme1n1 disk 0 0'] });
  t.match(ebs.calls, /^mkfs\.ext4 -q -m 0 -L gantry-data \/dev\/nvme1n1$/m, 'no instance store: the blank EBS volume');

  const used = run(script, { disks: [root, '/dev/nvme1n1 disk 0 0', '/dev/nvme3n1 disk 1 0', '/dev/nvme4n1 disk 0 1'], signatures: ['/dev/nvme1n1'] });
  t.equal(used.status, 0, used.stderr);
  t.equal(used.calls, '', 'a disk with a filesystem, a read-only disk and a partitioned disk are never touched');
  t.match(used.stderr, /no blank data disk found/, 'falls back to the root filesystem, and says so');
  t.ok(fs.existsSync(path.join(used.dir, 'var/lib/gantry/docker')), 'directories exist on the root filesystem');

  const mounted = run(script, { disks: [root, '/dev/nvme1n1 disk 0 0'], mounted: ['/var/lib/gantry', '/var/lib/docker'] });
  t.equal(mounted.calls, '', 'already mounted (the unit restarted): nothing to do');
});

// ---------------------------------------------------------------------------------------------
// Adversarial values

const ADVERSARIAL = [
  'x"\nevil: true\n#',
  "x'\nevil: true",
  '"; rm -rf / #',
  'a: b',
  'key: value\n  - name: evil.service\n    command: start',
  '\n- name: evil.service\n  command: start\n  content: |\n    [Service]\n    ExecStart=/bin/sh -c id\n',
  '\ncoreos:\n  units: []\n',
  '# not a comment',
  ' leading and trailing space ',
  '{{.ClusterToken}}',
  '{{ .Memory }}',
  '{"a": [1, 2]}',
  '[x, y]',
  'yes',
  'no',
  'on',
  'off',
  'true',
  'null',
  '~',
  '0644',
  '0o17',
  '1e3',
  '2001-01-01',
  '.inf',
  '<<',
  '|\n  block',
  '>-',
  '- item',
  '? key',
  '&anchor',
  '*alias',
  '!!binary',
  '%YAML 1.1',
  '---\nnew: doc',
  '...',
  'line\u2028separator',
  'paragraph\u2029separator',
  'next\u0085line',
  'carriage\rreturn',
  'crlf\r\nline',
  'tab\there',
  'bell\u0007',
  'del\u007f',
  'bom\ufeff',
  'nbsp\u00a0',
  'emoji 😀',
  '$private_ipv4',
  '\\$public_ipv4',
  '${private_ipv6}',
  'back\\slash',
  '\\',
  'trailing newline\n',
  '%h %n %%',
  '${HOME} `id` $(id)',
  '',
];
const STRING_FIELDS = ['clusterId', 'clusterToken', 'runnersVersion', 'controlPlane', 'runnerImage', 'dockerAuth', 'dockerEmail'] as const;
const FILE_OF: Record<(typeof STRING_FIELDS)[number], string> = {
  clusterId: '/etc/gantry/runner/cluster-id',
  clusterToken: '/etc/gantry/runner/cluster-token',
  runnersVersion: '/etc/gantry/runner/runners-version',
  controlPlane: '/etc/gantry/runner/control-plane',
  runnerImage: '/etc/gantry/runner/runner-image',
  dockerAuth: '/root/.docker/config.json',
  dockerEmail: '/root/.docker/config.json',
};

t.test('adversarial values cannot change the default document: same keys, exact values', async (t) => {
  const normal = parse(defaultUserData(VARS));
  const normalKeys = keyPaths(normal.contents);
  const normalUnits = js(normal).coreos.units.map((u) => u.name);
  let rendered = 0;
  for (const field of STRING_FIELDS) {
    for (const v of ADVERSARIAL) {
      const vars = { ...VARS, [field]: v };
      if (v === '' && ['clusterId', 'clusterToken', 'runnersVersion', 'controlPlane'].includes(field)) {
        t.throws(() => defaultUserData(vars), { code: 'bad_value', message: new RegExp(`${field} is required`) });
        continue;
      }
      const out = defaultUserData(vars);
      rendered++;
      const doc = parse(out);
      const what = `${field}=${show(v)}`;
      if (JSON.stringify(keyPaths(doc.contents)) !== JSON.stringify(normalKeys)) t.fail(`${what}: key set changed`);
      const cc = js(doc);
      if (JSON.stringify(cc.coreos.units.map((u) => u.name)) !== JSON.stringify(normalUnits)) t.fail(`${what}: units changed`);
      if (schemaProblems(doc, true).length) t.fail(`${what}: schema ${schemaProblems(doc, true).join('; ')}`);
      const content = cc.write_files.find((f) => f.path === FILE_OF[field])!.content;
      if (field === 'dockerAuth' || field === 'dockerEmail') {
        const auths = JSON.parse(content).auths as Record<string, { auth: string; email?: string }>;
        const entry = Object.values(auths)[0];
        const want = field === 'dockerAuth' ? v : VARS.dockerAuth;
        if (want === '' ? entry !== undefined : entry?.auth !== want) t.fail(`${what}: docker auth changed`);
        if (field === 'dockerEmail' && (entry?.email ?? '') !== v) t.fail(`${what}: docker email changed`);
      } else if (field === 'runnerImage' && v === '') {
        if (content !== 'gantry/runner') t.fail(`${what}: empty image should default`);
      } else if (content !== v) {
        t.fail(`${what}: file content ${JSON.stringify(content)}`);
      }
    }
  }
  t.ok(rendered > 350, `${rendered} adversarial renders kept the structure and the exact values`);
});

t.test('adversarial values reach the runner container byte for byte', async (t) => {
  const hostile = ADVERSARIAL.filter((v) => v !== '' && !v.includes('\u0000'));
  for (const v of hostile) {
    const r = runRunnerScript(js(parse(defaultUserData({ ...VARS, clusterToken: v, controlPlane: v, clusterId: v }))));
    if (r.status !== 0) t.fail(`${show(v)}: exit ${r.status} ${r.stderr}`);
    if (r.env.GANTRY_CLUSTER_TOKEN !== v || r.env.GANTRY_CONTROL_PLANE !== v || r.env.GANTRY_CLUSTER_ID !== v) {
      t.fail(`${show(v)} arrived as ${show(JSON.stringify(r.env))}`);
    }
    if (r.args.some((a) => a === v)) t.fail(`${show(v)} is on the docker command line`);
  }
  t.pass(`${hostile.length} hostile tokens arrived intact and off the command line`);
});

/**
 * One template per YAML context, each with entries after the variable that an injection would
 * disturb. `expect` is what the scalar must decode to; `accepts` says which values the context
 * must take (the rest may be refused, with a UserDataError naming the variable).
 */
interface ContextCase {
  name: string;
  line: string;
  expect?: (v: string) => unknown;
  accepts: (v: string) => boolean;
}
/** YAML 1.1 printable, minus its line breaks and the BOM: what may stand raw outside double quotes. */
const rawYaml = (v: string, newline: boolean) =>
  [...v].every((c) => {
    const cp = c.codePointAt(0)!;
    if (c === '\t' || (c === '\n' && newline)) return true;
    if (c === '\u2028' || c === '\u2029') return false; // line breaks in YAML 1.1 (go-yaml v1)
    return (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd && cp !== 0xfeff) || cp >= 0x10000;
  });
const any = () => true;
/** A block scalar takes a value unless it would leave a line of only blanks longer than the indentation. */
const blockTakes = (before: string, v: string, after: string, indent: number) =>
  rawYaml(v, true) &&
  v.split('\n').every((ln, j, all) => {
    const whole = (j === 0 ? before : ' '.repeat(indent)) + ln + (j === all.length - 1 ? after : '');
    return !(/^[ \t]*$/.test(whole) && whole.length > indent);
  });
const CONTEXT_CASES: ContextCase[] = [
  { name: 'double-quoted', line: '    content: "pre {{.DockerEmail}} post"', expect: (v) => `pre ${v} post`, accepts: any },
  { name: 'plain', line: '    content: pre-{{.DockerEmail}}-post # comment', expect: (v) => `pre-${v}-post`, accepts: any },
  { name: 'plain, alone', line: '    content: {{.DockerEmail}}', expect: (v) => v, accepts: any },
  { name: 'flow', line: '    content: [a, {{.DockerEmail}}, "{{.DockerEmail}}", b]', expect: (v) => ['a', v, v, 'b'], accepts: any },
  { name: 'comment', line: '    content: x # note {{.DockerEmail}}', expect: () => 'x', accepts: any },
  { name: 'key', line: '    {{.DockerEmail}}-key: value\n    content: x', expect: () => 'x', accepts: any },
  { name: 'single-quoted', line: "    content: 'pre {{.DockerEmail}} post'", expect: (v) => `pre ${v} post`, accepts: (v) => rawYaml(v, false) },
  {
    name: 'literal block',
    line: '    content: |\n      pre {{.DockerEmail}} post\n      second line',
    expect: (v) => `pre ${v} post\nsecond line\n`,
    accepts: (v) => blockTakes('      pre ', v, ' post', 6),
  },
  {
    name: 'literal block, opening its first line',
    line: '    content: |\n      {{.DockerEmail}}\n      second line',
    expect: (v) => `${v}\nsecond line\n`,
    accepts: (v) => blockTakes('      ', v, '', 6) && v !== '' && v[0] !== ' ' && v[0] !== '\n',
  },
  // At the end of a block scalar, the template's chomping indicator decides trailing line breaks (clip: one).
  { name: 'literal block with an indentation indicator', line: '    content: |2\n        {{.DockerEmail}}', expect: (v) => `  ${v}`.replace(/\n+$/, '') + '\n', accepts: (v) => blockTakes('        ', v, '', 6) },
  { name: 'folded block', line: '    content: >\n      pre {{.DockerEmail}} post', accepts: (v) => blockTakes('      pre ', v, ' post', 6) },
];
const contextTemplate = (c: ContextCase) => `#cloud-config\nwrite_files:\n  - path: /f\n${c.line}\n  - path: /after\n    content: after\nlast: value\n`;

/** True when `v` lands exactly, or is refused by the escaper where the context cannot hold it. */
function lands(t: Test, c: ContextCase, v: string): boolean {
  const template = contextTemplate(c);
  const reference = keyPaths(parse(renderUserData(template, { ...VARS, dockerEmail: 'e' })).contents).map((k) => k.replace('e-key', 'KEY'));
  let out: string;
  try {
    out = renderUserData(template, { ...VARS, dockerEmail: v });
  } catch (err) {
    if (!(err instanceof UserDataError) || err.code !== 'bad_value' || !err.message.includes('{{.DockerEmail}}')) throw err;
    // Only the escaper's own refusals count; the structure check is a safety net, not a pass.
    if (err.message.includes('change the structure') || c.accepts(v)) return false;
    if (v.length > 3 && err.message.includes(v)) t.fail(`${show(v)}: the message echoes the value`);
    return true;
  }
  // go-yaml v1 (libyaml) takes NEL, LS and PS as line breaks and refuses other controls; the
  // yaml package does neither, so check the text itself: none may appear raw.
  if (/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\ufeff]/.test(out)) return false;
  const doc = parse(out);
  const keys = keyPaths(doc.contents).map((k) => k.replace(`${v}-key`, 'KEY'));
  if (JSON.stringify(keys) !== JSON.stringify(reference)) return false;
  const cc = js(doc);
  if (cc.write_files[1]?.content !== 'after' || (doc.toJS() as Record<string, unknown>).last !== 'value') return false;
  if (c.name === 'key' && (cc.write_files[0] as unknown as Record<string, unknown>)[`${v}-key`] !== 'value') return false;
  return !c.expect || JSON.stringify(cc.write_files[0]?.content) === JSON.stringify(c.expect(v));
}

t.test('in every YAML context a value lands exactly, or is refused only where the context cannot hold it', async (t) => {
  const noNul = fc.string({ unit: 'binary', maxLength: 40 }).filter((v) => !v.includes('\0'));
  const hostile = fc
    .array(fc.constantFrom(...'\n\r"\'#: -{}[]|>$\\ \t!&*%@`,?~\u2028\u0085'.split(''), 'yes', 'off', '0644', '$private_ipv4', '{{.ClusterId}}', 'x'), { maxLength: 12 })
    .map((parts) => parts.join(''));
  for (const c of CONTEXT_CASES) {
    const bad = ADVERSARIAL.filter((v) => !lands(t, c, v));
    t.same(bad.map(show), [], `${c.name}: every adversarial value lands or is rightly refused`);
    fc.assert(fc.property(noNul, (v) => lands(t, c, v)), { numRuns: 150, seed: 20260105 });
    fc.assert(fc.property(hostile, (v) => lands(t, c, v)), { numRuns: 150, seed: 42 });
  }
  // NUL is refused everywhere: no file or environment variable can carry it.
  t.throws(() => renderUserData(contextTemplate(CONTEXT_CASES[0]!), { ...VARS, dockerEmail: 'a\0' }), { code: 'bad_value', message: /NUL/ });
});

t.test('templates: unknown variables, unsupported actions, formats and the 16 KB limit', async (t) => {
  t.throws(() => renderUserData('#cloud-config\na: {{.ClusterID}}\nb: {{.Foo}}\n', VARS), {
    code: 'unknown_variable',
    message: /unknown template variables \{\{\.ClusterID\}\}, \{\{\.Foo\}\}; known: \{\{\.ClusterId\}\}/,
  });
  t.throws(() => checkTemplate('#cloud-config\na: {{if .X}}y{{end}}\n'), { code: 'unsupported_action', message: /\{\{if \.X\}\} on line 2/ });
  t.throws(() => checkTemplate('#cloud-config\na: {{.ClusterId | printf "%q"}}\n'), { code: 'unsupported_action' });
  t.throws(() => checkTemplate('#cloud-config\na: {{- .ClusterId}}\n'), { code: 'unsupported_action' });
  t.throws(() => checkTemplate('#cloud-config\na: "{{.ClusterId"\n'), { code: 'unsupported_action', message: /unclosed/ });
  t.same(checkTemplate('#cloud-config\na: "{{ .ClusterId }}"\nb: {{.RunnersVersion}}\n'), { format: 'cloud-config', variables: ['ClusterId', 'RunnersVersion'] }, 'spaces inside the braces, as Go allows');
  t.equal(
    renderUserData('#cloud-config\na: "{{"{{"}}.State.Running{{"}}"}} {{.ClusterId}}"\n', VARS),
    `#cloud-config\na: "{{.State.Running}} ${VARS.clusterId}"\n`,
    'Go string literals write braces (docker --format strings)',
  );

  t.throws(() => checkTemplate('\uFEFF#cloud-config\na: 1\n'), { code: 'bad_template', message: /byte-order mark or blank space before "#cloud-config"/ });
  t.throws(() => checkTemplate('\n#cloud-config\na: 1\n'), { code: 'bad_template' });
  t.throws(() => checkTemplate('#cloud-config {{.ClusterId}}\n'), { code: 'bad_template', message: /first line/ });
  t.throws(() => checkTemplate('#cloud-config\na: [1, 2\n'), { code: 'bad_template', message: /not valid YAML 1\.1/ });
  t.throws(() => checkTemplate('#cloud-config\na: &{{.ClusterId}} x\n'), { code: 'bad_template', message: /anchor or tag/ });
  t.throws(() => checkTemplate('#cloud-config\na: |{{.ClusterId}}\n  x\n'), { code: 'bad_template', message: /block scalar header/ });
  t.throws(() => checkTemplate('#cloud-config\nk:\n  a {{.ClusterId}}\n  b\n'), { code: 'bad_template', message: /continues on the next line/ });
  t.throws(() => checkTemplate('#cloud-config\na: "\\{{.ClusterId}}"\n'), { code: 'bad_template', message: /backslash/ });
  t.throws(() => renderUserData('#cloud-config\na: "{{.ClusterId}}"\nb: "{{.ClusterId}}"\n{{.ClusterId}}: 1\n', { ...VARS, clusterId: 'a' }), { code: 'bad_value', message: /change the structure/ }, 'a value that duplicates a key is refused');

  // Scripts and other formats: values go in raw, so only a conservative alphabet is allowed.
  t.equal(renderUserData('#!/bin/bash\necho {{.ClusterId}} {{.DockerAuth}}\n', VARS), `#!/bin/bash\necho ${VARS.clusterId} ${VARS.dockerAuth}\n`);
  t.throws(() => renderUserData('#!/bin/bash\necho {{.DockerEmail}}\n', { ...VARS, dockerEmail: 'a; reboot' }), { code: 'bad_value', message: /\{\{\.DockerEmail\}\} has characters outside/ });
  // Ignition JSON: values inside strings are JSON-escaped; outside strings they are refused.
  const ign = renderUserData('{"ignition": {"version": "3.3.0"}, "x": "{{.DockerEmail}}"}', { ...VARS, dockerEmail: 'a"b\\c\u2028😀' });
  t.equal(JSON.parse(ign).x, 'a"b\\c\u2028😀');
  t.throws(() => checkTemplate('{"n": {{.Memory}}}'), { code: 'bad_template', message: /outside a JSON string/ });

  // 16 KB: EC2's limit on the raw user data, before base64.
  const pad = (n: number) => `#cloud-config\nwrite_files:\n  - path: /pad\n    content: "${'a'.repeat(n)}{{.ClusterId}}"\n`;
  const base = Buffer.byteLength(renderUserData(pad(0), VARS));
  t.equal(Buffer.byteLength(renderUserData(pad(USER_DATA_MAX_BYTES - base), VARS)), USER_DATA_MAX_BYTES, 'exactly 16384 bytes is accepted');
  t.throws(() => renderUserData(pad(USER_DATA_MAX_BYTES - base + 1), VARS), {
    code: 'too_large',
    message: 'user_data is 16385 bytes after rendering; EC2 accepts at most 16384 bytes (16 KB) before base64 encoding',
  });
  t.throws(() => renderUserData(pad(USER_DATA_MAX_BYTES - base - 1), { ...VARS, clusterId: 'é'.repeat(VARS.clusterId.length) }), { code: 'too_large' }, 'counted in bytes, not characters');
  const e = (() => {
    try {
      renderUserData('#cloud-config\na: {{.Nope}}\n', VARS);
    } catch (err) {
      return err;
    }
  })();
  t.ok(e instanceof UserDataError && e.kind === 'invalid', 'a UserDataError, answered as 400 (kind invalid)');
});

t.test('values: required fields, numbers, NUL and lone surrogates', async (t) => {
  t.throws(() => defaultUserData({ ...VARS, clusterToken: '' }), { code: 'bad_value', message: 'clusterToken is required (the value of {{.ClusterToken}})' });
  t.throws(() => defaultUserData({ ...VARS, memory: 8 }), { code: 'bad_value', message: /memory must be an integer from 16/ });
  t.throws(() => defaultUserData({ ...VARS, runnersPerInstance: 1.5 }), { code: 'bad_value', message: /runnersPerInstance/ });
  t.throws(() => defaultUserData({ ...VARS, dockerEmail: 'a\0b' }), { code: 'bad_value', message: /NUL/ });
  t.throws(() => defaultUserData({ ...VARS, clusterToken: 'a\uD800b' }), { code: 'bad_value', message: /lone surrogate/ });
  t.notMatch(DEFAULT_USER_DATA_TEMPLATE, /\$(public|private)_ipv[46]/, 'the default relies on no coreos-cloudinit substitution');
});
