/**
 * The partition plumbing itself (test/helpers/netns.ts), proved before the tests that rely
 * on it: a cut link drops packets both ways (no RST, no refusal, no ICMP), so an
 * established connection stays half-open and delivers what was written during the cut
 * once healed, and a new connection hangs rather than fails; the forwarder carries a
 * namespace's traffic to a loopback service; teardown and the leftover sweep leave nothing.
 */
import { execFileSync, spawn } from 'node:child_process';
import net from 'node:net';
import t from 'tap';
import { forwarder, NetLab, removeLeftovers } from '../../helpers/netns.ts';
import { until } from '../../helpers/runner.ts';

/** A small TCP client in a namespace, driven line by line on stdin; reports JSON lines. */
const CLIENT = `
const net = require('node:net');
const [host, port] = process.argv.slice(-2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const main = net.connect(Number(port), host);
main.on('connect', () => say({ ev: 'connected' }));
main.on('data', (d) => say({ ev: 'data', data: d.toString() }));
main.on('error', (e) => say({ ev: 'error', code: e.code }));
main.on('close', () => say({ ev: 'close' }));
let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  for (let i; (i = buf.indexOf('\\n')) >= 0; ) {
    const cmd = buf.slice(0, i); buf = buf.slice(i + 1);
    if (cmd.startsWith('send ')) main.write(cmd.slice(5));
    if (cmd === 'connect') {
      const t0 = Date.now();
      const c = net.connect(Number(port), host);
      c.on('connect', () => { say({ ev: 'new-connected', ms: Date.now() - t0 }); c.end(); });
      c.on('error', (e) => say({ ev: 'new-error', code: e.code, ms: Date.now() - t0 }));
    }
  }
});
`;

t.test('a cut drops packets both ways: half-open, no RST, no refusal; the heal delivers', async (t) => {
  const lab = await NetLab.create(t, 'plumb');
  const peer = lab.node('peer');
  const link = lab.link(peer, 'eth0');

  const received: string[] = [];
  const serverEvents: string[] = [];
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => {
    conns.push(s);
    if (conns.length > 1) return; // the connection made during the cut: only that it arrives matters
    s.on('data', (d) => received.push(d.toString()));
    s.on('error', (e: NodeJS.ErrnoException) => serverEvents.push(`error ${e.code}`));
    s.on('close', () => serverEvents.push('close'));
  });
  await new Promise<void>((r) => server.listen(0, link.hostAddr, () => r()));
  t.teardown(() => {
    for (const c of conns) c.destroy();
    server.close();
  });
  const port = (server.address() as net.AddressInfo).port;

  const p = lab.spawn(t, peer, [process.execPath, '-e', CLIENT, link.hostAddr, String(port)], {}, { stdin: true }).proc;
  const events: { ev: string; data?: string; code?: string; ms?: number; at: number }[] = [];
  let out = '';
  p.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (let i; (i = out.indexOf('\n')) >= 0; ) {
      events.push({ ...(JSON.parse(out.slice(0, i)) as { ev: string }), at: Date.now() });
      out = out.slice(i + 1);
    }
  });
  await until('the client connected', async () => events.some((e) => e.ev === 'connected') && conns.length === 1, 10000, 20);

  p.stdin!.write('send before\n');
  conns[0]!.write('BEFORE');
  await until('traffic both ways before the cut', async () => received.join('') === 'before' && events.some((e) => e.data === 'BEFORE'), 5000, 20);

  link.cut();
  const cutAt = Date.now();
  p.stdin!.write('send during\n');
  conns[0]!.write('DURING');
  p.stdin!.write('connect\n');
  // A negative must hold over a window: 2 s of nothing at all on either side.
  await new Promise((r) => setTimeout(r, 2000));
  t.same(received, ['before'], 'nothing the node sent during the cut arrived');
  t.same(events.filter((e) => e.at > cutAt).map((e) => e.ev), [], 'the node received nothing, saw no error, no close, and its new connection neither connected nor failed');
  t.same(serverEvents, [], 'the host side saw no error and no close: the connection is half-open');
  t.equal(conns.length, 1, 'no new connection reached the host');
  t.equal(
    execFileSync('ip', ['-n', peer.ns, '-o', 'link', 'show', 'eth0'], { encoding: 'utf8' }).includes('NO-CARRIER'),
    true,
    "the node's interface is up without carrier (its address and routes stay)",
  );

  link.heal();
  await until('what was written during the cut to arrive both ways', async () => received.join('') === 'beforeduring' && events.some((e) => e.data === 'DURING'), 20000, 20);
  const nc = await until('the pending connection to complete', async () => events.find((e) => e.ev === 'new-connected' || e.ev === 'new-error'), 20000, 20);
  t.equal(nc.ev, 'new-connected', `the connection attempted during the cut completed after the heal (${nc.ms} ms)`);
  t.ok(nc.ms! >= 2000, 'it waited through the cut (its SYN was dropped, not refused)');
  t.same(serverEvents, [], 'the first connection survived the cut');
  t.notOk(events.some((e) => e.ev === 'error' || e.ev === 'close'), 'the node saw no error on it either');
});

