import dns from 'node:dns';
import type net from 'node:net';
import ipaddr from 'ipaddr.js';
import { ConfigError, GantryError } from './errors.ts';

/**
 * Where the platform may send requests on a tenant's behalf (outcome webhooks). A tenant
 * names the URL, so without a guard a webhook is a request from inside the operator's network
 * to wherever the tenant points it: the cloud metadata service, a database's admin port, the
 * control plane itself. Only public unicast addresses are reached unless the operator allows
 * more (GANTRY_WEBHOOK_ALLOW).
 *
 * The guard is applied twice: statically to the URL (checkReceiverUrl, when the API accepts it
 * and again before each send, which is what covers a literal IP host, since Node connects to
 * one without a lookup), and at connect time to every address a host name resolves to
 * (guardedLookup), so the address checked is the address connected to.
 */
export interface EgressPolicy {
  /** Networks allowed although their addresses are loopback, private, link-local or the like. */
  readonly allowCidrs: readonly [ipaddr.IPv4 | ipaddr.IPv6, number][];
  /** Host names (lower case, without a trailing dot) allowed whatever they resolve to. */
  readonly allowHosts: ReadonlySet<string>;
}

/** A connection refused by the policy: the host, the address it resolved to and why. */
export class EgressBlockedError extends GantryError {
  readonly host: string;
  readonly address: string;
  readonly reason: string;
  constructor(host: string, address: string, reason: string) {
    super('EGRESS_BLOCKED', `refused: ${host} resolves to ${address}, ${asAddress(reason)}`, { kind: 'invalid' });
    this.host = host;
    this.address = address;
    this.reason = reason;
  }
}

const VARIABLE = 'GANTRY_WEBHOOK_ALLOW';

/**
 * GANTRY_WEBHOOK_ALLOW: comma-separated CIDRs ("127.0.0.0/8", "::1/128"; a bare address is a
 * /32 or /128) and host names (matched exactly, case-insensitively) that are allowed although
 * they are loopback, private or the like. Empty or unset allows nothing extra.
 *
 * @throws ConfigError naming GANTRY_WEBHOOK_ALLOW and the entry it cannot read.
 */
export function parseEgressAllow(spec: string | undefined): EgressPolicy {
  const allowCidrs: [ipaddr.IPv4 | ipaddr.IPv6, number][] = [];
  const allowHosts = new Set<string>();
  for (const raw of (spec ?? '').split(',')) {
    const entry = raw.trim();
    if (entry === '') continue;
    const cidr = parseCidr(entry);
    if (cidr) {
      allowCidrs.push(cidr);
      continue;
    }
    const host = normaliseHost(entry);
    if (!isHostName(host)) {
      throw new ConfigError(`${VARIABLE}: ${JSON.stringify(entry)} is not a CIDR (10.0.0.0/8, fd00::/8), an IP address or a host name`);
    }
    if (/^\d+$/.test(host.slice(host.lastIndexOf('.') + 1))) {
      // URLs read a host whose last label is a number as an IPv4 address ("10.1" is 10.0.0.1),
      // so such a name could never match the host of a URL.
      throw new ConfigError(`${VARIABLE}: ${JSON.stringify(entry)} is neither a full IPv4 address (four numbers) nor a host name`);
    }
    allowHosts.add(host);
  }
  return Object.freeze({ allowCidrs: Object.freeze(allowCidrs), allowHosts });
}

/** A CIDR or a bare address as [network, prefix length]; undefined when the entry is neither. */
function parseCidr(entry: string): [ipaddr.IPv4 | ipaddr.IPv6, number] | undefined {
  const slash = entry.indexOf('/');
  const addr = slash < 0 ? entry : entry.slice(0, slash);
  const bitsText = slash < 0 ? undefined : entry.slice(slash + 1);
  let ip: ipaddr.IPv4 | ipaddr.IPv6;
  // Only the four-number form of IPv4: ipaddr.js also reads "127.1" and "0x7f.1", which an
  // operator reading the setting would not recognise.
  if (ipaddr.IPv4.isValidFourPartDecimal(addr)) ip = ipaddr.IPv4.parse(addr);
  else if (addr.includes(':') && ipaddr.IPv6.isValid(addr) && !addr.includes('%')) ip = ipaddr.IPv6.parse(addr);
  else {
    if (slash >= 0) throw new ConfigError(`${VARIABLE}: ${JSON.stringify(entry)} is not a CIDR: ${JSON.stringify(addr)} is not an IP address`);
    return undefined;
  }
  const max = ip.kind() === 'ipv4' ? 32 : 128;
  let bits = max;
  if (bitsText !== undefined) {
    if (!/^\d{1,3}$/.test(bitsText) || Number(bitsText) > max) {
      throw new ConfigError(`${VARIABLE}: ${JSON.stringify(entry)} is not a CIDR: the prefix length must be 0 to ${max}`);
    }
    bits = Number(bitsText);
  }
  // An IPv4-mapped network is stored as the IPv4 network it maps, because mapped addresses
  // are judged as their IPv4 address.
  if (ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
    return [(ip as ipaddr.IPv6).toIPv4Address(), bits - 96];
  }
  return [ip, bits];
}

