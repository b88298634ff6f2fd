/**
 * The egress guard (lib/egress.ts): which addresses a webhook may reach, the operator's
 * allow-list, the static URL check, and the connect-time lookup, proven with real requests to
 * a real loopback server that counts what reaches it.
 */
import dns from 'node:dns';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import t, { type Test } from 'tap';
import { blockedReason, checkReceiverUrl, EgressBlockedError, guardedLookup, parseEgressAllow, type Resolver } from '../../../lib/egress.ts';
import { ConfigError } from '../../../lib/errors.ts';

const none = parseEgressAllow(undefined);

t.test('IPv4: only public unicast; every other range named', async (t) => {
  const cases: [string, string | undefined][] = [
    ['8.8.8.8', undefined],
    ['1.1.1.1', undefined],
    ['172.32.0.1', undefined],
    ['100.128.0.1', undefined],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.0.0.5', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.1.1', 'link-local'],
    ['169.254.169.254', 'metadata'],
    ['100.64.0.1', 'carrier-grade NAT'],
    ['100.100.100.200', 'carrier-grade NAT'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['255.255.255.255', 'broadcast'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['192.0.0.8', 'reserved'],
    ['192.0.2.1', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['198.51.100.1', 'reserved'],
    ['203.0.113.1', 'reserved'],
    ['192.88.99.1', 'reserved'],
    ['240.0.0.1', 'reserved'],
    ['192.175.48.1', 'special-purpose'],
    ['192.52.193.1', 'special-purpose'],
  ];
  for (const [a, reason] of cases) t.equal(blockedReason(a, none), reason, a);
});

t.test('IPv6: only global unicast; mapped and NAT64 addresses judged as their IPv4', async (t) => {
  const cases: [string, string | undefined][] = [
    ['2606:4700:4700::1111', undefined],
    ['2001:4860:4860::8888', undefined],
    ['2a00:1450:4001:80e::200e', undefined],
    ['::1', 'loopback'],
    ['::', 'unspecified'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['fd00:ec2::254', 'metadata'],
    ['ff02::1', 'multicast'],
    ['ff0e::1', 'multicast'],
    ['fec0::1', 'site-local'],
    ['100::1', 'discard-only'],
    ['2001:db8::1', 'reserved'],
    ['3fff::1', 'reserved'],
    ['2001::1', 'Teredo-tunnelled'],
    ['2002:7f00:1::', '6to4-tunnelled'],
    ['2001:2::1', 'special-purpose'],
    ['4000::1', 'reserved'], // outside 2000::/3: not assigned as global unicast
    ['::7f00:1', 'reserved'], // IPv4-compatible (deprecated); a sit tunnel would carry it to 127.0.0.1
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:10.0.0.1', 'private'],
    ['::ffff:169.254.169.254', 'metadata'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['::ffff:8.8.8.8', undefined],
    ['64:ff9b::808:808', undefined],
    ['64:ff9b::7f00:1', 'loopback'],
    ['64:ff9b::a9fe:a9fe', 'metadata'],
    ['64:ff9b::10.1.2.3', 'private'],
    ['64:ff9b:1::1', 'local-use NAT64'],
  ];
  for (const [a, reason] of cases) t.equal(blockedReason(a, none), reason, a);
});

t.test('what is not an IP address is refused', async (t) => {
  for (const a of ['localhost', '127.1', '0x7f.0.0.1', '2130706433', '', '1.2.3.4.5', '[::1]']) t.equal(blockedReason(a, none), 'not an IP address', JSON.stringify(a));
});

t.test('the allow-list: CIDRs, bare addresses, host names', async (t) => {
  for (const empty of [undefined, '', ' , ,']) {
    const p = parseEgressAllow(empty);
    t.same([p.allowCidrs.length, p.allowHosts.size], [0, 0], JSON.stringify(empty));
  }
  const p = parseEgressAllow(' 127.0.0.0/8, ::1/128 ,10.1.2.3,Hooks.Internal., ::ffff:192.168.0.0/112, fd00::/8');
  t.same([...p.allowHosts], ['hooks.internal'], 'host names lower-cased, without the trailing dot');
  t.same(p.allowCidrs.map(([ip, bits]) => `${ip.toString()}/${bits}`), ['127.0.0.0/8', '::1/128', '10.1.2.3/32', '192.168.0.0/16', 'fd00::/8'], 'a mapped network is kept as its IPv4 network');
  for (const a of ['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.1', '10.1.2.3', '192.168.7.7', '::ffff:192.168.7.7', 'fd12::1', '64:ff9b::7f00:1']) {
    t.equal(blockedReason(a, p), undefined, `${a} allowed`);
  }
  t.equal(blockedReason('10.1.2.4', p), 'private', 'only the /32 given');
  t.equal(blockedReason('fc00::1', p), 'unique-local', 'fc00::/8 is not in fd00::/8');
  t.equal(blockedReason('169.254.169.254', p), 'metadata', 'the metadata service only when its own network is allowed');
  t.equal(blockedReason('169.254.169.254', parseEgressAllow('169.254.0.0/16')), undefined);
  t.ok(Object.isFrozen(p) && Object.isFrozen(p.allowCidrs), 'frozen');

  const bad = ['foo bar', 'http://hooks.internal', '10.0.0.0/33', '10.0.0/8', '::1/129', '::1/-1', '10.0.0.0/', '10.1', '127.1', 'a..b', '-x.example', 'host_name:80', 'fe80::1%eth0'];
  for (const entry of bad) {
    t.throws(() => parseEgressAllow(`127.0.0.0/8,${entry}`), ConfigError, entry);
    try {
      parseEgressAllow(entry);
    } catch (err) {
      t.match((err as Error).message, /^GANTRY_WEBHOOK_ALLOW: /, `${entry}: names the variable`);
      t.ok((err as Error).message.includes(JSON.stringify(entry.trim())), `${entry}: names the entry`);
    }
  }
});

t.test('receiver URLs', async (t) => {
  const ok = (raw: string, policy = none) => {
    const r = checkReceiverUrl(raw, policy);
    t.ok(r.ok, `${raw} accepted`);
  };
  const refused = (raw: string, reason: string | RegExp, policy = none) => {
    const r = checkReceiverUrl(raw, policy);
    t.notOk(r.ok, `${raw.slice(0, 60)} refused`);
    if (!r.ok) t.match(r.reason, reason, raw.slice(0, 60));
  };
  ok('https://hooks.example.com/gantry?token=x');
  ok('http://hooks.example.com:8080/');
  ok('HTTPS://Hooks.Example.COM/');
  ok('http://[2606:4700::1111]/hook');
  ok('http://8.8.8.8/hook');
  ok('http://localhost:8080/', none); // a host name: what it resolves to is judged at connect time
  for (const raw of ['ftp://example.com/', 'file:///etc/passwd', 'gopher://example.com/', 'javascript:alert(1)', 'ws://example.com/', 'data:text/plain,x']) {
    refused(raw, 'only http and https URLs are accepted');
  }
  for (const raw of ['not a url', '', '/relative/path', 'http://']) refused(raw, /^this is not a URL/);
  for (const raw of ['https://user:pw@example.com/', 'https://user@example.com/', 'https://:pw@example.com/']) refused(raw, /^a user name or password in the URL is not accepted/);
  const base = 'https://example.com/';
  ok(base + 'a'.repeat(2048 - base.length));
  refused(base + 'a'.repeat(2049 - base.length), 'the URL is longer than 2048 characters');
  refused('http://10.0.0.5/hook', 'the address 10.0.0.5 is private; webhooks go only to public addresses');
  refused('http://127.0.0.1:9000/', 'the address 127.0.0.1 is loopback; webhooks go only to public addresses');
  refused('http://0x7f.1/', 'the address 127.0.0.1 is loopback'); // the URL parser's IPv4 forms
  refused('http://2130706433/', 'the address 127.0.0.1 is loopback');
  refused('http://169.254.169.254/latest/meta-data/', 'the address 169.254.169.254 is the cloud metadata service; webhooks go only to public addresses');
  refused('http://[::1]:8080/', 'the address ::1 is loopback; webhooks go only to public addresses');
  refused('http://[::ffff:127.0.0.1]/', 'the address ::ffff:7f00:1 is loopback');
  refused('http://[fd00:ec2::254]/', 'the address fd00:ec2::254 is the cloud metadata service');
  refused('http://[fe80::1]/', 'the address fe80::1 is link-local');
  refused('http://100.64.0.1/', 'the address 100.64.0.1 is carrier-grade NAT');

  const allow = parseEgressAllow('10.0.0.0/8,::1/128');
  ok('http://10.0.0.5/hook', allow);
  ok('http://[::1]:8080/', allow);
  refused('http://192.168.0.1/', 'is private', allow);
});

/** A resolver answering from a table, recording the options it was asked with. */
function fakeResolver(table: Record<string, dns.LookupAddress[]>, asked: dns.LookupAllOptions[] = []): Resolver {
  return (hostname, options, callback) => {
    asked.push(options);
    const found = table[hostname];
    setImmediate(() => {
      if (found) callback(null, found);
      else callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), []);
    });
  };
}

/** Calls a LookupFunction; the error or what it answered. */
function lookupWith(fn: ReturnType<typeof guardedLookup>, host: string, options: dns.LookupOptions) {
  return new Promise<{ err: NodeJS.ErrnoException | null; address: string | dns.LookupAddress[]; family?: number }>((resolve) => {
    fn(host, options, (err, address, family) => resolve({ err, address, family }));
  });
}

t.test('guardedLookup: refuses when any address is blocked; answers as Node asked', async (t) => {
  const asked: dns.LookupAllOptions[] = [];
  const resolve = fakeResolver(
    {
      'public.test': [{ address: '8.8.8.8', family: 4 }, { address: '2606:4700::1111', family: 6 }],
      'mixed.test': [{ address: '8.8.8.8', family: 4 }, { address: '10.0.0.1', family: 4 }],
      'MIXED.test.': [{ address: '10.0.0.1', family: 4 }],
      'mapped.test': [{ address: '::ffff:127.0.0.1', family: 6 }],
      'empty.test': [],
    },
    asked,
  );
  const lookup = guardedLookup(none, resolve);

  const one = await lookupWith(lookup, 'public.test', { family: 0 });
  t.same([one.err, one.address, one.family], [null, '8.8.8.8', 4], 'all: false gets the first address and its family');
  const all = await lookupWith(lookup, 'public.test', { all: true, family: 0 });
  t.same([all.err, all.address], [null, [{ address: '8.8.8.8', family: 4 }, { address: '2606:4700::1111', family: 6 }]], 'all: true gets every address');
  await lookupWith(lookup, 'public.test', { family: 6, hints: dns.ADDRCONFIG });
  t.same(asked.map((o) => o.all), [true, true, true], 'always resolves every address');
  t.same([asked[2]?.family, asked[2]?.hints], [6, dns.ADDRCONFIG], 'the family and hints Node asks for are passed on');

  const mixed = await lookupWith(lookup, 'mixed.test', { all: true });
  t.ok(mixed.err instanceof EgressBlockedError, 'a name with one private address among public ones is refused');
  t.equal(mixed.err?.code, 'EGRESS_BLOCKED');
  t.equal(mixed.err?.message, 'refused: mixed.test resolves to 10.0.0.1, a private address');
  t.same([(mixed.err as EgressBlockedError).host, (mixed.err as EgressBlockedError).address, (mixed.err as EgressBlockedError).reason], ['mixed.test', '10.0.0.1', 'private']);
  t.equal((await lookupWith(lookup, 'mapped.test', {})).err?.message, 'refused: mapped.test resolves to ::ffff:127.0.0.1, a loopback address');

  t.equal((await lookupWith(lookup, 'nowhere.test', {})).err?.code, 'ENOTFOUND', 'a lookup error is passed on');
  t.equal((await lookupWith(lookup, 'empty.test', {})).err?.code, 'ENOTFOUND', 'no address is no host');

  const byHost = guardedLookup(parseEgressAllow('Mixed.Test'), resolve);
  t.equal((await lookupWith(byHost, 'mixed.test', { all: true })).err, null, 'an allowed host name reaches whatever it resolves to');
  t.equal((await lookupWith(byHost, 'MIXED.test.', {})).err, null, 'matched without case or the trailing dot');
  const byCidr = guardedLookup(parseEgressAllow('10.0.0.0/24'), resolve);
  t.equal((await lookupWith(byCidr, 'mixed.test', { all: true })).err, null, 'an address in an allowed network passes');
});

/** A server on every local IPv4 address, counting the requests that reach it. */
async function countingServer(t: Test): Promise<{ port: number; count: () => number }> {
  let n = 0;
  const server = http.createServer((req, res) => {
    n++;
    req.resume();
    res.end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, count: () => n };
}

/**
 * GETs http://host:port/ with the guard; the status, or the error. With autoSelectFamily Node
 * races every address the name has (it asks the lookup for all of them); without it, it asks
 * for one IPv4 address.
 */
function get(host: string, port: number, lookup: ReturnType<typeof guardedLookup>, autoSelectFamily: boolean) {
  return new Promise<{ status?: number; err?: NodeJS.ErrnoException }>((resolve) => {
    // autoSelectFamily is an option of net.connect that http.request passes on; @types/node 20 leaves it out of RequestOptions.
    const options = { host, port, path: '/', agent: false, lookup, autoSelectFamily, ...(autoSelectFamily ? {} : { family: 4 }) } as http.RequestOptions;
    const req = http.request(options, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode }));
    });
    req.on('error', (err) => resolve({ err }));
    req.end();
  });
}