t.test('the forwarder carries a namespace to a loopback service; one link cut cuts that path only', async (t) => {
  const lab = await NetLab.create(t, 'fwd');
  const node = lab.node('n');
  const a = lab.link(node, 'a0');
  const b = lab.link(node, 'b0');
  // Two loopback "services" answering with their names.
  const service = async (name: string) => {
    const s = net.createServer((c) => c.end(name));
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => s.close());
    return (s.address() as net.AddressInfo).port;
  };
  const fa = await forwarder(t, a.hostAddr, { host: '127.0.0.1', port: await service('svc-a') });
  const fb = await forwarder(t, b.hostAddr, { host: '127.0.0.1', port: await service('svc-b') });
  const fetchIn = (host: string, port: number) =>
    new Promise<string>((resolve) => {
      const p = spawn(
        'ip',
        ['netns', 'exec', node.ns, process.execPath, '-e',
          `const s=require('node:net').connect(${port},'${host}');let d='';s.on('data',x=>d+=x);s.on('end',()=>{console.log(d);process.exit(0)});s.on('error',e=>{console.log('ERR '+e.code);process.exit(0)});setTimeout(()=>{console.log('TIMEOUT');process.exit(0)},1500)`],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let o = '';
      p.stdout!.on('data', (x: Buffer) => (o += x.toString()));
      p.on('exit', () => resolve(o.trim()));
    });
  t.equal(await fetchIn(a.hostAddr, fa.port), 'svc-a', 'service a through its link');
  t.equal(await fetchIn(b.hostAddr, fb.port), 'svc-b', 'service b through its link');
  t.equal(await fetchIn('127.0.0.1', fa.port), 'ERR ECONNREFUSED', "the host's loopback is not the namespace's");
  a.cut();
  t.equal(await fetchIn(a.hostAddr, fa.port), 'TIMEOUT', 'a cut path: the connection hangs (no refusal)');
  t.equal(await fetchIn(b.hostAddr, fb.port), 'svc-b', 'the other path still works');
  a.heal();
  t.equal(await fetchIn(a.hostAddr, fa.port), 'svc-a', 'healed');
  t.equal(fa.connections(), 2, `the connection tried during the cut never reached the forwarder (${fa.connections()} relayed)`);
});

let names: { ns: string[]; links: string[] } = { ns: [], links: [] };
t.test('a lab with processes inside', async (t) => {
  const lab = await NetLab.create(t, 'td');
  const n = lab.node('x');
  const l = lab.link(n, 'e0');
  lab.spawn(t, n, ['sleep', '300'], {});
  names = { ns: [lab.switchNs, n.ns], links: [l.hostIf] };
  t.ok(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(n.ns), 'the node namespace exists');
});

t.test('teardown removed it; the leftover sweep removes what a dead process left', async (t) => {
  const nsList = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const ns of names.ns) t.notOk(nsList.includes(ns), `namespace ${ns} is gone`);
  for (const l of names.links) t.throws(() => execFileSync('ip', ['link', 'show', l], { stdio: 'pipe' }), `host end ${l} is gone`);

  // What a test process killed with SIGKILL leaves: a namespace with a process still in it, a
  // host end in the root namespace. Owned by a pid that no longer exists.
  const dead = spawn('true');
  await new Promise((r) => dead.on('exit', r));
  const pid = dead.pid!;
  const ns = `gtn-${pid.toString(36)}-1-left-sw`;
  execFileSync('ip', ['netns', 'add', ns]);
  const host = `gtp-zz${pid.toString(36).slice(-4)}`.slice(0, 15);
  execFileSync('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'h1', 'netns', ns]);
  execFileSync('ip', ['link', 'set', host, 'alias', `gantry-test pid=${pid} lab=gtn-${pid.toString(36)}-1-left`]);
  const orphan = spawn('ip', ['netns', 'exec', ns, 'sleep', '300'], { stdio: 'ignore', detached: true });
  orphan.unref();
  await until('the orphan running in the namespace', async () => execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).trim() !== '', 5000, 20);
  t.teardown(() => {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      /* removed by the sweep */
    }
  });

  const removed = removeLeftovers();
  t.ok(removed.namespaces.includes(ns), 'the namespace of the dead process was removed');
  t.notOk(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(ns), 'it is gone');
  t.throws(() => execFileSync('ip', ['link', 'show', host], { stdio: 'pipe' }), 'its host end went with it');
  await until('the orphan killed', async () => orphan.exitCode !== null || orphan.signalCode !== null, 5000, 20);
  t.same(removeLeftovers(), { namespaces: [], links: [] }, 'a second sweep finds nothing (idempotent)');
});
