/**
 * Network partitions between processes on this machine, made with Linux network namespaces
 * (iproute2 only: no kernel module, no iptables, nothing in the host's routing table beyond
 * the connected routes of our own veth ends).
 *
 * A `NetLab` is one test's network. Its *switch* is a namespace of its own; every `Link`
 * is a cable from the host (the root namespace, where the test process, PostgreSQL and
 * etcd live) through a two-port bridge in the switch to a *node* namespace (a replica, a
 * runner). Cutting a link sets both of its switch ports down: each end keeps its address
 * and routes but loses carrier, and everything either end sends is dropped. No RST, no
 * ICMP, no refused connection: established connections stay half-open (their data is
 * retransmitted and delivered after the heal), new connections hang in SYN-SENT. ARP plays
 * no part (both ends have permanent neighbour entries), so a cut is silent even for new
 * connections, as across a routed network.
 *
 * Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmark test networks): link
 * k uses the /30 block 198.18.0.0 + 4k, host end .1, node end .2. The host end is named
 * `gtp-<k in base 36>`; creating it is the allocation (the kernel refuses a second
 * interface of that name), so concurrent test runs never share a block. Its alias names the
 * owning process; namespaces are named `gtn-<pid in base 36>-…`. The first lab of a process
 * removes what dead processes left (their namespaces, the processes inside them, their
 * host ends); teardown removes this lab's, even when the test failed.
 *
 * A process in a node namespace cannot reach the host's loopback, where PostgreSQL and etcd
 * listen: `forwarder()` relays TCP from a link's host address to a loopback service, one
 * link per service, so that cutting one link cuts one service.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import type { GantryProcess } from './process.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const IP = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', '/bin/ip'].find((p) => fs.existsSync(p));
const PID36 = process.pid.toString(36);
const BLOCKS = 1 << 15; // /30 blocks in 198.18.0.0/15

/** Runs `ip` with `args`; throws with its stderr. */
function ip(args: string[]): string {
  try {
    return execFileSync(IP!, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function namespaces(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

/** Kills every process in the namespace (SIGCONT first, so a frozen one dies too), then deletes it. */
function destroyNamespace(ns: string): void {
  for (let round = 0; round < 50; round++) {
    let pids: number[];
    try {
      pids = ip(['netns', 'pids', ns]).split('\n').filter(Boolean).map(Number);
    } catch {
      return; // already gone
    }
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    execFileSync('sleep', ['0.02']);
  }
  try {
    ip(['netns', 'del', ns]);
  } catch {
    /* already gone */
  }
}

let cleaned = false;

/**
 * Removes what test processes that no longer exist left behind: their namespaces (with
 * the processes still running in them) and their host-side link ends.
 */
export function removeLeftovers(): { namespaces: string[]; links: string[] } {
  const out = { namespaces: [] as string[], links: [] as string[] };
  for (const ns of namespaces()) {
    const m = /^gtn-([0-9a-z]+)-/.exec(ns);
    if (!m || alive(parseInt(m[1]!, 36))) continue;
    destroyNamespace(ns);
    out.namespaces.push(ns);
  }
  const links = JSON.parse(ip(['-j', 'link', 'show'])) as { ifname: string; ifalias?: string }[];
  for (const l of links) {
    const m = /^gantry-test pid=(\d+)/.exec(l.ifalias ?? '');
    if (!l.ifname.startsWith('gtp-') || !m || alive(Number(m[1]))) continue;
    try {
      ip(['link', 'del', l.ifname]);
      out.links.push(l.ifname);
    } catch {
      /* raced with its namespace's removal */
    }
  }
  return out;
}

const u32 = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
const dotted = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
const mac = (k: number, end: number) => `02:47:54:${((k >> 8) & 255).toString(16).padStart(2, '0')}:${(k & 255).toString(16).padStart(2, '0')}:0${end}`;

/** A cable between the host and a node namespace, through the lab's switch. */
export interface Link {
  readonly name: string;
  /** The host end's address (the root namespace). */
  readonly hostAddr: string;
  /** The node end's address (inside the node's namespace). */
  readonly nodeAddr: string;
  /** The host end's interface name. */
  readonly hostIf: string;
  readonly isCut: boolean;
  /** Drops everything on the link from now on (both switch ports down); returns when it is in effect. */
  cut(): void;
  heal(): void;
}

export interface NetNode {
  readonly name: string;
  /** The namespace's name (`ip netns exec <ns> …`). */
  readonly ns: string;
}

export interface NsProcess {
  proc: ChildProcess;
  /** Everything it printed on stdout and stderr so far. */
  output(): string;
  exited: Promise<number | string>;
}

let labs = 0;
const live = new Set<NetLab>();
process.once('exit', () => {
  for (const lab of live) lab.destroySync();
});

export class NetLab {
  private readonly nodes: NetNode[] = [];
  private ports = 0;
  private destroyed = false;

  private constructor(readonly switchNs: string, private readonly prefix: string) {}

  /** A lab of its own for test `t`, destroyed at its teardown. */
  static async create(t: Test, label = 'lab'): Promise<NetLab> {
    if (!IP) throw new Error('partition tests need iproute2 (`ip`): apt-get install iproute2 (scripts/services.sh installs it)');
    if (process.getuid?.() !== 0) throw new Error('partition tests need root: they create network namespaces and veth pairs');
    if (!cleaned) {
      cleaned = true;
      const left = removeLeftovers();
      if (left.namespaces.length + left.links.length > 0) t.comment(`removed leftovers of earlier runs: ${JSON.stringify(left)}`);
    }
    const prefix = `gtn-${PID36}-${++labs}${label ? `-${label}` : ''}`;
    const lab = new NetLab(`${prefix}-sw`, prefix);
    live.add(lab);
    t.teardown(() => lab.destroy());
    ip(['netns', 'add', lab.switchNs]);
    ip(['-n', lab.switchNs, 'link', 'set', 'lo', 'up']);
    return lab;
  }

  /** A new, empty network namespace (loopback up) for a process of the test. */
  node(name: string): NetNode {
    if (!/^[a-z0-9]{1,12}$/.test(name)) throw new Error(`node name ${name}: 1-12 lower-case letters or digits`);
    const n = { name, ns: `${this.prefix}-${name}` };
    ip(['netns', 'add', n.ns]);
    this.nodes.push(n);
    ip(['-n', n.ns, 'link', 'set', 'lo', 'up']);
    return n;
  }

  /** A cable from the host to `node`, called `ifName` inside the node (e.g. "etcd0"); up at once. */
  link(node: NetNode, ifName: string): Link {
    if (!/^[a-z][a-z0-9]{0,11}$/.test(ifName)) throw new Error(`interface name ${ifName}: 1-12 lower-case letters or digits`);
    const i = ++this.ports;
    const sw = this.switchNs;
    // Claim a block: the host end's name is the lock. Start where this process's pid points
    // so that concurrent runs rarely probe the same names.
    let k = -1;
    let hostIf = '';
    for (let probe = 0; probe < BLOCKS; probe++) {
      const cand = ((process.pid * 16 + i + probe) % (BLOCKS - 1)) + 1; // block 0 is never used
      const name = `gtp-${cand.toString(36)}`;
      try {
        ip(['link', 'add', name, 'address', mac(cand, 1), 'type', 'veth', 'peer', 'name', `h${i}`, 'netns', sw]);
      } catch (err) {
        if (/File exists/.test((err as Error).message)) continue;
        throw err;
      }
      k = cand;
      hostIf = name;
      break;
    }
    if (k < 0) throw new Error('no free address block in 198.18.0.0/15');
    ip(['link', 'set', hostIf, 'alias', `gantry-test pid=${process.pid} lab=${this.prefix}`]);
    const base = u32('198.18.0.0') + 4 * k;
    const hostAddr = dotted(base + 1);
    const nodeAddr = dotted(base + 2);
    ip(['-n', sw, 'link', 'add', `p${i}`, 'type', 'veth', 'peer', 'name', ifName, 'address', mac(k, 2), 'netns', node.ns]);
    ip(['-n', sw, 'link', 'add', `b${i}`, 'type', 'bridge']);
    for (const port of [`h${i}`, `p${i}`]) ip(['-n', sw, 'link', 'set', port, 'master', `b${i}`, 'up']);
    ip(['-n', sw, 'link', 'set', `b${i}`, 'up']);
    ip(['addr', 'add', `${hostAddr}/30`, 'dev', hostIf]);
    ip(['link', 'set', hostIf, 'up']);
    ip(['-n', node.ns, 'addr', 'add', `${nodeAddr}/30`, 'dev', ifName]);
    ip(['-n', node.ns, 'link', 'set', ifName, 'up']);
    // Permanent neighbours: no ARP, so a cut is silent for new connections too (a failed
    // ARP would answer them "no route to host").
    ip(['neigh', 'replace', nodeAddr, 'lladdr', mac(k, 2), 'dev', hostIf, 'nud', 'permanent']);
    ip(['-n', node.ns, 'neigh', 'replace', hostAddr, 'lladdr', mac(k, 1), 'dev', ifName, 'nud', 'permanent']);
    let isCut = false;
    const ports = (state: 'up' | 'down') => {
      for (const port of [`h${i}`, `p${i}`]) ip(['-n', sw, 'link', 'set', port, state]);
    };
    return {
      name: `${node.name}/${ifName}`,
      hostAddr,
      nodeAddr,
      hostIf,
      get isCut() {
        return isCut;
      },
      cut() {
        ports('down');
        isCut = true;
      },
      heal() {
        ports('up');
        isCut = false;
      },
    };
  }

  /** Starts `argv` inside `node`'s namespace (cwd: the repository), killed at teardown. */
  spawn(t: Test, node: NetNode, argv: string[], env: Record<string, string>, o: { stdin?: boolean } = {}): NsProcess {
    const proc = spawn(IP!, ['netns', 'exec', node.ns, ...argv], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? sig ?? -1)));
    t.teardown(async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGCONT');
        proc.kill('SIGKILL');
        await exited;
      }
    });
    return { proc, output: () => out, exited };
  }

  /** Everything of this lab gone: processes in its namespaces, the namespaces, the host ends. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    for (const n of this.nodes) destroyNamespace(n.ns);
    destroyNamespace(this.switchNs);
  }

  async destroy(): Promise<void> {
    this.destroySync();
    // Deleting the switch takes the host ends with it, asynchronously (the kernel dismantles
    // a namespace in the background): wait for them, and delete any that stays.
    const mine = () =>
      (JSON.parse(ip(['-j', 'link', 'show'])) as { ifname: string; ifalias?: string }[]).filter((l) =>
        (l.ifalias ?? '').endsWith(`lab=${this.prefix}`),
      );
    const deadline = Date.now() + 5000;
    while (mine().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const l of mine()) {
      try {
        ip(['link', 'del', l.ifname]);
      } catch (err) {
        if (!/Cannot find device/.test((err as Error).message)) throw err;
      }
    }
  }
}

export interface Forwarder {
  readonly host: string;
  readonly port: number;
  /** Connections relayed so far. */
  connections(): number;
}