/** A guardedLookup that records whether Node asked it for every address. */
function spied(policy: ReturnType<typeof parseEgressAllow>, calls: (boolean | undefined)[]): ReturnType<typeof guardedLookup> {
  const inner = guardedLookup(policy);
  return (host, options, callback) => {
    calls.push(options.all);
    inner(host, options, callback);
  };
}

t.test('a real request to localhost is refused before it connects, and goes through when allowed', async (t) => {
  const server = await countingServer(t);
  const resolved = await dns.promises.lookup('localhost', { all: true });
  t.ok(resolved.length > 0 && resolved.every((a) => blockedReason(a.address, none) === 'loopback'), `localhost resolves to loopback (${resolved.map((a) => a.address).join(', ')})`);

  for (const autoSelectFamily of [true, false]) {
    const calls: (boolean | undefined)[] = [];
    const refused = await get('localhost', server.port, spied(none, calls), autoSelectFamily);
    const first = autoSelectFamily ? resolved[0]! : resolved.find((a) => a.family === 4)!;
    t.equal(refused.err?.code, 'EGRESS_BLOCKED', `autoSelectFamily ${autoSelectFamily}: refused`);
    t.equal(refused.err?.message, `refused: localhost resolves to ${first.address}, a loopback address`);
    t.same(calls, [autoSelectFamily ? true : undefined], `autoSelectFamily ${autoSelectFamily}: Node asked for ${autoSelectFamily ? 'every address' : 'one address'}`);
  }
  t.equal(server.count(), 0, 'the refused requests never reached the server');

  for (const allow of ['localhost', '127.0.0.0/8,::1/128']) {
    for (const autoSelectFamily of [true, false]) {
      const r = await get('localhost', server.port, guardedLookup(parseEgressAllow(allow)), autoSelectFamily);
      t.equal(r.status, 200, `allowed by ${allow} (autoSelectFamily ${autoSelectFamily})`);
    }
  }
  t.equal(server.count(), 4, 'the allowed requests reached it');
});