function normaliseHost(host: string): string {
  const h = host.toLowerCase();
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

/** A DNS name: dot-separated labels of letters, digits, hyphens (and underscores, seen in practice). */
function isHostName(h: string): boolean {
  return h.length <= 253 && /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$/.test(h);
}

/** The cloud instance metadata services reachable from inside a VM: AWS, GCP, Azure, OpenStack; AWS over IPv6. */
const METADATA = [ipaddr.parse('169.254.169.254'), ipaddr.parse('fd00:ec2::254')];

/** Why each ipaddr.js range other than plain unicast is refused, in words for a user. */
const V4_REASONS: Readonly<Record<string, string>> = {
  unspecified: 'unspecified',
  broadcast: 'broadcast',
  multicast: 'multicast',
  linkLocal: 'link-local',
  loopback: 'loopback',
  carrierGradeNat: 'carrier-grade NAT',
  private: 'private',
  reserved: 'reserved',
};
const V6_REASONS: Readonly<Record<string, string>> = {
  unspecified: 'unspecified',
  linkLocal: 'link-local',
  multicast: 'multicast',
  loopback: 'loopback',
  uniqueLocal: 'unique-local',
  deprecatedSiteLocal: 'site-local',
  discard: 'discard-only',
  teredo: 'Teredo-tunnelled',
  '6to4': '6to4-tunnelled',
  reserved: 'reserved',
};

/** IPv6 global unicast (RFC 4291): ipaddr.js calls every address outside its special ranges unicast, IANA has assigned only these. */
const GLOBAL_UNICAST = ipaddr.parseCIDR('2000::/3');
/** The NAT64 well-known prefix (RFC 6052): a translator forwards these to the IPv4 address in their last 32 bits. */
const NAT64 = ipaddr.parseCIDR('64:ff9b::/96');

/**
 * Why an address may not be reached ('loopback', 'private', 'link-local', 'metadata',
 * 'unique-local', 'carrier-grade NAT', 'multicast', 'unspecified', 'broadcast', 'reserved',
 * 'site-local', 'discard-only', 'Teredo-tunnelled', '6to4-tunnelled', 'local-use NAT64',
 * 'special-purpose'), or undefined when it may. An address inside an allowed CIDR may.
 *
 * Fails closed: a range ipaddr.js knows and this module does not name is 'special-purpose',
 * and a string that is not an IP address is refused.
 */
export function blockedReason(address: string, policy: EgressPolicy): string | undefined {
  let ip: ipaddr.IPv4 | ipaddr.IPv6;
  if (ipaddr.IPv4.isValidFourPartDecimal(address)) ip = ipaddr.IPv4.parse(address);
  else if (address.includes(':') && ipaddr.IPv6.isValid(address)) ip = ipaddr.IPv6.parse(address);
  else return 'not an IP address';
  return judge(ip, policy);
}

function judge(addr: ipaddr.IPv4 | ipaddr.IPv6, policy: EgressPolicy): string | undefined {
  // A mapped address (::ffff:127.0.0.1) reaches the IPv4 address on a dual-stack socket.
  const ip = addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() ? (addr as ipaddr.IPv6).toIPv4Address() : addr;
  if (policy.allowCidrs.some(([net, bits]) => net.kind() === ip.kind() && ip.match(net, bits))) return undefined;
  if (METADATA.some((m) => m.kind() === ip.kind() && ip.match(m, ip.kind() === 'ipv4' ? 32 : 128))) return 'metadata';
  const range: string = ip.range();
  if (ip.kind() === 'ipv4') return range === 'unicast' ? undefined : (V4_REASONS[range] ?? 'special-purpose');
  const v6 = ip as ipaddr.IPv6;
  if (range === 'unicast') return v6.match(GLOBAL_UNICAST) ? undefined : 'reserved';
  if (range === 'rfc6052') {
    // On an IPv6-only network DNS64 answers every IPv4-only host with a NAT64 address, so
    // these must work; they are as reachable as the IPv4 address they carry.
    if (!v6.match(NAT64)) return 'local-use NAT64';
    const b = v6.toByteArray();
    return judge(new ipaddr.IPv4(b.slice(12)), policy);
  }
  return V6_REASONS[range] ?? 'special-purpose';
}

/** "the address X is <this>": the reason as a predicate. */
function isReason(reason: string): string {
  return reason === 'metadata' ? 'the cloud metadata service' : reason;
}

/** The reason as a noun phrase: "a loopback address". */
function asAddress(reason: string): string {
  if (reason === 'metadata') return 'the cloud metadata service';
  if (reason === 'not an IP address') return 'not an IP address';
  return `${/^[aeiou]/i.test(reason) ? 'an' : 'a'} ${reason} address`;
}

const MAX_URL = 2048;

/**
 * Static check of a receiver URL given by a tenant, done when the API accepts it and again
 * before each send (the policy may have changed, and Node connects to a literal IP host
 * without a lookup, so guardedLookup never sees it): http or https only; no user:password@;
 * at most 2048 characters; a literal IP host must not be blocked unless the host is
 * allow-listed. A host name passes here: what it resolves to is judged at connect time.
 *
 * @returns the parsed URL, or the reason in words a user can act on.
 */
export function checkReceiverUrl(raw: string, policy: EgressPolicy): { ok: true; url: URL } | { ok: false; reason: string } {
  if (raw.length > MAX_URL) return { ok: false, reason: `the URL is longer than ${MAX_URL} characters` };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, reason: 'this is not a URL (it must look like https://hooks.example.com/gantry)' };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return { ok: false, reason: 'only http and https URLs are accepted' };
  if (url.username !== '' || url.password !== '') {
    return { ok: false, reason: 'a user name or password in the URL is not accepted; the receiver authenticates deliveries by their signature' };
  }
  if (url.hostname === '') return { ok: false, reason: 'the URL has no host' };
  const host = normaliseHost(url.hostname);
  if (policy.allowHosts.has(host)) return { ok: true, url };
  // The URL parser has already turned every IPv4 spelling ("0x7f.1", "2130706433") into the
  // four-number form, and writes IPv6 in brackets.
  const literal = host.startsWith('[') ? host.slice(1, -1) : ipaddr.IPv4.isValidFourPartDecimal(host) ? host : undefined;
  if (literal !== undefined) {
    const reason = blockedReason(literal, policy);
    if (reason) return { ok: false, reason: `the address ${literal} is ${isReason(reason)}; webhooks go only to public addresses` };
  }
  return { ok: true, url };
}