/**
 * A TCP relay in the test process from `host` (a link's host address) to a service on the
 * loopback: the way into PostgreSQL or etcd for a process in a node namespace. It relays
 * bytes and nothing else (no keepalive of its own), so what a cut does to the link is all
 * the peers see. Closed at teardown.
 */
export async function forwarder(t: Test, host: string, upstream: { host: string; port: number }): Promise<Forwarder> {
  const sockets = new Set<net.Socket>();
  let n = 0;
  const server = net.createServer((down) => {
    n++;
    const up = net.connect(upstream.port, upstream.host);
    sockets.add(down);
    sockets.add(up);
    const end = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    for (const s of [down, up]) {
      s.setNoDelay(true);
      s.on('error', end);
      s.on('close', end);
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { host, port: (server.address() as net.AddressInfo).port, connections: () => n };
}

/**
 * `gantry start` as a real process inside `node`'s namespace; resolves once it printed its
 * API base URL (as startGantryProcess does on the host). Killed at teardown.
 */
export async function startGantryIn(t: Test, lab: NetLab, node: NetNode, env: Record<string, string>, timeoutMs = 60000): Promise<GantryProcess> {
  const p = lab.spawn(t, node, [process.execPath, '--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), 'start'], {
    GANTRY_LOCAL_RUNNERS: '0',
    LOG_LEVEL: 'warn',
    ...env,
  });
  const deadline = Date.now() + timeoutMs;
  while (!/Press Ctrl-C to stop/.test(p.output())) {
    if (p.proc.exitCode !== null || p.proc.signalCode !== null) throw new Error(`gantry exited before it was ready:\n${p.output()}`);
    if (Date.now() > deadline) throw new Error(`gantry did not start within ${timeoutMs} ms:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const out = p.output();
  return {
    proc: p.proc,
    url: /API base URL: (\S+)\/2\//.exec(out)![1]!,
    projectId: /project id:\s+([0-9a-f]{24})/.exec(out)?.[1],
    token: /token:\s+([0-9a-f]+)/.exec(out)?.[1],
    output: p.output,
    exited: p.exited,
  };
}

/** A line of a process's JSON log (pino), with its time in ms. */
export interface LogLine {
  time: number;
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** The JSON log lines in a process's output (other lines are skipped). */
export function logLines(output: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const v = JSON.parse(line) as Record<string, unknown>;
      if (typeof v.msg !== 'string') continue;
      const time = typeof v.time === 'number' ? v.time : Date.parse(String(v.time));
      out.push({ ...v, time, level: Number(v.level), msg: v.msg });
    } catch {
      /* not a log line */
    }
  }
  return out;
}