t.test("the machine's own host name is judged by what it resolves to", async (t) => {
  const server = await countingServer(t);
  const name = os.hostname();
  const resolved = await dns.promises.lookup(name, { all: true }).catch((err: NodeJS.ErrnoException) => err);
  if (resolved instanceof Error) {
    // Not every machine can resolve its own name; the lookup's error then reaches the caller.
    const r = await get(name, server.port, guardedLookup(none), true);
    t.equal(r.err?.code, resolved.code, `${name} does not resolve here (${resolved.code}): the error is passed on`);
    return;
  }
  const addresses = resolved.map((a) => a.address);
  t.comment(`${name} resolves to ${addresses.join(', ')}`);
  const blocked = addresses.map((address) => ({ address, reason: blockedReason(address, none) })).find((b) => b.reason !== undefined);
  if (blocked?.reason === undefined) {
    // A machine whose name resolves to a public address: the guard lets it through.
    t.equal((await lookupWith(guardedLookup(none), name, { all: true })).err, null, `${name} resolves only to public addresses`);
    return;
  }
  // On Debian /etc/hosts maps it to 127.0.1.1; in containers often to 127.0.0.1 or a private address.
  const refused = await get(name, server.port, guardedLookup(none), true);
  t.equal(refused.err?.code, 'EGRESS_BLOCKED');
  t.equal(refused.err?.message, `refused: ${name} resolves to ${blocked.address}, a${/^[aeiou]/.test(blocked.reason) ? 'n' : ''} ${blocked.reason} address`);
  t.equal(server.count(), 0, 'never reached the server');
  const allowed = await get(name, server.port, guardedLookup(parseEgressAllow(name)), true);
  t.equal(allowed.status, 200, `allowed when ${name} is in the list`);
  t.equal(server.count(), 1);
});