/** dns.lookup asked for every address. */
export type Resolver = (
  hostname: string,
  options: dns.LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]) => void,
) => void;

/**
 * A `lookup` for http.request and https.request: resolves with dns.lookup (every address),
 * refuses the connection with an EgressBlockedError (code 'EGRESS_BLOCKED') when any address
 * is blocked, and otherwise hands Node the addresses it checked, so the connection goes to
 * a checked address and a DNS answer that changes between the check and the connect
 * (rebinding) cannot slip through. Refusing on any blocked address, rather than connecting to
 * a good one, keeps a name that mixes public and private addresses from reaching the private
 * one through Node's fallback to the next address.
 *
 * Honours `options.all`: Node 20 asks for every address when it races IPv4 and IPv6
 * (autoSelectFamily). `resolve` is dns.lookup except in tests.
 */
export function guardedLookup(policy: EgressPolicy, resolve: Resolver = dns.lookup): net.LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) {
        callback(err, '');
        return;
      }
      const first = addresses[0];
      if (!first) {
        callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND', hostname }), '');
        return;
      }
      if (!policy.allowHosts.has(normaliseHost(hostname))) {
        for (const a of addresses) {
          const reason = blockedReason(a.address, policy);
          if (reason) {
            callback(new EgressBlockedError(hostname, a.address, reason), '');
            return;
          }
        }
      }
      if (options.all) callback(null, addresses);
      else callback(null, first.address, first.family);
    });
  };
}
