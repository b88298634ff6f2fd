/**
 * A fuzzer of the REST API driven by its OpenAPI document (control-plane/http/schema/, served
 * at /2/openapi.json). Every operation of the document is exercised with requests derived
 * from its schemas — valid values, wrong types, missing and extra fields, boundary values,
 * text PostgreSQL cannot store, raw invalid UTF-8, deep nesting, oversized and broken
 * bodies (JSON, multipart, zip), odd query encodings, odd headers and methods — and every
 * reply is judged by one oracle:
 *
 * - no 5xx, a reply at all (the process is up), within 5 s;
 * - every error reply is JSON, exactly `{"msg": <non-empty string>}`;
 * - the reply conforms to the document (test/helpers/contract.ts);
 * - a rejected request (4xx), or any GET, changes no stored row (checked by a RowOracle:
 *   content fingerprints in-process, a trigger-kept change log against a child process).
 *
 * Randomness comes from fast-check's `fc.gen()`, so a run is fixed by its seed and a failing
 * request is replayed with fast-check's seed and path. Shared by
 * test/control-plane/integration/api.fuzz.test.ts (in-process, both engines) and bench/fuzz.ts (a real
 * `gantry start` child, 100,000 requests and more).
 */
import { isUtf8 } from 'node:buffer';
import http from 'node:http';
import net from 'node:net';
import fc, { type GeneratorValue } from 'fast-check';
import { openApiDocument } from '../../control-plane/http/schema/openapi.ts';
import { contractProblem } from './contract.ts';
import { makeZip, type ZipItem } from './zip.ts';

type Json = Record<string, any>;

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// ---------------------------------------------------------------------------- limits

/** The limits the fuzzed control plane runs with: small, so that oversized inputs are cheap. */
export interface FuzzLimits {
  /** GANTRY_MAX_JSON_BODY (cluster bodies: the same, below their own 256 KiB cap). */
  maxJsonBody: number;
  /** GANTRY_MAX_UPLOAD_BYTES. */
  maxUploadBytes: number;
  /** The webhook payload limit (schema/tasks.ts MAX_PAYLOAD). */
  maxPayload: number;
  /** GANTRY_MAX_ZIP_ENTRIES. */
  maxZipEntries: number;
}

export const FUZZ_LIMITS: Readonly<FuzzLimits> = Object.freeze({ maxJsonBody: 65536, maxUploadBytes: 65536, maxPayload: 65536, maxZipEntries: 64 });

/** The environment that gives a control plane FUZZ_LIMITS (the smallest the config allows). */
export const FUZZ_ENV: Readonly<Record<string, string>> = Object.freeze({
  // Cluster secrets need a key, as every real start has (the embedded start makes a key file).
  GANTRY_SECRET_KEYS: `fuzz:${Buffer.alloc(32, 7).toString('base64')}`,
  GANTRY_MAX_JSON_BODY: String(FUZZ_LIMITS.maxJsonBody),
  GANTRY_MAX_UPLOAD_BYTES: String(FUZZ_LIMITS.maxUploadBytes),
  GANTRY_MAX_ZIP_ENTRIES: String(FUZZ_LIMITS.maxZipEntries),
  GANTRY_MAX_ZIP_UNPACKED_BYTES: String(MiB),
  // A followed log (follow=1, Server-Sent Events) of a task that never ends here closes
  // after a second, as every follow does at its limit: well within MAX_REPLY_MS.
  GANTRY_LOG_FOLLOW_MAX_S: '1',
});

/** The oracle's bound on one reply. */
export const MAX_REPLY_MS = 5000;
/** How long the transport waits before it calls a request unanswered (a hang costs this, not more). */
const GIVE_UP_MS = MAX_REPLY_MS + 1000;

// ---------------------------------------------------------------------------- operations

/** How an operation takes its body, by the document. */
export type BodySpec = { kind: 'json'; schema: Json } | { kind: 'multipart'; data: Json } | { kind: 'raw' };

/** One operation of the OpenAPI document, in the form the generators need. */
export interface Operation {
  readonly id: string;
  /** Upper case. */
  readonly method: string;
  /** As the document writes it: `/2/projects/{projectId}/codes`. */
  readonly path: string;
  readonly params: readonly string[];
  readonly query: { readonly props: Readonly<Record<string, Json>>; readonly required: readonly string[] };
  readonly body?: BodySpec;
  /** The operation needs a token. */
  readonly auth: boolean;
  /** Statuses the document declares. */
  readonly statuses: readonly number[];
}

/** Every operation of the document (default: the one the control plane serves). */
export function documentOperations(doc: Json = openApiDocument()): Operation[] {
  const out: Operation[] = [];
  for (const [path, ops] of Object.entries(doc.paths as Json)) {
    for (const [method, op] of Object.entries(ops as Json)) {
      const params = (op.parameters ?? []) as Json[];
      const props: Record<string, Json> = {};
      const required: string[] = [];
      for (const p of params) {
        if (p.in !== 'query') continue;
        props[p.name] = p.schema;
        if (p.required) required.push(p.name);
      }
      const content = (op.requestBody?.content ?? {}) as Json;
      let body: BodySpec | undefined;
      if (content['application/json']) body = { kind: 'json', schema: content['application/json'].schema };
      else if (content['multipart/form-data']) body = { kind: 'multipart', data: content['multipart/form-data'].schema.properties.data };
      else if (content['*/*']) body = { kind: 'raw' };
      out.push({
        id: op.operationId,
        method: method.toUpperCase(),
        path,
        params: params.filter((p) => p.in === 'path').map((p) => p.name as string),
        query: { props, required },
        ...(body ? { body } : {}),
        auth: ((op.security ?? []) as unknown[]).length > 0,
        statuses: Object.keys(op.responses ?? {}).filter((k) => /^\d{3}$/.test(k)).map(Number),
      });
    }
  }
  return out;
}

/** Requests to no operation of the document: unknown paths, odd targets. */
export const UNROUTED: Operation = Object.freeze({ id: 'unrouted', method: 'GET', path: '/2/unrouted', params: [], query: { props: {}, required: [] }, auth: false, statuses: [] });

const isSafe = (method: string) => method === 'GET' || method === 'HEAD' || method === 'OPTIONS';

// ---------------------------------------------------------------------------- randomness

/** Deterministic bytes from a seed (mulberry32): fast for the large inputs fast-check would build slowly. */
function prngBytes(seed: number, n: number): Buffer {
  const out = Buffer.alloc(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) & 0xff;
  }
  return out;
}

const stringArbs = new Map<string, fc.Arbitrary<string>>();
const choiceArbs = new Map<number, fc.Arbitrary<number>>();

/** Draws from fast-check's `fc.gen()`: every value is part of the run's seed and path. */
export class Draw {
  constructor(private readonly g: GeneratorValue) {}

  /** An integer in [min, max]; ranges past 32 bits are drawn in two parts. */
  int(min: number, max: number): number {
    if (max <= min) return min;
    if (min >= -(2 ** 31) && max <= 2 ** 31 - 1) return this.g(fc.integer, { min, max });
    const span = max - min;
    const hi = this.g(fc.integer, { min: 0, max: Math.min(2 ** 31 - 1, Math.floor(span / 2 ** 30)) });
    const lo = this.g(fc.integer, { min: 0, max: 2 ** 30 - 1 });
    return Math.min(max, min + hi * 2 ** 30 + lo);
  }

  /**
   * An index below `n`, uniformly: fast-check leans integers towards their bounds, which
   * suits values (boundaries find faults) but would skew every choice towards its first and
   * last options.
   */
  index(n: number): number {
    let arb = choiceArbs.get(n);
    if (!arb) {
      arb = fc.noBias(fc.integer({ min: 0, max: n - 1 }));
      choiceArbs.set(n, arb);
    }
    return this.g(() => arb);
  }

  chance(p: number): boolean {
    return this.index(10000) < p * 10000;
  }

  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('pick from an empty list');
    return xs[this.index(xs.length)]!;
  }

  /** One of `xs` by weight. */
  weighted<T>(xs: readonly (readonly [number, T])[]): T {
    const total = xs.reduce((s, [w]) => s + w, 0);
    let at = this.index(total);
    for (const [w, x] of xs) {
      if (at < w) return x;
      at -= w;
    }
    return xs[xs.length - 1]![1];
  }

  /** A value of any fast-check arbitrary. */
  of<T>(arb: fc.Arbitrary<T>): T {
    return this.g(() => arb);
  }

  /** `n` random bytes. */
  bytes(n: number): Buffer {
    return prngBytes(this.int(0, 2 ** 31 - 1), n);
  }

  /** Printable text of up to `max` characters, ASCII or any Unicode. */
  text(max: number, unicode = this.chance(0.3)): string {
    const key = `${unicode}:${max}`;
    let arb = stringArbs.get(key);
    if (!arb) {
      arb = fc.string({ maxLength: max, unit: unicode ? 'grapheme' : 'grapheme-ascii' });
      stringArbs.set(key, arb);
    }
    return this.of(arb);
  }

  /** A string matching `pattern` (Ajv's syntax, which fast-check reads), or undefined when it cannot. */
  matching(pattern: string, maxLength: number): string | undefined {
    const key = `${pattern}\u0000${maxLength}`;
    let arb = stringArbs.get(key);
    if (!arb) {
      try {
        arb = fc.stringMatching(new RegExp(pattern), { maxLength, size: 'small' });
      } catch {
        return undefined;
      }
      stringArbs.set(key, arb);
    }
    return this.of(arb);
  }
}

// ---------------------------------------------------------------------------- the world

/** A user of the API: their id, a project of theirs and a token. */
export interface Identity {
  userId: string;
  projectId: string;
  token: string;
}

interface Resource {
  id: string;
  name: string;
  live: boolean;
}

/** Users, tokens and the resources the fuzzer made (learnt from accepted replies): what path parameters and names are drawn from. */
export class World {
  /** Tasks with executions, as the test made them (no runner takes part): what execution paths name. */
  readonly executed: string[] = [];
  readonly codes: Resource[] = [];
  readonly tasks: Resource[] = [];
  readonly schedules: Resource[] = [];
  readonly clusters: Resource[] = [];
  /** Requeue-jobs calls that requeued something (their requeue_id pages their tasks). */
  readonly requeues: Resource[] = [];
  /** The other user's resources: every path naming them must answer 404 (or 403). */
  readonly foreign: { codeId: string; codeName: string; taskId: string; scheduleId: string; clusterId: string; clusterName: string } = {
    codeId: '',
    codeName: '',
    taskId: '',
    scheduleId: '',
    clusterId: '',
    clusterName: '',
  };

  constructor(
    readonly me: Identity,
    readonly other: Identity,
    /** A token of `me`, revoked. */
    readonly revokedToken: string,
  ) {}

  liveCodes(): Resource[] {
    return this.codes.filter((c) => c.live);
  }

  liveClusters(): Resource[] {
    return this.clusters.filter((c) => c.live);
  }

  /** An id of the kind the path parameter names, of a resource that exists (when one does). */
  realParam(name: string, d: Draw): string {
    const pool = (xs: Resource[], fallback: Resource[]) => (xs.length > 0 ? d.pick(xs).id : fallback.length > 0 ? d.pick(fallback).id : '0'.repeat(24));
    switch (name) {
      case 'projectId':
        return this.me.projectId;
      case 'codeId':
        return pool(this.liveCodes(), this.codes);
      case 'taskId':
        return pool(this.tasks, []);
      case 'scheduleId':
        return pool(this.schedules, []);
      case 'clusterId':
        return pool(this.liveClusters(), this.clusters);
      case 'number':
        // An execution's number: the world's first tasks have one or two (api.fuzz.test.ts).
        return d.pick(['1', '1', '2']);
      case 'requeueId':
        return pool(this.requeues, []);
      default:
        return 'x';
    }
  }

  /** A deleted resource's id (or a real one when nothing was deleted yet). */
  staleParam(name: string, d: Draw): string {
    const dead = (name === 'codeId' ? this.codes : name === 'clusterId' ? this.clusters : []).filter((c) => !c.live);
    return dead.length > 0 ? d.pick(dead).id : this.realParam(name, d);
  }

  foreignParam(name: string): string {
    const f = this.foreign;
    return { projectId: this.other.projectId, codeId: f.codeId, taskId: f.taskId, scheduleId: f.scheduleId, clusterId: f.clusterId }[name] ?? this.other.projectId;
  }

  /** Learns the resources an accepted reply made or removed. */
  learn(op: Operation, req: WireRequest, reply: WireReply): void {
    // Only the operation itself, as `me`: a wrong verb that happens to succeed (GET on a
    // code's path is getCode) did not delete anything.
    if (reply.status !== 200 || req.actor !== 'me' || req.op !== op.id || req.method !== op.method) return;
    let body: Json;
    try {
      body = JSON.parse(reply.body.toString('utf8')) as Json;
    } catch {
      return;
    }
    const add = (xs: Resource[], id: unknown, name = '', max = 200) => {
      if (typeof id !== 'string') return;
      const at = xs.findIndex((x) => x.id === id);
      if (at >= 0) xs[at] = { id, name: name || xs[at]!.name, live: true };
      else xs.push({ id, name, live: true });
      if (xs.length > max) xs.splice(0, xs.length - max);
    };
    const kill = (xs: Resource[], id: string | undefined) => {
      for (const x of xs) if (x.id === id) x.live = false;
    };
    switch (op.id) {
      case 'uploadCode':
        add(this.codes, body.id, body.name, 1000);
        break;
      case 'deleteCode':
        kill(this.codes, req.params.codeId);
        break;
      case 'queueTasks':
      case 'retryTask':
        for (const t of (body.tasks ?? []) as Json[]) add(this.tasks, t.id, '', 64);
        break;
      case 'queueTaskWebhook':
        add(this.tasks, body.id, '', 64);
        break;
      case 'createSchedules':
        for (const s of (body.schedules ?? []) as Json[]) add(this.schedules, s.id, '', 64);
        break;
      case 'createCluster':
        add(this.clusters, body.id, body.cluster?.name, 1000);
        break;
      case 'updateCluster':
        add(this.clusters, body.cluster?.id, body.cluster?.name, 1000);
        break;
      case 'deleteCluster':
        kill(this.clusters, req.params.clusterId);
        break;
      case 'requeueJobs':
        if (Number(body.count) > 0) add(this.requeues, body.requeue_id, '', 64);
        for (const t of (body.results ?? []) as Json[]) add(this.tasks, t.id, '', 64);
        break;
    }
  }
}

// ---------------------------------------------------------------------------- requests and replies

/** One request as it goes on the wire. */
export interface WireRequest {
  /** The operation it was made for (`unrouted` for none), and what kind of input it is. */
  op: string;
  kind: string;
  /** Whose token it carries. */
  actor: 'me' | 'other' | 'none';
  /** Path parameters as sent (for learning from the reply). */
  params: Record<string, string>;
  method: string;
  /** Path and query, as sent (percent-encoding included). */
  target: string;
  /** Values are latin1: every byte 0–255 can be sent. */
  headers: [string, string][];
  body: Buffer;
  /** Send over a raw socket: bytes node:http refuses or normalises (duplicate headers, control characters, a cut body, odd request lines). */
  raw?: boolean;
  /** Raw only: the request line's version (default HTTP/1.1). */
  version?: string;
  /** Raw only: send no Host header. */
  noHost?: boolean;
  /** Raw only: half-close the connection after the body (which is shorter than its Content-Length). */
  cutShort?: boolean;
  /** Send the body chunked (no Content-Length). */
  chunked?: boolean;
  /** The JSON it carries (the body, or the upload's `data` part) is not UTF-8: it must be refused. */
  notUtf8?: boolean;
  /** It needs a token and carries none that is valid: it must be refused. */
  unauthenticated?: boolean;
  /** fast-check's seed and path of the run that made it. */
  ref?: { seed?: number; path?: string };
}

/** A reply; `error` when none came (connection closed, timeout). */
export interface WireReply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  ms: number;
  error?: string;
  /** Raw transport: the status line of a second reply the server wrote after the first one. */
  second?: string;
}

/** A request in a form to print and to send again (bodies up to `maxBody` bytes whole, longer ones by their head). */
export function reproOf(req: WireRequest, maxBody = 4096): Json {
  const text = req.body.toString('utf8');
  const printable = Buffer.from(text, 'utf8').equals(req.body) && !/[\x00-\x08\x0e-\x1f]/.test(text);
  return {
    op: req.op,
    kind: req.kind,
    method: req.method,
    target: req.target.length > 600 ? `${req.target.slice(0, 600)}… (${req.target.length} bytes)` : req.target,
    headers: req.headers.map(([k, v]) => [k, v.length > 300 ? `${v.slice(0, 300)}… (${v.length} bytes)` : v]),
    body_bytes: req.body.length,
    ...(req.body.length > 0 && req.body.length <= maxBody ? (printable ? { body_text: text } : { body_base64: req.body.toString('base64') }) : {}),
    ...(req.body.length > maxBody ? { body_head_base64: req.body.subarray(0, Math.min(512, maxBody)).toString('base64') } : {}),
    ...(req.ref ? { seed: req.ref.seed, path: req.ref.path } : {}),
    ...(req.raw ? { raw: true } : {}),
    ...(req.cutShort ? { cut_short: true } : {}),
    ...(req.chunked ? { chunked: true } : {}),
    ...(req.version ? { version: req.version } : {}),
  };
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/** Sends WireRequests to one base URL: node:http with keep-alive where it can, a raw socket where it cannot. */
export class HttpTransport {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  private readonly u: URL;

  constructor(baseUrl: string) {
    this.u = new URL(baseUrl);
  }

  async send(req: WireRequest): Promise<WireReply> {
    const names = req.headers.map(([k]) => k.toLowerCase());
    const needsRaw =
      req.raw ||
      req.cutShort ||
      new Set(names).size !== names.length ||
      !TOKEN.test(req.method) ||
      req.method === 'CONNECT' ||
      !/^[\x21-\xff]+$/.test(req.target) ||
      req.headers.some(([k, v]) => !TOKEN.test(k) || !HEADER_VALUE.test(v));
    return needsRaw ? this.sendRaw(req) : this.sendHttp(req);
  }

  close(): void {
    this.agent.destroy();
  }

  private sendHttp(req: WireRequest, retried = false): Promise<WireReply> {
    const started = performance.now();
    return new Promise<WireReply>((resolve) => {
      let answered = false;
      const headers: Record<string, string> = {};
      for (const [k, v] of req.headers) headers[k] = v;
      const r = http.request(
        { host: this.u.hostname, port: this.u.port, method: req.method, path: req.target, headers, agent: this.agent, insecureHTTPParser: true },
        (res) => {
          answered = true;
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (err) =>
            resolve({ status: res.statusCode ?? 0, headers: flatHeaders(res.headers), body: Buffer.concat(chunks), ms: performance.now() - started, error: `reply cut: ${err.message}` }),
          );
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: flatHeaders(res.headers), body: Buffer.concat(chunks), ms: performance.now() - started }));
        },
      );
      r.setTimeout(GIVE_UP_MS, () => r.destroy(new Error(`no reply within ${GIVE_UP_MS} ms`)));
      // The server may answer (413, 431) and close before it has read all we send: not a failure.
      r.on('error', (err: Error & { code?: string }) => {
        if (answered) return;
        // A kept-alive socket the server closed just as it was reused: Node documents this
        // race (request.reusedSocket); the request never reached the server, so send it again.
        if (!retried && r.reusedSocket && (err.code === 'ECONNRESET' || /socket hang up/.test(err.message))) {
          resolve(this.sendHttp(req, true));
          return;
        }
        resolve({ status: 0, headers: {}, body: Buffer.alloc(0), ms: performance.now() - started, error: err.message });
      });
      if (req.chunked) {
        for (let i = 0; i < req.body.length; i += 4096) r.write(req.body.subarray(i, i + 4096));
        r.end();
      } else {
        r.end(req.body);
      }
    });
  }

  private sendRaw(req: WireRequest): Promise<WireReply> {
    const started = performance.now();
    const lines = [`${req.method} ${req.target} ${req.version ?? 'HTTP/1.1'}`];
    if (!req.noHost) lines.push(`Host: ${this.u.host}`);
    for (const [k, v] of req.headers) lines.push(`${k}: ${v}`);
    lines.push('Connection: close');
    const bytes = Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), req.body]);
    return new Promise<WireReply>((resolve) => {
      const sock = net.connect(Number(this.u.port), this.u.hostname);
      const chunks: Buffer[] = [];
      let done = false;
      const finish = (error?: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        sock.destroy();
        const got = Buffer.concat(chunks);
        const parsed = parseRawReply(got, req.method === 'HEAD');
        const ms = performance.now() - started;
        if (!parsed) resolve({ status: 0, headers: {}, body: got, ms, error: error ?? (got.length ? 'unparseable reply' : 'connection closed without a reply') });
        else resolve({ ...parsed, ms });
      };
      const timer = setTimeout(() => finish(`no reply within ${GIVE_UP_MS} ms`), GIVE_UP_MS);
      sock.on('data', (c: Buffer) => chunks.push(c));
      // A reset after the reply (the server closes while we still write) leaves the reply whole.
      sock.on('error', (err) => finish(err.message));
      sock.on('close', () => finish());
      if (req.cutShort) sock.end(bytes);
      else sock.write(bytes);
    });
  }
}

function flatHeaders(h: http.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
  return out;
}

/** Parses an HTTP/1.1 reply read until the server closed; undefined when it is not one. */
export function parseRawReply(raw: Buffer, head: boolean): Omit<WireReply, 'ms'> | undefined {
  const at = raw.indexOf('\r\n\r\n');
  if (at < 0) return undefined;
  const lines = raw.subarray(0, at).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (!m) return undefined;
  // An interim reply (100 Continue to an Expect) comes before the real one.
  if (m[1]!.startsWith('1')) return parseRawReply(raw.subarray(at + 4), head);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':');
    if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
  }
  let body = head ? Buffer.alloc(0) : raw.subarray(at + 4);
  if (!head && /chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    let i = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', i);
      if (eol < 0) break;
      const n = parseInt(body.subarray(i, eol).toString('latin1'), 16);
      if (!Number.isFinite(n) || n === 0) break;
      parts.push(body.subarray(eol + 2, eol + 2 + n));
      i = eol + 2 + n + 2;
    }
    body = Buffer.concat(parts);
  } else if (!head && headers['content-length'] !== undefined) {
    const rest = body.subarray(Number(headers['content-length']));
    body = body.subarray(0, Number(headers['content-length']));
    // One request, one reply: anything after it (we sent Connection: close) is a second reply.
    if (rest.length > 0) return { status: Number(m[1]), headers, body, second: rest.subarray(0, 80).toString('latin1').split('\r\n')[0]! };
  } else if (head) {
    const rest = raw.subarray(at + 4);
    if (rest.length > 0) return { status: Number(m[1]), headers, body, second: rest.subarray(0, 80).toString('latin1').split('\r\n')[0]! };
  }
  return { status: Number(m[1]), headers, body };
}

// ---------------------------------------------------------------------------- the oracle

/** Operation of a path by the document, literal segments first (as test/helpers/contract.ts matches). */
export class Routes {
  private readonly routes: { re: RegExp; params: number; ops: Map<string, Operation> }[];

  constructor(ops: readonly Operation[]) {
    const by = new Map<string, Map<string, Operation>>();
    for (const o of ops) {
      if (!by.has(o.path)) by.set(o.path, new Map());
      by.get(o.path)!.set(o.method, o);
    }
    this.routes = [...by.entries()]
      .map(([path, m]) => ({ re: new RegExp(`^${path.replace(/[.]/g, '\\.').replace(/\{\w+\}/g, '[^/]+')}$`), params: (path.match(/\{/g) ?? []).length, ops: m }))
      .sort((a, b) => a.params - b.params);
  }

  /** Methods the document has at this path (empty for an unknown path). */
  methods(pathname: string): string[] {
    return [...(this.routes.find((r) => r.re.test(pathname))?.ops.keys() ?? [])];
  }

  find(method: string, pathname: string): Operation | undefined {
    // One trailing slash matches the path without it, as the router (and contract.ts) have it.
    const path = pathname.length > 1 && pathname.endsWith('/') ? pathname.slice(0, -1) : pathname;
    return this.routes.find((r) => r.re.test(path))?.ops.get(method);
  }
}

function pathnameOf(target: string): string {
  if (/^https?:\/\//i.test(target)) {
    try {
      return new URL(target).pathname;
    } catch {
      return target;
    }
  }
  const q = target.indexOf('?');
  return q < 0 ? target : target.slice(0, q);
}

/**
 * What is wrong with a reply, by the oracle (empty when nothing). The row check is the
 * RowOracle's; this judges the reply alone.
 */
export function judgeReply(req: WireRequest, reply: WireReply, routes: Routes, maxMs = MAX_REPLY_MS): string[] {
  if (reply.error) return [`no reply: ${reply.error}`];
  const problems: string[] = [];
  if (reply.status >= 500) problems.push(`server error ${reply.status}: ${reply.body.toString('utf8').slice(0, 300)}`);
  // JSON text is UTF-8 (RFC 8259 8.1); read as anything else, its invalid bytes would be
  // stored as U+FFFD — changed without a word, which the API promises never to do.
  if (req.notUtf8 && reply.status >= 200 && reply.status < 300 && !isSafe(req.method)) {
    problems.push(`a JSON text that is not UTF-8 was accepted (${reply.status}): its invalid bytes are stored as U+FFFD`);
  }
  if (req.unauthenticated && reply.status < 400) problems.push(`a request without a valid token was accepted (${reply.status})`);
  if (reply.ms > maxMs) problems.push(`reply took ${Math.round(reply.ms)} ms (more than ${maxMs})`);
  if (reply.second !== undefined) problems.push(`two replies to one request: ${reply.status}, then ${JSON.stringify(reply.second)}`);
  const type = reply.headers['content-type'] ?? '';
  const head = req.method === 'HEAD';
  let parsed: unknown = reply.body.toString('utf8');
  if (!head && /json/.test(type)) {
    try {
      parsed = JSON.parse(reply.body.toString('utf8'));
    } catch {
      problems.push(`a reply declared ${type} is not JSON: ${JSON.stringify(reply.body.toString('utf8').slice(0, 200))}`);
      return problems;
    }
  }
  if (reply.status >= 400 && !head) {
    const b = parsed as Json;
    if (!/^application\/json/.test(type)) problems.push(`error reply ${reply.status} is not JSON (${type || 'no content type'}): ${JSON.stringify(String(parsed).slice(0, 200))}`);
    else if (typeof b !== 'object' || b === null || Array.isArray(b) || Object.keys(b).join() !== 'msg' || typeof b.msg !== 'string' || b.msg === '') {
      problems.push(`error reply ${reply.status} is not exactly {"msg": <non-empty string>}: ${JSON.stringify(parsed).slice(0, 300)}`);
    }
  }
  const pathname = pathnameOf(req.target);
  if (head) {
    // HEAD is GET without the body (RFC 9110 9.3.2; the router answers it for every GET):
    // its status must be one the GET declares.
    const op = routes.find('GET', pathname);
    if (reply.status < 400 && (!op || !op.statuses.includes(reply.status))) problems.push(`HEAD ${pathname} → ${reply.status}: not a status the document declares for GET`);
  } else {
    const p = contractProblem(req.method, pathname, reply.status, type, parsed);
    if (p) problems.push(`the reply does not match the document: ${p}`);
  }
  return problems;
}

/** Checks that rejected requests change no stored row; returns the problems of one request. */
export interface RowOracle {
  before(req: WireRequest): Promise<void>;
  after(req: WireRequest, reply: WireReply): Promise<string[]>;
}

/** Whether the oracle allows `req` (answered `reply`) to change stored rows: only an accepted request that is not a GET. */
export function mayChangeRows(req: WireRequest, reply: WireReply): boolean {
  return !reply.error && reply.status < 400 && !isSafe(req.method);
}

/**
 * Changes a rejected request may make, and why — each one narrow. The queued-tasks quota
 * (store/quotas.ts) keeps per-user counters in `user_queued`; a queueing it refuses (429)
 * may recount the user's queued tasks exactly and spread the count over the shards again.
 * That is the quota's bookkeeping, not an effect of the request, so `user_queued` may change
 * on a 429 and on nothing else.
 */
export function exemptTable(table: string, reply: WireReply): boolean {
  return table === 'user_queued' && reply.status === 429;
}

/**
 * Columns left out of the row fingerprints, and why. None today: no table records the
 * use of a token or any other read (tokens have no last-used column), so a rejected request
 * changes nothing anywhere. A column added here must say why it changes on a rejected request.
 */
export const EXCLUDED_COLUMNS: Readonly<Record<string, readonly string[]>> = Object.freeze({});

/** Sends SQL to the store under test. */
export type Query = (sql: string, params?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>;

/** The tables of the store (every base table of its schema, read from information_schema) and their columns. */
export async function storeTables(q: Query, skip: readonly string[] = []): Promise<Map<string, string[]>> {
  const r = await q(
    `SELECT c.table_name AS t, c.column_name AS c FROM information_schema.columns c
       JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
      WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
      ORDER BY c.table_name, c.ordinal_position`,
  );
  const out = new Map<string, string[]>();
  for (const row of r.rows) {
    const t = String(row.t);
    if (skip.includes(t)) continue;
    if (!out.has(t)) out.set(t, []);
    out.get(t)!.push(String(row.c));
  }
  return out;
}

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

/**
 * Content fingerprints of every table, per table: the row count and the sum of each row's
 * MD5 (as text, excluded columns left out) — a multiset hash, so no sort over the table.
 * Tables are hashed again only when their cheap signature — row count and a hash of the
 * live row versions (ctid, xmin), which any insert, update or delete changes — moved, so a
 * request that wrote nothing costs one scan of system columns.
 */
export class RowFingerprints {
  private readonly sigs = new Map<string, string>();
  private readonly hashes = new Map<string, string>();
  private xmax = '';

  private constructor(
    private readonly q: Query,
    readonly tables: Map<string, string[]>,
  ) {}

  static async open(q: Query): Promise<RowFingerprints> {
    const tables = await storeTables(q);
    if (tables.size === 0) throw new Error('the store has no tables to fingerprint');
    return new RowFingerprints(q, tables);
  }

  /** table → content hash, now. */
  async take(): Promise<Map<string, string>> {
    // No transaction was given an id since the last look (reads get none; every write
    // does): nothing can have changed, and the tables need no scan. Ids are per server, so
    // another database's writes on a shared PostgreSQL only cost a scan, never a miss.
    const next = String((await this.q('SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x')).rows[0]!.x);
    if (next === this.xmax && this.hashes.size > 0) return new Map(this.hashes);
    this.xmax = next;
    const names = [...this.tables.keys()];
    const sig = await this.q(
      names
        .map((t, i) => `SELECT ${i} AS i, count(*)::text || ':' || coalesce(sum(hashtext(x.ctid::text || '/' || x.xmin::text)::bigint), 0)::text AS v FROM ${ident(t)} x`)
        .join(' UNION ALL '),
    );
    const moved: string[] = [];
    for (const row of sig.rows) {
      const t = names[Number(row.i)]!;
      if (this.sigs.get(t) !== String(row.v) || !this.hashes.has(t)) moved.push(t);
      this.sigs.set(t, String(row.v));
    }
    if (moved.length > 0) {
      const content = await this.q(
        moved
          .map((t) => {
            const skip = EXCLUDED_COLUMNS[t] ?? [];
            const cols = this.tables.get(t)!.filter((c) => !skip.includes(c)).map(ident).join(', ');
            return `SELECT ${names.indexOf(t)} AS i, count(*)::text || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::bigint), 0)::text AS v FROM (SELECT ${cols} FROM ${ident(t)}) r`;
          })
          .join(' UNION ALL '),
      );
      for (const row of content.rows) this.hashes.set(names[Number(row.i)]!, String(row.v));
    }
    return new Map(this.hashes);
  }
}

/** The RowOracle of an in-process store: fingerprints before and after each request. */
export class FingerprintOracle implements RowOracle {
  private last: Map<string, string> | undefined;
  checked = 0;

  constructor(private readonly fp: RowFingerprints) {}

  async before(_req?: WireRequest): Promise<void> {
    // The store is written only by the requests the fuzzer sends (no leader loops run), so
    // the state after one request is the state before the next.
    this.last ??= await this.fp.take();
  }

  async after(req: WireRequest, reply: WireReply): Promise<string[]> {
    const now = await this.fp.take();
    const was = this.last!;
    const previous = this.previous;
    this.last = now;
    this.previous = `${req.op} ${req.kind} ${req.method} → ${reply.error ? 'no reply' : reply.status}`;
    if (mayChangeRows(req, reply)) return [];
    this.checked++;
    const changed = [...now.keys()].filter((t) => now.get(t) !== was.get(t) && !exemptTable(t, reply));
    return changed.length === 0
      ? []
      : [
          `a ${reply.error ? 'request without a reply' : `${req.method} answered ${reply.status}`} changed stored rows: ${changed.map((t) => `${t} (rows:hash ${was.get(t)} → ${now.get(t)})`).join(', ')}` +
            // A handler still running after its reply has gone writes into the next window.
            (previous ? ` (or the request before it did, after its reply: ${previous})` : ''),
        ];
  }

  private previous = '';

  /** Forgets the cached state (something else wrote the store). */
  invalidate(): void {
    this.last = undefined;
  }
}

// ---------------------------------------------------------------------------- the change log (child processes)

/** The table the change-log triggers write (never fingerprinted itself). */
export const CHANGE_LOG = 'fuzz_change_log';

/**
 * Installs a trigger on every table of the store that records each row change (inserts,
 * deletes, updates that change a value outside EXCLUDED_COLUMNS, truncates) with the time
 * it happened (ms since the epoch, the database's clock = this host's). For a store another
 * process owns (PGlite allows one process at a time): the log is read afterwards and each
 * change matched to the request during which it happened. Returns the tables watched.
 */
export async function installChangeLog(q: Query, exec: (sql: string) => Promise<void>): Promise<string[]> {
  const tables = await storeTables(q, [CHANGE_LOG]);
  const ddl = [
    `CREATE TABLE IF NOT EXISTS ${CHANGE_LOG} (seq bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL,
       at_ms bigint NOT NULL DEFAULT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint, row_id text, cols text)`,
    `CREATE OR REPLACE FUNCTION fuzz_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
     DECLARE n jsonb; o jsonb; changed text;
     BEGIN
       IF TG_OP = 'TRUNCATE' THEN
         INSERT INTO ${CHANGE_LOG} (tbl, op) VALUES (TG_TABLE_NAME, TG_OP);
         RETURN NULL;
       END IF;
       IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
       IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
       IF TG_OP = 'UPDATE' THEN
         SELECT string_agg(k, ',') INTO changed FROM jsonb_object_keys(n) k
          WHERE n -> k IS DISTINCT FROM o -> k AND NOT (k = ANY (TG_ARGV));
         IF changed IS NULL THEN RETURN NULL; END IF;
       END IF;
       INSERT INTO ${CHANGE_LOG} (tbl, op, row_id, cols) VALUES (TG_TABLE_NAME, TG_OP,
         coalesce(n ->> 'id', o ->> 'id', n ->> 'user_id', o ->> 'user_id', n ->> 'revision_id', o ->> 'revision_id', n ->> 'task_id', o ->> 'task_id'), changed);
       RETURN NULL;
     END $$`,
  ];
  for (const [t] of tables) {
    const args = (EXCLUDED_COLUMNS[t] ?? []).map((c) => `'${c.replace(/'/g, "''")}'`).join(', ');
    ddl.push(`DROP TRIGGER IF EXISTS fuzz_log ON ${ident(t)}`);
    ddl.push(`CREATE TRIGGER fuzz_log AFTER INSERT OR UPDATE OR DELETE ON ${ident(t)} FOR EACH ROW EXECUTE FUNCTION fuzz_log_change(${args})`);
    ddl.push(`DROP TRIGGER IF EXISTS fuzz_log_truncate ON ${ident(t)}`);
    ddl.push(`CREATE TRIGGER fuzz_log_truncate AFTER TRUNCATE ON ${ident(t)} FOR EACH STATEMENT EXECUTE FUNCTION fuzz_log_change()`);
  }
  for (const s of ddl) await exec(s);
  return [...tables.keys()];
}

/** One row change the log recorded. */
export interface LoggedChange {
  seq: number;
  tbl: string;
  op: string;
  atMs: number;
  rowId: string | null;
  cols: string | null;
}

export async function readChangeLog(q: Query, afterSeq = 0): Promise<LoggedChange[]> {
  const r = await q(`SELECT seq::text AS seq, tbl, op, at_ms::text AS at_ms, row_id, cols FROM ${CHANGE_LOG} WHERE seq > $1 ORDER BY seq`, [afterSeq]);
  return r.rows.map((x) => ({ seq: Number(x.seq), tbl: String(x.tbl), op: String(x.op), atMs: Number(x.at_ms), rowId: (x.row_id as string | null) ?? null, cols: (x.cols as string | null) ?? null }));
}

/** A request's time on the wire (ms since the epoch, both ends inclusive) and whether it may change rows. */
export interface Window {
  t0: number;
  t1: number;
  mayChange: boolean;
  status: number;
  /** The request, compactly (only for requests that may not change rows: the ones a change can be blamed on). */
  repro?: Json;
}

/**
 * The RowOracle of a store another process owns: records each request's window and, once
 * the process is stopped, matches the change log against them. Windows never share a
 * millisecond (before() waits for the clock to move past the last one), so each change
 * falls in one request's window or between two.
 */
export class WindowOracle implements RowOracle {
  readonly windows: Window[] = [];
  private t0 = 0;
  private lastT1 = 0;

  async before(): Promise<void> {
    while (Date.now() <= this.lastT1) await new Promise<void>((r) => setImmediate(r));
    this.t0 = Date.now();
  }

  async after(req: WireRequest, reply: WireReply): Promise<string[]> {
    const t1 = Date.now();
    this.lastT1 = t1;
    const mayChange = mayChangeRows(req, reply);
    this.windows.push({ t0: this.t0, t1, mayChange, status: reply.status, ...(mayChange ? {} : { repro: reproOf(req, 512) }) });
    return [];
  }

  /**
   * The changes made during requests that may not change rows, or outside every request
   * (nothing else writes the store), each with the request.
   */
  attribute(changes: readonly LoggedChange[]): { problem: string; repro?: Json; status?: number; duringAccepted?: boolean }[] {
    const out: { problem: string; repro?: Json; status?: number; duringAccepted?: boolean }[] = [];
    const seen = new Set<Window>();
    const w = this.windows;
    for (const c of changes) {
      let lo = 0;
      let hi = w.length - 1;
      let at = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (w[mid]!.t0 <= c.atMs) {
          at = mid;
          lo = mid + 1;
        } else hi = mid - 1;
      }
      const win = at >= 0 && c.atMs <= w[at]!.t1 ? w[at]! : undefined;
      const what = `${c.op} ${c.tbl}${c.rowId ? ` ${c.rowId}` : ''}${c.cols ? ` (${c.cols})` : ''}`;
      if (!win) {
        out.push({ problem: `a row changed between requests, which nothing else writes: ${what} at ${new Date(c.atMs).toISOString()}` });
        continue;
      }
      if (win.mayChange || exemptTable(c.tbl, { status: win.status, headers: {}, body: Buffer.alloc(0), ms: 0 })) {
        out.push({ problem: '', duringAccepted: true });
        continue;
      }
      if (seen.has(win)) continue;
      seen.add(win);
      out.push({ problem: `a ${win.repro?.method} answered ${win.status || 'nothing'} changed stored rows: ${what}`, ...(win.repro ? { repro: win.repro } : {}), status: win.status });
    }
    return out;
  }
}

// ---------------------------------------------------------------------------- JSON with raw bytes

/** JSON text put in as is (deep nesting, 1e400, bytes that are not UTF-8). */
class Raw {
  constructor(readonly bytes: Buffer) {}
}
/** A JSON string whose content is these bytes as they are (invalid UTF-8, raw control bytes). */
class RawString {
  constructor(readonly bytes: Buffer) {}
}

const raw = (s: string | Buffer) => new Raw(Buffer.isBuffer(s) ? s : Buffer.from(s, 'latin1'));

/** Serializes a value that may hold Raw and RawString parts. Lone surrogates come out as JSON escapes (`"\ud800"`). */
export function encodeJson(value: unknown): Buffer {
  const parts: Buffer[] = [];
  const text = JSON.stringify(value, (_k, v: unknown) => {
    if (v instanceof Raw) {
      parts.push(v.bytes);
      return `\ue000${parts.length - 1}\ue001`;
    }
    if (v instanceof RawString) {
      parts.push(Buffer.concat([Buffer.from('"'), v.bytes, Buffer.from('"')]));
      return `\ue000${parts.length - 1}\ue001`;
    }
    return v;
  });
  if (text === undefined) return Buffer.alloc(0);
  if (parts.length === 0) return Buffer.from(text, 'utf8');
  return Buffer.concat(text.split(/"\ue000(\d+)\ue001"/).map((p, i) => (i % 2 === 1 ? parts[Number(p)]! : Buffer.from(p, 'utf8'))));
}

// ---------------------------------------------------------------------------- values from schemas

const types = (s: Json | undefined): string[] => (!s ? [] : Array.isArray(s.type) ? (s.type as string[]) : typeof s.type === 'string' ? [s.type] : []);
const byteLength = (s: string) => Buffer.byteLength(s, 'utf8');

interface Ctx {
  op: string;
  path: (string | number)[];
  w: World;
  d: Draw;
}

const NO_HINT = Symbol('no hint');

/** Keys every plain object has (Object.prototype's): a lookup by a client's name must not find them. */
const PROTO_KEYS = ['toString', 'constructor', '__proto__', 'valueOf', 'hasOwnProperty'] as const;

/** Times as far as the grammar goes: years 0 and 9999, offsets across the year 10000. */
const EDGE_TIMES: readonly unknown[] = [
  '0000-01-01', '0001-01-01T00:00:00Z', '0099-12-31T23:59:59Z', '9999-12-31T23:59:59Z', '9999-12-31T23:59:59-23:59', '1969-12-31T23:59:59Z', '2026-02-30',
  253402300800, 253402300799, -62135596801, 99999999999, 8.64e12, -1, 0, '253402300800', '0', '99999999999',
];

function timeValue(d: Draw): unknown {
  if (d.chance(0.1)) return d.pick(EDGE_TIMES);
  const at = Date.now() + d.int(-3 * 86400, 3 * 86400) * 1000;
  return d.pick([new Date(at).toISOString(), Math.floor(at / 1000), String(Math.floor(at / 1000)), new Date(at).toISOString().slice(0, 10), '']);
}

/**
 * Values that make a request likely to pass the checks past the schema (a code name that
 * exists, an image reference, a whole number of MiB): most valid requests are then accepted.
 */
function hint(c: Ctx): unknown {
  const { d, w } = c;
  const key = c.path[c.path.length - 1];
  const parent = c.path[c.path.length - 2];
  if (typeof key === 'number') {
    if (parent === 'shared_to') return d.chance(0.8) ? w.other.userId : NO_HINT;
    if (parent === 'cap_add') return d.pick(['CHOWN', 'kill', 'CAP_NET_BIND_SERVICE', 'SYS_ADMIN', 'setuid']);
    return NO_HINT;
  }
  if (d.chance(0.15)) return NO_HINT;
  const top = c.path.length === 1;
  switch (key) {
    case 'code_name': {
      const live = w.liveCodes();
      return live.length > 0 && d.chance(0.9) ? d.pick(live).name : d.pick([w.foreign.codeName, 'fz-no-such-code']);
    }
    case 'cluster':
      // Names a lookup in a plain object finds on Object.prototype, now and then.
      if (d.chance(0.1)) return d.pick(PROTO_KEYS);
      return d.pick(['default', '', ...w.clusters.map((x) => x.name), w.foreign.clusterName].filter((x) => x !== undefined));
    case 'name':
      if (c.op === 'uploadCode' && top) {
        const live = w.liveCodes();
        return live.length > 0 && d.chance(0.6) ? d.pick(live).name : `fz-${d.int(0, 999999)}`;
      }
      if ((c.op === 'createCluster' || c.op === 'updateCluster') && top) {
        if (d.chance(0.05)) return d.pick(PROTO_KEYS);
        return d.chance(0.85) || w.clusters.length === 0 ? `fzc-${d.int(0, 999999)}` : d.pick(w.clusters).name;
      }
      return NO_HINT;
    case 'image':
      return d.pick(['gantry-test/busybox:latest', 'busybox', 'iron/node:4', 'registry.example.com:5000/team/app:v1']);
    case 'payload':
      return d.text(40);
    case 'timeout':
      return d.int(1, 3600);
    case 'delay':
      return d.int(0, 600);
    case 'run_every':
      return d.int(60, 86400);
    case 'run_times':
      return d.int(1, 100);
    case 'start_at':
    case 'end_at':
    case 'from_time':
    case 'to_time':
    case 'start_date':
    case 'end_date':
      return timeValue(d);
    case 'memory':
      return d.int(16, 4096) * MiB;
    case 'disk':
    case 'disk_space':
      return d.int(1, 100) * GiB;
    case 'tmp_size':
      return d.int(1, 64) * MiB;
    case 'user':
      return parent === 'container' ? d.pick(['1000', '1000:1000', 'nobody', null]) : NO_HINT;
    case 'docker_auth':
      return Buffer.from('user:secret').toString('base64');
    case 'docker_email':
      return 'ops@example.com';
    case 'revision':
      return d.int(1, 3);
    case 'page':
      return d.int(0, 3);
    case 'per_page':
      return d.int(1, 100);
    case 'percent':
      return d.int(0, 100);
    case 'env_vars':
      return d.chance(0.5) ? { FZ_A: d.text(10, false), FZ_B: 'x' } : d.chance(0.1) ? JSON.parse('{"__proto__":"x","constructor":"y"}') : {};
    case 'runners_min':
    case 'runners_max':
    case 'runners_per_instance':
      return d.int(0, 4);
    case 'autoscale':
      // Autoscale settings make deep bodies most of which the route refuses; draw them now and then.
      return d.chance(0.7) ? undefined : NO_HINT;
    default:
      return NO_HINT;
  }
}

/** A value the schema allows (most of the time: patterns and limits past the schema are not all known). */
export function validValue(s: Json, c: Ctx): unknown {
  const h = hint(c);
  if (h !== NO_HINT) return h;
  const { d } = c;
  const ts = types(s);
  if (ts.length === 0) return d.pick([1, 'x', true, null, {}, []]);
  if (ts.includes('null') && d.chance(0.08)) return null;
  const t = d.pick(ts.filter((x) => x !== 'null').length > 0 ? ts.filter((x) => x !== 'null') : ts);
  switch (t) {
    case 'null':
      return null;
    case 'boolean':
      return d.chance(0.5);
    case 'integer':
    case 'number': {
      const min = typeof s.minimum === 'number' ? s.minimum : -1_000_000;
      const max = typeof s.maximum === 'number' ? s.maximum : 1_000_000;
      const n = d.chance(0.2) ? d.pick([min, max]) : d.int(min, Math.min(max, min + 10_000_000));
      // Digit strings are integers too (schema/validator.ts normalize).
      return t === 'integer' && d.chance(0.1) ? String(n) : n;
    }
    case 'string': {
      if (Array.isArray(s.enum)) return d.pick(s.enum as unknown[]);
      // A name a server might look up in a plain object: it must not find Object.prototype's.
      if (d.chance(0.04)) return d.pick(PROTO_KEYS);
      const maxBytes = (s['x-max-bytes'] as number | undefined) ?? (s.maxLength as number | undefined) ?? 64;
      const minLength = (s.minLength as number | undefined) ?? 0;
      let v = typeof s.pattern === 'string' ? d.matching(s.pattern, Math.min(maxBytes, 48)) : undefined;
      v ??= d.text(Math.min(maxBytes, 24));
      while (byteLength(v) > maxBytes) v = [...v].slice(0, -1).join('');
      if (v.length < minLength) v = v.padEnd(minLength, 'a');
      return v;
    }
    case 'array': {
      const n = d.int((s.minItems as number | undefined) ?? 0, Math.min((s.maxItems as number | undefined) ?? 3, Math.max(3, (s.minItems as number | undefined) ?? 0)));
      return Array.from({ length: n }, (_, i) => validValue((s.items ?? {}) as Json, { ...c, path: [...c.path, i] }));
    }
    case 'object':
      return validObject(s, c);
    default:
      return null;
  }
}

function validObject(s: Json, c: Ctx): Json {
  const { d } = c;
  const out: Json = {};
  const required = new Set((s.required ?? []) as string[]);
  for (const [k, ps] of Object.entries((s.properties ?? {}) as Json)) {
    // Read-only fields are what replies show; clients may send them back, ignored.
    if ((ps as Json).readOnly) {
      if (d.chance(0.03)) out[k] = d.pick([true, 'x', 1]);
      continue;
    }
    if (!required.has(k) && !d.chance(0.35)) continue;
    const v = validValue(ps as Json, { ...c, path: [...c.path, k] });
    if (v !== undefined) out[k] = v;
  }
  if (typeof s.additionalProperties === 'object') {
    const n = d.int(0, Math.min((s.maxProperties as number | undefined) ?? 3, 3));
    const keyPattern = (s.propertyNames as Json | undefined)?.pattern as string | undefined;
    for (let i = 0; i < n; i++) {
      const k = (keyPattern ? d.matching(keyPattern, 16) : undefined) ?? `k${i}`;
      out[k] = validValue(s.additionalProperties as Json, { ...c, path: [...c.path, k] });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------- mutations

/** Strings PostgreSQL cannot store as given, or JSON cannot carry, or that test the byte limits. */
function badText(d: Draw): unknown {
  return d.pick<() => unknown>([
    () => `fz\u0000nul`,
    () => '\u0000',
    () => 'lone \ud800 high',
    () => 'lone \udc00 low',
    () => '\ud83d',
    () => 'x\udbff',
    () => '\u0001\u001f\u007f controls',
    () => '\ufeffbom',
    () => '\uffff\ufffe',
    () => 'line\u2028sep',
    // Bytes that are not UTF-8, inside a JSON string, sent as they are.
    () => new RawString(Buffer.from([0x66, 0x7a, 0xff, 0x7a])),
    () => new RawString(Buffer.from([0xc3, 0x28])),
    () => new RawString(Buffer.from([0xc0, 0x80])),
    () => new RawString(Buffer.from([0xed, 0xa0, 0x80])),
    () => new RawString(Buffer.from([0xed, 0xbf, 0xbf, 0x61])),
    () => new RawString(Buffer.from([0xe2, 0x82])),
    () => new RawString(Buffer.from([0xf4, 0x90, 0x80, 0x80])),
    () => new RawString(Buffer.from([0xf8, 0x88, 0x80, 0x80, 0x80])),
    // Raw control bytes inside a string: not JSON.
    () => new RawString(Buffer.from([0x61, 0x00, 0x62])),
    () => new RawString(Buffer.from([0x61, 0x09, 0x62])),
    () => new RawString(Buffer.from([0x61, 0x0a, 0x62])),
  ])();
}

function wrongType(s: Json, d: Draw): unknown {
  const allowed = new Set(types(s));
  const candidates: [string, unknown][] = [
    ['string', d.pick(['fz', '12abc', 'true', 'null', ' '])],
    ['integer', d.pick([7, -1, 0])],
    ['number', d.pick([1.5, -0.25, 1e-9])],
    ['boolean', d.chance(0.5)],
    ['null', null],
    ['array', d.pick([[], [1], ['x'], [{}]])],
    ['object', d.pick([{}, { a: 1 }, { '': '' }])],
  ];
  const wrong = candidates.filter(([t]) => !allowed.has(t) && !(t === 'integer' && allowed.has('number')));
  return d.pick(wrong.length > 0 ? wrong : candidates)[1];
}

function boundary(s: Json, c: Ctx): unknown {
  const { d } = c;
  const ts = types(s);
  if (ts.includes('number') && typeof s.minimum !== 'number' && typeof s.maximum !== 'number') {
    // Unbounded numbers (times in seconds): the ends of what JavaScript and PostgreSQL hold.
    return d.pick<unknown>([...EDGE_TIMES.filter((x) => typeof x === 'number'), 2 ** 53, -(2 ** 53), 1e-7, raw('1e400'), raw('-0')]);
  }
  if ((ts.includes('integer') || ts.includes('number')) && (typeof s.minimum === 'number' || typeof s.maximum === 'number')) {
    const min = (s.minimum as number | undefined) ?? 0;
    const max = (s.maximum as number | undefined) ?? 0;
    return d.pick<unknown>([min - 1, min, max, max + 1, min + 0.5, 2 ** 53 + 2, -(2 ** 53) - 2, String(max + 1), String(min - 1), ` ${max} `, raw('1e400'), raw('-0'), raw(`${max}.0`), raw('1E2'), raw('123456789012345678901234567890')]);
  }
  if (ts.includes('string')) {
    const maxBytes = (s['x-max-bytes'] as number | undefined) ?? (s.maxLength as number | undefined);
    if (maxBytes !== undefined) {
      return d.pick<() => unknown>([
        () => 'a'.repeat(maxBytes),
        () => 'a'.repeat(maxBytes + 1),
        // Bytes over the limit, characters under it: the limit is in bytes.
        () => '\u00e9'.repeat(Math.floor(maxBytes / 2)),
        () => '\u00e9'.repeat(Math.floor(maxBytes / 2) + 1),
        () => '\u{1f600}'.repeat(Math.floor(maxBytes / 4) + 1),
        () => '',
        () => ' '.repeat(Math.min(maxBytes, 8)),
      ])();
    }
  }
  if (ts.includes('array')) {
    const min = (s.minItems as number | undefined) ?? 0;
    const max = (s.maxItems as number | undefined) ?? 1000;
    const n = d.pick([Math.max(0, min - 1), min, max, max + 1]);
    // One item repeated: a full batch of small valid items (say 1000 tasks) stays cheap.
    const item = validValue((s.items ?? {}) as Json, { ...c, path: [...c.path, 0] });
    return Array.from({ length: n }, () => item);
  }
  if (ts.includes('object') && typeof s.maxProperties === 'number') {
    const o: Json = {};
    for (let i = 0; i <= s.maxProperties; i++) o[`K${i}`] = typeof s.additionalProperties === 'object' ? validValue(s.additionalProperties as Json, { ...c, path: [...c.path, `K${i}`] }) : 'v';
    return o;
  }
  return wrongType(s, d);
}

function deepNesting(d: Draw): Raw {
  const depth = d.pick([65, 200, 1000, 5000, 20000]);
  return d.chance(0.5) ? raw(`${'['.repeat(depth)}${']'.repeat(depth)}`) : raw(`${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`);
}

interface Site {
  path: (string | number)[];
  schema: Json;
  present: boolean;
}

/** Every place in `value` (and every absent property of its objects) with the schema that governs it. */
function sites(s: Json, value: unknown, path: (string | number)[] = [], out: Site[] = []): Site[] {
  out.push({ path, schema: s, present: true });
  if (Array.isArray(value)) {
    value.slice(0, 3).forEach((v, i) => sites((s.items ?? {}) as Json, v, [...path, i], out));
  } else if (typeof value === 'object' && value !== null && !(value instanceof Raw) && !(value instanceof RawString)) {
    const props = (s.properties ?? {}) as Json;
    for (const [k, v] of Object.entries(value)) {
      const ps = (props[k] ?? (typeof s.additionalProperties === 'object' ? s.additionalProperties : {})) as Json;
      sites(ps, v, [...path, k], out);
    }
    for (const [k, ps] of Object.entries(props)) if (!(k in (value as Json)) && !(ps as Json).readOnly) out.push({ path: [...path, k], schema: ps as Json, present: false });
  }
  return out;
}

function setAt(root: unknown, path: (string | number)[], v: unknown): unknown {
  if (path.length === 0) return v;
  let at = root as Json;
  for (const k of path.slice(0, -1)) at = at[k as string] as Json;
  // defineProperty: a key such as "__proto__" must be an own key of the JSON object, as JSON.parse makes it.
  Object.defineProperty(at, path[path.length - 1]!, { value: v, enumerable: true, writable: true, configurable: true });
  return root;
}

function getAt(root: unknown, path: (string | number)[]): unknown {
  let at = root as Json | undefined;
  for (const k of path) at = at?.[k as string] as Json | undefined;
  return at;
}

function deleteAt(root: unknown, path: (string | number)[]): void {
  let at = root as Json;
  for (const k of path.slice(0, -1)) at = at[k as string] as Json;
  delete at[path[path.length - 1] as string];
}

const clone = (v: unknown): unknown => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

/** One value of `s`, valid or with exactly one mutation at one place; returns the kind of input it is. */
export function jsonValue(s: Json, c: Ctx, mutate: boolean): { value: unknown; kind: string } {
  const { d } = c;
  const value = validValue(s, c);
  if (!mutate) return { value, kind: 'valid' };
  const all = sites(s, value);
  // Objects with required fields are few among the places of a value: aim at them now and then.
  const withRequired = all.filter((x) => x.present && ((x.schema.required ?? []) as string[]).some((k) => typeof getAt(value, x.path) === 'object' && k in ((getAt(value, x.path) ?? {}) as Json)));
  const site = withRequired.length > 0 && d.chance(0.15) ? d.pick(withRequired) : d.pick(all);
  const here = site.present ? getAt(value, site.path) : undefined;
  const obj = typeof here === 'object' && here !== null && !Array.isArray(here);
  const kinds: string[] = ['wrong-type', 'boundary', 'bad-text', 'deep-nesting', 'null', 'huge-number'];
  if (obj) kinds.push('extra-field', 'extra-field');
  const req = obj ? ((site.schema.required ?? []) as string[]).filter((k) => k in (here as Json)) : [];
  if (req.length > 0) kinds.push('missing-required', 'missing-required');
  const kind = d.pick(kinds);
  const v = clone(value);
  const inner = { ...c, path: site.path };
  switch (kind) {
    case 'wrong-type':
      return { value: setAt(v, site.path, wrongType(site.schema, d)), kind };
    case 'boundary':
      return { value: setAt(v, site.path, boundary(site.schema, inner)), kind };
    case 'bad-text':
      return { value: setAt(v, site.path, badText(d)), kind };
    case 'deep-nesting':
      return { value: setAt(v, site.path, deepNesting(d)), kind };
    case 'null':
      return { value: setAt(v, site.path, null), kind };
    case 'huge-number':
      return { value: setAt(v, site.path, d.pick([raw('1e400'), raw('-1e400'), raw('1e-400'), raw('9'.repeat(400)), raw('0.' + '0'.repeat(400) + '1')])), kind };
    case 'extra-field': {
      const key = d.pick(['fz_unknown', '__proto__', 'constructor', 'toString', '', ' ', 'a.b', 'tasks[0]', '\u0000', 'key\ud800', 'k'.repeat(300), 'hasOwnProperty']);
      const val = key === '__proto__' ? d.pick<unknown>([{ name: 'fz-proto', tasks: [{ code_name: 'x' }] }, { polluted: true }, null, 1]) : d.pick<unknown>([1, 'x', null, {}, [], true]);
      return { value: setAt(v, [...site.path, key], val), kind };
    }
    case 'missing-required': {
      deleteAt(v, [...site.path, d.pick(req)]);
      return { value: v, kind };
    }
  }
  return { value: v, kind: 'valid' };
}

// ---------------------------------------------------------------------------- zips and forms

function validZip(d: Draw): Buffer {
  const items: ZipItem[] = [{ name: 'run.sh', data: Buffer.from('#!/bin/sh\necho hello\n'), mode: 0o755 }];
  if (d.chance(0.5)) items.push({ name: 'lib/', dir: true }, { name: 'lib/data.bin', data: d.bytes(d.int(0, 2000)), method: d.pick([0, 8]) });
  return makeZip(items);
}

/** Replaces every occurrence of `from` by `to` (same length) in `buf`. */
function patch(buf: Buffer, from: Buffer, to: Buffer): Buffer {
  const out = Buffer.from(buf);
  for (let at = out.indexOf(from); at >= 0; at = out.indexOf(from, at + 1)) to.copy(out, at);
  return out;
}

/** A broken (or odd) zip archive, and what is odd about it. */
function brokenZip(d: Draw, limits: FuzzLimits): { zip: Buffer; kind: string } {
  const small = (name: string, extra: Partial<ZipItem> = {}): ZipItem => ({ name, data: Buffer.from('x'), ...extra });
  // The classic breakages first (random bytes after the magic, a cut central directory,
  // names that climb out, NUL, many entries), then the rarer oddities.
  const kind = d.weighted<string>([
    ...(['random-after-magic', 'truncated-cd', 'abs-name', 'dotdot', 'nul-name', 'many-entries'] as const).map((k) => [3, k] as const),
    ...(['backslash', 'bomb', 'method', 'empty', 'not-zip', 'invalid-utf8-name', 'dup-names', 'eocd-lies', 'symlink', 'long-name', 'cut-entry', 'big-valid'] as const).map((k) => [1, k] as const),
  ]);
  switch (kind) {
    case 'random-after-magic':
      return { zip: Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), d.bytes(d.int(0, 3000))]), kind };
    case 'truncated-cd': {
      const z = validZip(d);
      return { zip: z.subarray(0, z.length - d.int(1, Math.min(60, z.length - 5))), kind };
    }
    case 'abs-name':
      return { zip: makeZip([small(d.pick(['/abs', '/etc/passwd', '//x']))]), kind };
    case 'dotdot':
      return { zip: makeZip([small(d.pick(['../x', 'a/../../x', '..', 'a/..', './../x']))]), kind };
    case 'nul-name':
      return { zip: makeZip([small('a\u0000b')]), kind };
    case 'backslash':
      return { zip: makeZip([small(d.pick(['..\\x', 'C:\\x', 'a\\..\\..\\x', 'C:x']))]), kind };
    case 'many-entries': {
      const n = d.pick([limits.maxZipEntries, limits.maxZipEntries + 1, limits.maxZipEntries + 50, 600]);
      return { zip: makeZip(Array.from({ length: n }, (_, i) => ({ name: `f${i}`, data: Buffer.alloc(0), method: 0 }))), kind: `${kind}-${n > limits.maxZipEntries ? 'over' : 'at'}` };
    }
    case 'bomb':
      return { zip: makeZip([small('big', { declaredSize: d.pick([2 ** 31, 2 ** 32 - 1, 2 * MiB]) })]), kind };
    case 'method':
      return { zip: makeZip([small('x', { method: d.pick([1, 12, 14, 99, 65535]) })]), kind };
    case 'empty':
      return { zip: makeZip([]), kind };
    case 'not-zip':
      return { zip: d.chance(0.5) ? d.bytes(d.int(1, 2000)) : Buffer.from('this is not a zip'), kind };
    case 'invalid-utf8-name':
      return { zip: patch(makeZip([small('aQb')]), Buffer.from('aQb'), Buffer.from([0x61, 0xff, 0x62])), kind };
    case 'dup-names':
      return { zip: makeZip([small('same'), small('same'), small('dir/'), { name: 'dir/', dir: true }]), kind };
    case 'eocd-lies': {
      const z = validZip(d);
      const eocd = z.length - 22;
      const out = Buffer.from(z);
      const field = d.pick([8, 10, 12, 16]);
      if (field === 8 || field === 10) out.writeUInt16LE(0xffff, eocd + field);
      else out.writeUInt32LE(0x7fffffff, eocd + field);
      return { zip: out, kind };
    }
    case 'symlink':
      return { zip: makeZip([{ name: 'link', data: Buffer.from('/etc/passwd'), method: 0, mode: 0o120777 }]), kind };
    case 'long-name':
      return { zip: makeZip([small(`${'a/'.repeat(d.pick([100, 2000]))}x`)]), kind };
    case 'cut-entry': {
      const z = validZip(d);
      return { zip: z.subarray(0, d.int(4, Math.max(5, z.length - 23))), kind };
    }
    default: {
      // A valid zip near the upload limit (the form around it pushes it over, sometimes).
      const n = limits.maxUploadBytes - d.pick([600, 400, 0]);
      return { zip: makeZip([{ name: 'blob', data: d.bytes(n), method: 0 }]), kind };
    }
  }
}

interface Part {
  headers: string;
  body: Buffer;
}

function form(boundary: string, parts: Part[], closing = true): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) out.push(Buffer.from(`--${boundary}\r\n${p.headers}\r\n\r\n`, 'latin1'), p.body, Buffer.from('\r\n'));
  if (closing) out.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(out);
}

const dataPart = (json: Buffer, asFile = false, typed = false): Part => ({
  headers: `Content-Disposition: form-data; name="data"${asFile ? '; filename="data.json"' : ''}${typed ? '\r\nContent-Type: application/json' : ''}`,
  body: json,
});
const filePart = (zip: Buffer, name = 'code.zip'): Part => ({ headers: `Content-Disposition: form-data; name="file"; filename="${name}"\r\nContent-Type: application/zip`, body: zip });

// ---------------------------------------------------------------------------- one request

interface Body {
  bytes: Buffer;
  type?: string;
  chunked?: boolean;
  cutShort?: boolean;
  /** The JSON in it is not UTF-8. */
  notUtf8?: boolean;
}

type Category = 'valid' | 'auth' | 'path' | 'query' | 'body' | 'method' | 'headers';

function queryString(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => (v === '\u0000flag' ? k : `${k}=${v}`)).join('&');
}

const enc = (v: unknown): string => {
  try {
    return encodeURIComponent(String(v));
  } catch {
    // A lone surrogate: sent as the UTF-8 of a surrogate, which is not UTF-8.
    return '%ED%A0%80';
  }
};

/** The query pairs of a valid request (optional parameters now and then). */
function validQuery(op: Operation, c: Ctx): [string, string][] {
  const out: [string, string][] = [];
  for (const [k, s] of Object.entries(op.query.props)) {
    if (!op.query.required.includes(k) && !c.d.chance(0.3)) continue;
    const v = k.match(/^(queued|running|complete|error|cancelled|killed|timeout)$/) ? c.d.pick(['1', 'true', '0']) : validValue(s, { ...c, path: [k] });
    if (v === null || v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) out.push([k, enc(x)]);
    else out.push([k, enc(v)]);
  }
  return out;
}

function mutateQuery(op: Operation, pairs: [string, string][], c: Ctx): { pairs: [string, string][]; kind: string } {
  const { d } = c;
  const names = Object.keys(op.query.props);
  const name = names.length > 0 && d.chance(0.85) ? d.pick(names) : d.pick(['fz', 'oauth', 'page', '']);
  const s = (op.query.props[name] ?? {}) as Json;
  const without = pairs.filter(([k]) => k !== name);
  const kind = d.pick(['wrong-type', 'boundary', 'odd-encoding', 'odd-encoding', 'repeated', 'array-syntax', 'extra', 'long-value', 'missing-required', 'empty', 'bad-text']);
  switch (kind) {
    case 'wrong-type':
      return { pairs: [...without, [name, d.pick(['abc', '1.5', '1e3', '', '%20', '0x1f', '-', '99999999999999999999', 'true', 'null', '%7B%7D'])]], kind };
    case 'boundary': {
      const b = boundary(s, { ...c, path: [name] });
      return { pairs: [...without, [name, b instanceof Raw ? encodeURIComponent(b.bytes.toString('latin1')) : enc(b)]], kind };
    }
    case 'odd-encoding':
      return { pairs: [...without, [name, d.pick(['%00', '%ED%A0%80', '%FF', '%C0%80', '%', '%zz', '%2', '+', '%u0041', '%F0%9F%98%80', '%E2%82', 'a%00b', '%EF%BB%BF1', '1%0D%0AX-Injected:%201', '%25'])]], kind };
    case 'repeated':
      return { pairs: [...without, [name, '1'], [name, d.pick(['2', 'x', '', '%00'])]], kind };
    case 'array-syntax':
      return { pairs: [...without, [`${name}[]`, '1'], [`${name}[a]`, '2'], [`${name}[__proto__]`, '3']], kind };
    case 'extra':
      return { pairs: [...pairs, [d.pick(['fz_unknown', '__proto__', 'constructor', '%00', '%ED%A0%80', 'a.b', 'hasOwnProperty']), d.pick(['1', '', '%00'])]], kind };
    case 'long-value':
      return { pairs: [...without, [name, 'a'.repeat(d.pick([300, 5000, 15000, 40000]))]], kind };
    case 'missing-required':
      return { pairs: pairs.filter(([k]) => !op.query.required.includes(k)), kind };
    case 'empty':
      return { pairs: [...pairs, ['', ''], ['=', '='], [name, '\u0000flag']], kind };
    default: {
      const t = badText(d);
      return { pairs: [...without, [name, t instanceof RawString ? [...t.bytes].map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`).join('') : enc(t)]], kind };
    }
  }
}

function pathParam(name: string, c: Ctx, mutate: boolean): { value: string; kind: string } {
  const { d, w } = c;
  // An execution's path names a task that has executions (the test says which, World.executed).
  if (!mutate && name === 'taskId' && /Execution/.test(c.op) && w.executed.length > 0) return { value: d.pick(w.executed), kind: 'valid' };
  if (!mutate) return { value: w.realParam(name, d), kind: 'valid' };
  const kind = d.pick(['stale', 'foreign', 'wrong-kind', 'random-id', 'uppercase-id', 'short-id', 'long', 'odd-encoding', 'odd-encoding', 'empty', 'unicode']);
  const real = w.realParam(name, d);
  switch (kind) {
    case 'stale':
      return { value: w.staleParam(name, d), kind };
    case 'foreign':
      return { value: w.foreignParam(name), kind };
    case 'wrong-kind':
      return { value: w.realParam(d.pick(['projectId', 'codeId', 'taskId', 'scheduleId', 'clusterId'].filter((x) => x !== name)), d), kind };
    case 'random-id':
      return { value: d.bytes(12).toString('hex'), kind };
    case 'uppercase-id':
      return { value: real.toUpperCase(), kind };
    case 'short-id':
      return { value: real.slice(0, d.int(0, 23)) || '0', kind };
    case 'long':
      return { value: `${real}${'a'.repeat(d.pick([1, 100, 5000]))}`, kind };
    case 'odd-encoding':
      return { value: d.pick(['%00', '%ED%A0%80', '%FF', '%2F', '%2e%2e', '..', '.', '%', '%zz', `${real}%00`, `${real}%20`, '%C0%AE%C0%AE', '~', ';', `${real};x=1`]), kind };
    case 'empty':
      return { value: '', kind };
    default:
      return { value: d.pick(['%F0%9F%98%80', encodeURIComponent('ünïcödé'), '%E2%80%AE']), kind };
  }
}

function authHeaders(c: Ctx, mutate: boolean): { headers: [string, string][]; query: [string, string][]; actor: WireRequest['actor']; kind: string; raw?: boolean } {
  const { d, w } = c;
  const me = w.me.token;
  const valid = { headers: [['Authorization', `OAuth ${me}`]] as [string, string][], query: [] as [string, string][], actor: 'me' as const, kind: 'valid' };
  if (!mutate) return d.chance(0.1) ? { ...valid, headers: [], query: [['oauth', me]] } : valid;
  const kind = d.pick([
    'none', 'scheme-case', 'bearer', 'basic', 'empty-token', 'padded', 'garbage', 'foreign-token', 'revoked-token', 'query-token',
    'query-garbage', 'query-empty', 'header-and-query', 'latin1-bytes', 'control-chars', 'long-token', 'huge', 'duplicate', 'tab',
  ]);
  const h = (v: string, raw = false) => ({ headers: [['Authorization', v]] as [string, string][], query: [] as [string, string][], actor: 'none' as const, kind, ...(raw ? { raw } : {}) });
  switch (kind) {
    case 'none':
      return { headers: [], query: [], actor: 'none', kind };
    case 'scheme-case':
      return h(`${d.pick(['oauth', 'OAUTH', 'Oauth'])} ${me}`);
    case 'bearer':
      return h(`Bearer ${me}`);
    case 'basic':
      return h(`Basic ${Buffer.from(`${me}:`).toString('base64')}`);
    case 'empty-token':
      return h(d.pick(['OAuth', 'OAuth ', 'OAuth   ', '']));
    case 'padded':
      return { ...h(`OAuth   ${me}  `), actor: 'me' };
    case 'garbage':
      return h(`OAuth ${d.pick([d.bytes(20).toString('hex'), 'x', me.slice(0, -1), `${me}x`, me.toUpperCase(), `${me} ${me}`])}`);
    case 'foreign-token':
      return { ...h(`OAuth ${w.other.token}`), actor: 'other' };
    case 'revoked-token':
      return h(`OAuth ${w.revokedToken}`);
    case 'query-token':
      return { headers: [], query: [['oauth', me]], actor: 'me', kind };
    case 'query-garbage':
      return { headers: [], query: [['oauth', d.pick(['x', '%00', '%ED%A0%80', 'a'.repeat(5000)])]], actor: 'none', kind };
    case 'query-empty':
      return { headers: [], query: [['oauth', '']], actor: 'none', kind };
    case 'header-and-query':
      return { headers: [['Authorization', 'OAuth garbage']], query: [['oauth', me]], actor: 'none', kind };
    case 'latin1-bytes':
      return h(`OAuth ${Buffer.from([0xe9, 0xff, 0x80]).toString('latin1')}${me}`);
    case 'control-chars':
      return h(`OAuth ${me}${d.pick(['\u0001', '\u0000', '\u007f', '\u001b[0m'])}`, true);
    case 'long-token':
      return h(`OAuth ${'a'.repeat(d.pick([4097, 8000]))}`);
    case 'huge':
      return h(`OAuth ${'a'.repeat(d.pick([17 * 1024, 64 * 1024]))}`);
    case 'duplicate':
      return { headers: [['Authorization', `OAuth ${me}`], ['Authorization', d.pick(['OAuth x', `OAuth ${w.other.token}`])]], query: [], actor: 'none', kind, raw: true };
    default:
      return { ...h(`OAuth\t${me}`), actor: 'me' };
  }
}

/** The body of a valid request (or, with `mutate`, of one with one thing wrong). */
function makeBody(op: Operation, c: Ctx, limits: FuzzLimits, mutate: boolean): { body: Body; kind: string } {
  const { d } = c;
  const spec = op.body;
  if (!spec) {
    if (!mutate) return { body: { bytes: Buffer.alloc(0) }, kind: 'valid' };
    // Bodies where none is expected: ignored, or refused; never a 5xx.
    const kind = d.pick(['json', 'garbage', 'oversized', 'cut-short', 'chunked']);
    switch (kind) {
      case 'json':
        return { body: { bytes: Buffer.from('{"fz":1}'), type: 'application/json' }, kind: `unexpected-body-${kind}` };
      case 'garbage':
        return { body: { bytes: d.bytes(d.int(1, 3000)), type: d.pick(['application/octet-stream', 'application/json', 'multipart/form-data; boundary=x']) }, kind: `unexpected-body-${kind}` };
      case 'oversized':
        return { body: { bytes: Buffer.alloc(limits.maxJsonBody * 2, 0x20), type: 'application/json' }, kind: `unexpected-body-${kind}` };
      case 'cut-short':
        return { body: { bytes: Buffer.from('{"a":'), type: 'application/json', cutShort: true }, kind: `unexpected-body-${kind}` };
      default:
        return { body: { bytes: Buffer.from('{}'), type: 'application/json', chunked: true }, kind: `unexpected-body-${kind}` };
    }
  }
  if (spec.kind === 'json') {
    const b = jsonBody(spec.schema, c, limits.maxJsonBody, mutate);
    if (!isUtf8(b.body.bytes)) b.body.notUtf8 = true;
    return b;
  }
  if (spec.kind === 'raw') return rawBody(c, limits, mutate);
  return multipartBody(spec.data, c, limits, mutate);
}

function jsonBody(schema: Json, c: Ctx, limit: number, mutate: boolean): { body: Body; kind: string } {
  const { d } = c;
  const JSON_TYPE = 'application/json';
  const top = mutate && d.chance(0.45);
  if (!top) {
    const v = jsonValue(schema, c, mutate);
    return { body: { bytes: encodeJson(v.value), type: JSON_TYPE }, kind: v.kind };
  }
  const valid = encodeJson(validValue(schema, c));
  const kind = d.pick(['not-object', 'syntax', 'syntax', 'empty', 'bom', 'oversized', 'at-limit', 'content-type', 'content-type', 'duplicate-keys', 'invalid-utf8', 'chunked', 'cut-short']);
  const b = (bytes: Buffer | string, extra: Partial<Body> = {}) => ({ body: { bytes: Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, 'latin1'), type: JSON_TYPE, ...extra }, kind });
  switch (kind) {
    case 'not-object':
      return b(d.pick(['[]', `[${valid.toString()}]`, '1', '"str"', 'null', 'true', '-0', '1e400']));
    case 'syntax': {
      const s = valid.toString('utf8');
      return b(
        d.pick([
          s.slice(0, d.int(1, Math.max(1, s.length - 1))),
          '{"a":1,}', "{'a':1}", '{"a":NaN}', `${s} x`, `${s}{}`, `/* c */${s}`, '{"a":"\\x41"}', '{"a":"\\u12"}', '{"a" 1}', '{', '}', '{"a":"open}',
          `\u0000${s}`, '{"a":01}', '{"a":.5}', '{"a":+1}', '{"a":Infinity}', '{"a":undefined}', '{"\\ud800":1}', '{"a":"\\uDC00\\uD800"}',
        ]),
      );
    }
    case 'empty':
      return b(d.pick(['', ' ', '\r\n\t ', '\u000b']));
    case 'bom':
      return b(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), valid]));
    case 'oversized':
      return b(Buffer.concat([valid, Buffer.alloc(Math.max(0, limit + 1 - valid.length) + d.pick([0, 1, 5000]), 0x20)]));
    case 'at-limit':
      return b(Buffer.concat([valid, Buffer.alloc(Math.max(0, limit - valid.length), 0x20)]));
    case 'content-type':
      return {
        body: {
          bytes: valid,
          type: d.pick([
            '', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json-patch+json', 'application/jsonx',
            'APPLICATION/JSON', 'application/json; charset=utf-16', 'application/json;', ' application/json', 'application/json\t', '*/*', 'json',
            'application/json, text/plain', 'application/vnd.fz+json; v=1', 'application/json; charset="\u00e9"',
          ]),
        },
        kind,
      };
    case 'duplicate-keys': {
      const s = valid.toString('utf8');
      return b(s.startsWith('{') && s.length > 2 ? `{"${d.pick(Object.keys((schema.properties ?? { a: 1 }) as Json).concat('a'))}":${d.pick(['1', 'null', '"x"', '[]'])},${s.slice(1)}` : s);
    }
    case 'invalid-utf8':
      return b(d.chance(0.5) ? Buffer.concat([Buffer.from([0xff, 0xfe]), valid]) : Buffer.concat([valid.subarray(0, -1), Buffer.from([0xc0]), valid.subarray(-1)]));
    case 'chunked':
      return b(valid, { chunked: true });
    default:
      return b(valid.subarray(0, Math.max(1, Math.floor(valid.length / 2))), { cutShort: true });
  }
}

function rawBody(c: Ctx, limits: FuzzLimits, mutate: boolean): { body: Body; kind: string } {
  const { d } = c;
  const type = d.pick(['text/plain', 'application/json', 'application/octet-stream', '']);
  if (!mutate) return { body: { bytes: Buffer.from(d.text(200), 'utf8'), type }, kind: 'valid' };
  const kind = d.pick(['invalid-utf8', 'nul', 'oversized', 'at-limit', 'utf8-surrogate', 'bom', 'empty', 'chunked', 'cut-short', 'binary', 'multibyte-over']);
  const b = (bytes: Buffer, extra: Partial<Body> = {}) => ({ body: { bytes, type, ...extra }, kind });
  switch (kind) {
    case 'invalid-utf8':
      return b(Buffer.from([0x66, 0xff, 0x7a, 0xc3, 0x28]));
    case 'nul':
      return b(Buffer.from('a\u0000b', 'latin1'));
    case 'oversized':
      return b(Buffer.alloc(limits.maxPayload + d.pick([1, 100, 70000]), 0x61));
    case 'at-limit':
      return b(Buffer.alloc(limits.maxPayload, 0x61));
    case 'utf8-surrogate':
      return b(Buffer.from([0xed, 0xa0, 0x80]));
    case 'bom':
      return b(Buffer.from('\ufeffpayload', 'utf8'));
    case 'empty':
      return b(Buffer.alloc(0));
    case 'chunked':
      return b(Buffer.from('chunked payload'), { chunked: true });
    case 'cut-short':
      return b(Buffer.from('cut'), { cutShort: true });
    case 'binary':
      return b(d.bytes(d.int(1, 5000)));
    default:
      return b(Buffer.from('\u00e9'.repeat(limits.maxPayload / 2 + 1), 'utf8'));
  }
}

function multipartBody(dataSchema: Json, c: Ctx, limits: FuzzLimits, mutate: boolean): { body: Body; kind: string } {
  const { d } = c;
  const boundary = `fzb${d.int(0, 99999999)}`;
  const type = `multipart/form-data; boundary=${boundary}`;
  const dataMutated = mutate && d.chance(0.35);
  const data = jsonValue(dataSchema, c, dataMutated);
  const dataJson = encodeJson(data.value);
  const notUtf8 = !isUtf8(dataJson);
  const file = d.chance(0.5) ? [filePart(validZip(d), d.pick(['code.zip', 'code', 'wörker.zip', '']))] : [];
  const ok = (parts: Part[], kind: string, extra: Partial<Body> = {}) => ({ body: { bytes: form(boundary, parts), type, ...(notUtf8 ? { notUtf8 } : {}), ...extra }, kind });
  if (!mutate || dataMutated) return ok([dataPart(dataJson, d.chance(0.2), d.chance(0.5)), ...file], mutate ? `data-${data.kind}` : 'valid');
  // A third broken zips, the rest broken forms.
  const kind = d.weighted<string>([
    [21, 'zip'],
    ...(['data-as-file', 'missing-data', 'truncated', 'truncated', 'no-closing-boundary', 'missing-boundary', 'wrong-boundary', 'garbage', 'oversized',
      'data-not-json', 'duplicate-data', 'many-parts', 'cut-short', 'content-type', 'part-headers', 'empty-file', 'data-invalid-utf8'] as const).map((k) => [2, k] as const),
  ]);
  const parts = [dataPart(dataJson), ...file];
  switch (kind) {
    case 'data-as-file':
      return ok([dataPart(dataJson, true, d.chance(0.5)), ...file], kind);
    case 'missing-data':
      return ok(file.length > 0 ? file : [filePart(validZip(d))], kind);
    case 'truncated': {
      const whole = form(boundary, parts);
      return { body: { bytes: whole.subarray(0, d.int(1, whole.length - 1)), type }, kind };
    }
    case 'no-closing-boundary':
      return { body: { bytes: form(boundary, parts, false), type }, kind };
    case 'missing-boundary':
      return { body: { bytes: form(boundary, parts), type: d.pick(['multipart/form-data', 'multipart/form-data; boundary=', 'multipart/form-data; boundary="unterminated', 'multipart/form-data; charset=utf-8']) }, kind };
    case 'wrong-boundary':
      return { body: { bytes: form(boundary, parts), type: `multipart/form-data; boundary=${d.pick(['other', `${boundary}x`, boundary.slice(1), 'a'.repeat(200)])}` }, kind };
    case 'garbage':
      return { body: { bytes: d.chance(0.5) ? d.bytes(d.int(1, 4000)) : Buffer.from(`--${boundary}\r\n\r\n--${boundary}--garbage\x00\xff`, 'latin1'), type }, kind };
    case 'oversized':
      return ok([dataPart(dataJson), filePart(Buffer.concat([validZip(d), d.bytes(limits.maxUploadBytes + d.pick([1, 1000]))]))], kind);
    case 'data-not-json':
      return ok([dataPart(Buffer.from(d.pick(['not json', '[1]', '"s"', '', 'null', '{', '1e400', '{"name":"x"} trailing'])), d.chance(0.3)), ...file], kind);
    case 'duplicate-data':
      return ok([dataPart(dataJson), dataPart(Buffer.from('{"name":"fz-second"}')), ...file], kind);
    case 'many-parts':
      return ok(
        [
          dataPart(dataJson),
          ...Array.from({ length: d.pick([25, 100]) }, (_, i) => ({ headers: `Content-Disposition: form-data; name="f${i}"`, body: Buffer.from('v') })),
          ...Array.from({ length: d.pick([1, 3, 5]) }, () => filePart(validZip(d))),
        ],
        kind,
      );
    case 'cut-short': {
      const whole = form(boundary, parts);
      return { body: { bytes: whole.subarray(0, d.int(1, whole.length - 1)), type, cutShort: true }, kind };
    }
    case 'content-type':
      return { body: { bytes: form(boundary, parts), type: d.pick(['application/json', '', 'multipart/mixed; boundary=' + boundary, `multipart/form-data; boundary="${boundary}"`, `MULTIPART/FORM-DATA; BOUNDARY=${boundary}`, 'text/plain']) }, kind };
    case 'part-headers':
      return ok(
        [
          {
            headers: d.pick([
              'Content-Type: application/json',
              'Content-Disposition: form-data',
              'Content-Disposition: form-data; name=data',
              "Content-Disposition: form-data; name*=UTF-8''data",
              'Content-Disposition: attachment; name="data"',
              `Content-Disposition: form-data; name="data"\r\nX-Long: ${'h'.repeat(d.pick([1000, 100000]))}`,
              'Content-Disposition: form-data; name="data"; filename="\u00e9\u0000.json"',
              'Content-Disposition: form-data; name="da\u0000ta"',
            ]),
            body: dataJson,
          },
          ...file,
        ],
        kind,
      );
    case 'empty-file':
      return ok([dataPart(dataJson), filePart(Buffer.alloc(0))], kind);
    case 'data-invalid-utf8':
      return ok([dataPart(Buffer.concat([Buffer.from('{"name":"fz-'), Buffer.from([0xff, 0xc0, 0x80]), Buffer.from('","image":"busybox"}')]), d.chance(0.5)), ...file], kind, { notUtf8: true });
    default: {
      const z = brokenZip(d, limits);
      return ok([dataPart(dataJson), filePart(z.zip, d.pick(['code.zip', 'x']))], `zip-${z.kind}`);
    }
  }
}

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'];

/**
 * One request for `op`: valid, or with one thing wrong (its kind says what: `body:boundary`,
 * `query:odd-encoding`, `auth:huge`, …). Drawn from `d`, so fixed by the run's seed.
 */
export function buildRequest(op: Operation, d: Draw, w: World, routes: Routes, limits: FuzzLimits = FUZZ_LIMITS): WireRequest {
  if (op === UNROUTED) return unrouted(d, w);
  const c: Ctx = { op: op.id, path: [], w, d };
  const categories: [number, Category][] = [
    [30, 'valid'],
    [op.auth ? 9 : 2, 'auth'],
    [op.params.length > 0 ? 10 : 0, 'path'],
    [Object.keys(op.query.props).length > 0 ? 12 : 3, 'query'],
    [op.body?.kind === 'multipart' ? 60 : op.body ? 32 : 4, 'body'],
    [4, 'method'],
    [4, 'headers'],
  ];
  const category = d.weighted(categories.filter(([n]) => n > 0));
  let kind = 'valid';
  const params: Record<string, string> = {};
  for (const p of op.params) params[p] = pathParam(p, c, false).value;
  if (category === 'path') {
    const p = d.pick(op.params);
    const m = pathParam(p, c, true);
    params[p] = m.value;
    kind = m.kind;
  }
  let query = validQuery(op, c);
  if (category === 'query') {
    const m = mutateQuery(op, query, c);
    query = m.pairs;
    kind = m.kind;
  }
  const auth = authHeaders(c, category === 'auth');
  if (category === 'auth') kind = auth.kind;
  let actor: WireRequest['actor'] = op.auth ? auth.actor : 'none';
  const body = makeBody(op, c, limits, category === 'body');
  if (category === 'body') kind = body.kind;
  let method = op.method;
  let raw = auth.raw ?? false;
  if (category === 'method') {
    const path = op.path.replace(/\{(\w+)\}/g, (_m, p: string) => params[p] ?? '');
    const here = routes.methods(path);
    kind = d.pick(['wrong-verb', 'wrong-verb', 'head', 'options', 'unknown', 'lowercase', 'connect', 'trace']);
    const others = METHODS.filter((m) => !here.includes(m));
    method = { 'wrong-verb': others.length > 0 ? d.pick(others) : 'PATCH', head: 'HEAD', options: 'OPTIONS', unknown: d.pick(['FOO', 'PROPFIND', 'PURGE']), lowercase: op.method.toLowerCase(), connect: 'CONNECT', trace: 'TRACE' }[kind]!;
    if (kind === 'connect' || kind === 'lowercase') raw = true;
  }
  const headers: [string, string][] = [...auth.headers, ['Accept', 'application/json']];
  if (body.body.type) headers.push(['Content-Type', body.body.type]);
  const sendsBody = body.body.bytes.length > 0 || ['POST', 'PUT', 'PATCH'].includes(method);
  if (sendsBody && !body.body.chunked) headers.push(['Content-Length', String(body.body.bytes.length + (body.body.cutShort ? 1000 : 0))]);
  if (body.body.chunked) headers.push(['Transfer-Encoding', 'chunked']);
  const extra: Partial<WireRequest> = {};
  if (category === 'headers') {
    kind = d.pick(['huge-header', 'many-headers', 'bad-content-length', 'te-and-cl', 'expect-continue', 'http10', 'absolute-form', 'no-host', 'forwarded', 'accept', 'upgrade', 'content-encoding', 'host-garbage']);
    switch (kind) {
      case 'huge-header':
        headers.push(['X-Fuzz', 'h'.repeat(d.pick([8 * 1024, 17 * 1024, 100 * 1024]))]);
        break;
      case 'many-headers':
        for (let i = 0; i < d.pick([100, 400, 3000]); i++) headers.push([`X-F${i}`, 'v'.repeat(20)]);
        break;
      case 'bad-content-length':
        for (let i = headers.length - 1; i >= 0; i--) if (headers[i]![0] === 'Content-Length') headers.splice(i, 1);
        headers.push(...d.pick<[string, string][]>([[['Content-Length', 'abc']], [['Content-Length', '-1']], [['Content-Length', '1'], ['Content-Length', '2']], [['Content-Length', '99999999999999999999']], [['Content-Length', ' 0x10']]]));
        raw = true;
        break;
      case 'te-and-cl':
        headers.push(['Transfer-Encoding', d.pick(['chunked', 'gzip, chunked', 'identity', 'chunked, chunked'])]);
        if (!headers.some(([k]) => k === 'Content-Length')) headers.push(['Content-Length', '0']);
        raw = true;
        break;
      case 'expect-continue':
        headers.push(['Expect', d.pick(['100-continue', '200-ok', 'x'])]);
        raw = true;
        break;
      case 'http10':
        extra.version = d.pick(['HTTP/1.0', 'HTTP/0.9', 'HTTP/2.0', 'HTTP/1.2', 'http/1.1']);
        raw = true;
        break;
      case 'absolute-form':
        raw = true;
        break;
      case 'no-host':
        extra.noHost = true;
        raw = true;
        break;
      case 'forwarded':
        headers.push(['X-Forwarded-For', d.pick(['garbage', '999.1.1.1, , x', '::1'.repeat(500), '\u00e9'])], ['X-Forwarded-Proto', d.pick(['gopher', 'https, http', ''])], ['X-Forwarded-Host', d.pick(['a b', '%00', 'x'.repeat(3000)])]);
        break;
      case 'accept':
        headers.splice(headers.findIndex(([k]) => k === 'Accept'), 1, ['Accept', d.pick(['text/html', 'application/xml', '*/*;q=0', 'image/png', ''])]);
        break;
      case 'upgrade':
        headers.push(['Upgrade', d.pick(['websocket', 'h2c', 'TLS/1.0'])], ['Connection', 'Upgrade']);
        raw = true;
        break;
      case 'content-encoding':
        headers.push(['Content-Encoding', d.pick(['gzip', 'br', 'deflate', 'identity', 'x-unknown'])]);
        break;
      default:
        headers.push(['X-Original-Host', 'x']);
        extra.noHost = true;
        headers.push(['Host', d.pick(['', 'a b', 'x'.repeat(300), '[::1', 'h:99999'])]);
        raw = true;
    }
  }
  if (!op.auth) actor = 'none';
  const unauthenticated = op.auth && category === 'auth' && actor === 'none';
  let target = op.path.replace(/\{(\w+)\}/g, (_m, p: string) => params[p] ?? '');
  const qs = queryString([...auth.query, ...query]);
  if (qs !== '') target += `?${qs}`;
  if (kind === 'absolute-form') target = `http://127.0.0.1${target}`;
  return {
    op: op.id,
    kind: `${category === 'valid' ? '' : `${category}:`}${kind}`,
    actor,
    params,
    method,
    target,
    headers,
    body: body.body.bytes,
    ...(raw ? { raw } : {}),
    ...(body.body.cutShort ? { cutShort: true } : {}),
    ...(body.body.chunked ? { chunked: true } : {}),
    ...(body.body.notUtf8 ? { notUtf8: true } : {}),
    ...(unauthenticated ? { unauthenticated } : {}),
    ...extra,
  };
}

/** Requests to paths and targets no operation has. */
function unrouted(d: Draw, w: World): WireRequest {
  const p = w.me.projectId;
  const kind = d.pick(['unknown-path', 'unknown-root', 'trailing-slash', 'double-slash', 'traversal', 'encoded-slash', 'long-path', 'star', 'case', 'dot-segment', 'bytes', 'empty-segment']);
  const target = {
    'unknown-path': d.pick([`/2/projects/${p}/nope`, '/2/nope', '/2/project', `/2/projects/${p}`, '/2', '/3/stacks', `/2/projects/${p}/codes/x/y/z`]),
    'unknown-root': d.pick(['/dashboard', '/favicon.ico', '/index.html', '/.env', '/api', '/healthz/x', '/metricsx']),
    'trailing-slash': d.pick(['/2/stacks/', `/2/projects/${p}/codes/`, '/healthz/', '/2/clusters/']),
    'double-slash': d.pick(['//2/stacks', '/2//stacks', `/2/projects//${p}/codes`, '/2/clusters//']),
    traversal: d.pick(['/2/../healthz', '/2/stacks/..', `/2/projects/${p}/codes/../tasks`, '/2/%2e%2e/healthz', '/..%2f..%2fetc/passwd']),
    'encoded-slash': d.pick([`/2/projects%2F${p}%2Fcodes`, '/2%2Fstacks', '/2/stacks%2F']),
    'long-path': `/2/${'a'.repeat(d.pick([1000, 8000, 20000]))}`,
    star: '*',
    case: d.pick(['/2/STACKS', '/2/Stacks', `/2/PROJECTS/${p}/codes`, '/HEALTHZ', '/2/Clusters']),
    'dot-segment': d.pick(['/2/./stacks', '/./healthz', '/2/stacks/.']),
    bytes: d.pick(['/2/st%00acks', '/2/%ED%A0%80', '/2/\u00e9', '/2/a b', '/2/a\tb']),
    'empty-segment': d.pick(['/2/projects/ /codes', `/2/projects/${p}/codes/%20`]),
  }[kind]!;
  const method = kind === 'star' ? d.pick(['OPTIONS', 'GET']) : d.pick(['GET', 'GET', 'POST', 'DELETE', 'PUT']);
  return {
    op: 'unrouted',
    kind: `unrouted:${kind}`,
    actor: 'me',
    params: {},
    method,
    target,
    headers: [['Authorization', `OAuth ${w.me.token}`], ...(method === 'POST' || method === 'PUT' ? ([['Content-Type', 'application/json'], ['Content-Length', '2']] as [string, string][]) : [])],
    body: method === 'POST' || method === 'PUT' ? Buffer.from('{}') : Buffer.alloc(0),
    ...(kind === 'bytes' || kind === 'star' || kind === 'empty-segment' ? { raw: true } : {}),
  };
}

// ---------------------------------------------------------------------------- the fuzzer

/** A failed oracle check, with what it takes to reproduce it. */
export interface Failure {
  op: string;
  kind: string;
  problems: string[];
  status: number;
  reply: string;
  request: Json;
  /** fast-check's seed and path of the run that made it, when known. */
  seed?: number;
  path?: string;
}

/** What kind of fault a failure is: the same fault shows on many operations and requests. */
export function faultKey(f: Failure): string {
  const blank = (p: string) =>
    p
      .replace(/[0-9a-f]{24}/g, '<id>')
      .replace(/\b(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) \//g, 'M /')
      .replace(/\/[^\s:]*/g, '<path>')
      .replace(/\d+/g, 'N');
  return `${f.kind} | ${f.problems.map(blank).join(' / ').slice(0, 200)}`;
}

/** Counts of what was sent and how it was answered. */
export class FuzzStats {
  requests = 0;
  readonly byClass: Record<string, number> = {};
  readonly byOp: Record<string, Record<string, number>> = {};
  readonly byKind: Record<string, number> = {};
  readonly latencies: number[] = [];
  maxMs = 0;
  slowest = '';
  failureCount = 0;
  readonly failures: Failure[] = [];

  record(req: WireRequest, reply: WireReply): void {
    this.requests++;
    const cls = reply.error ? 'none' : `${Math.floor(reply.status / 100)}xx`;
    this.byClass[cls] = (this.byClass[cls] ?? 0) + 1;
    const o = (this.byOp[req.op] ??= {});
    o.n = (o.n ?? 0) + 1;
    o[cls] = (o[cls] ?? 0) + 1;
    this.byKind[req.kind] = (this.byKind[req.kind] ?? 0) + 1;
    if (!reply.error) {
      this.latencies.push(reply.ms);
      if (reply.ms > this.maxMs) {
        this.maxMs = reply.ms;
        this.slowest = `${req.op} ${req.kind} ${reply.status}`;
      }
    }
  }

  /** Failures by kind of fault: the kind of input and the problems with ids, paths and numbers blanked. */
  readonly faults = new Map<string, { count: number; first: Failure }>();

  fail(f: Failure, keep = 50): void {
    this.failureCount++;
    if (this.failures.length < keep) this.failures.push(f);
    const key = faultKey(f);
    const g = this.faults.get(key);
    if (g) g.count++;
    else this.faults.set(key, { count: 1, first: f });
  }

  /** Accepted (2xx) and rejected (4xx) replies of one operation. */
  accepted(op: string): number {
    return this.byOp[op]?.['2xx'] ?? 0;
  }

  rejected(op: string): number {
    return this.byOp[op]?.['4xx'] ?? 0;
  }

  percentile(p: number): number {
    const s = [...this.latencies].sort((a, b) => a - b);
    return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
  }
}

/** Where requests go and how rows are checked. */
export interface FuzzTarget {
  send(req: WireRequest): Promise<WireReply>;
  rows: RowOracle;
}

/**
 * Sends generated requests and judges each reply. `setup()` first makes the resources path
 * parameters name (two code packages, tasks, a schedule, a cluster; the other user's too);
 * `step()` makes, sends and judges one request and returns its problems.
 */
export class Fuzzer {
  readonly operations: Operation[];
  readonly routes: Routes;
  readonly stats = new FuzzStats();
  private made = 0;

  constructor(
    private readonly target: FuzzTarget,
    readonly world: World,
    readonly limits: FuzzLimits = FUZZ_LIMITS,
  ) {
    this.operations = documentOperations();
    this.routes = new Routes(this.operations);
  }

  op(id: string): Operation {
    const o = this.operations.find((x) => x.id === id);
    if (!o) throw new Error(`no operation ${id} in the document`);
    return o;
  }

  /** Sends one request and judges the reply; records both. */
  async exec(req: WireRequest, ref: { seed?: number; path?: string } = {}): Promise<{ reply: WireReply; problems: string[] }> {
    await this.target.rows.before(req);
    const reply = await this.target.send(req);
    const problems = judgeReply(req, reply, this.routes);
    problems.push(...(await this.target.rows.after(req, reply)));
    this.stats.record(req, reply);
    const op = this.operations.find((o) => o.id === req.op);
    if (op && !reply.error) this.world.learn(op, req, reply);
    if (problems.length > 0) {
      this.stats.fail({ op: req.op, kind: req.kind, problems, status: reply.status, reply: reply.body.toString('utf8').slice(0, 300), request: reproOf(req), ...ref });
    }
    return { reply, problems };
  }

  /** A request of the API the fuzzer needs to succeed (setup, liveness): fails loudly otherwise. */
  async must(opId: string, as: Identity, o: { params?: Record<string, string>; json?: unknown; form?: Buffer; boundary?: string; target?: string }): Promise<Json> {
    const op = this.op(opId);
    let target = o.target ?? op.path.replace(/\{(\w+)\}/g, (_m, p: string) => o.params?.[p] ?? (p === 'projectId' ? as.projectId : ''));
    if (target.includes('{')) throw new Error(`missing path parameter for ${opId}`);
    const headers: [string, string][] = [['Authorization', `OAuth ${as.token}`]];
    let body: Buffer = Buffer.alloc(0);
    if (o.json !== undefined) {
      body = Buffer.from(JSON.stringify(o.json));
      headers.push(['Content-Type', 'application/json']);
    } else if (o.form) {
      body = o.form;
      headers.push(['Content-Type', `multipart/form-data; boundary=${o.boundary}`]);
    }
    if (op.method !== 'GET') headers.push(['Content-Length', String(body.length)]);
    const req: WireRequest = { op: op.id, kind: 'setup', actor: as === this.world.me ? 'me' : 'other', params: o.params ?? {}, method: op.method, target, headers, body };
    const { reply, problems } = await this.exec(req);
    if (reply.status !== 200 || problems.length > 0) throw new Error(`${op.method} ${target} answered ${reply.status}: ${reply.body.toString('utf8').slice(0, 300)} ${problems.join('; ')}`);
    return JSON.parse(reply.body.toString('utf8')) as Json;
  }

  private async upload(as: Identity, name: string, zip?: Buffer): Promise<Json> {
    const boundary = `setup${++this.made}`;
    const parts = [dataPart(Buffer.from(JSON.stringify({ name, image: 'gantry-test/busybox:latest', command: 'true' })))];
    if (zip) parts.push(filePart(zip));
    return this.must('uploadCode', as, { form: form(boundary, parts), boundary });
  }

  /** Makes the resources requests name, for both users. */
  async setup(): Promise<void> {
    const w = this.world;
    const zip = makeZip([{ name: 'run.sh', data: Buffer.from('echo hi\n') }]);
    await this.upload(w.me, 'fz-alpha', zip);
    await this.upload(w.me, 'fz-beta');
    const queued = await this.must('queueTasks', w.me, { json: { tasks: [{ code_name: 'fz-alpha', payload: 'p' }, { code_name: 'fz-alpha' }, { code_name: 'fz-beta', delay: 60 }] } });
    await this.must('cancelTask', w.me, { params: { projectId: w.me.projectId, taskId: (queued.tasks as Json[])[0]!.id as string } });
    await this.must('requeueJobs', w.me, { json: { job_ids: [(queued.tasks as Json[])[0]!.id], status: 'CANCELED' } });
    await this.must('createSchedules', w.me, { json: { schedules: [{ code_name: 'fz-alpha', run_every: 3600, start_at: new Date(Date.now() + 86400_000).toISOString() }] } });
    await this.must('createCluster', w.me, { json: { name: `fzc-setup-${this.made}` } });
    const fcode = await this.upload(w.other, 'fz-foreign', zip);
    const ftasks = await this.must('queueTasks', w.other, { json: { tasks: [{ code_name: 'fz-foreign' }] } });
    const fsched = await this.must('createSchedules', w.other, { json: { schedules: [{ code_name: 'fz-foreign', run_every: 3600, start_at: new Date(Date.now() + 86400_000).toISOString() }] } });
    const fcluster = await this.must('createCluster', w.other, { json: { name: 'fzc-foreign' } });
    Object.assign(w.foreign, {
      codeId: fcode.id,
      codeName: fcode.name,
      taskId: (ftasks.tasks as Json[])[0]!.id,
      scheduleId: (fsched.schedules as Json[])[0]!.id,
      clusterId: fcluster.id,
      clusterName: fcluster.cluster.name,
    });
  }

  /** Puts back what fuzzing took away: a live code package and a live cluster (when the quota allows). */
  async replenish(): Promise<void> {
    const w = this.world;
    if (w.liveCodes().length === 0) await this.upload(w.me, `fz-again-${++this.made}`, makeZip([{ name: 'run.sh', data: Buffer.from('echo hi\n') }]));
    if (w.liveClusters().length === 0) {
      try {
        await this.must('createCluster', w.me, { json: { name: `fzc-again-${++this.made}` } });
      } catch (err) {
        // The user's cluster quota may be used up by clusters made while fuzzing (403): stale ids do.
        if (!/answered 403/.test((err as Error).message)) throw err;
      }
    }
  }

  /** One generated request for `op`, sent and judged; returns the oracle's problems. */
  async step(op: Operation, g: GeneratorValue, ref: { seed?: number; path?: string } = {}): Promise<{ req: WireRequest; reply: WireReply; problems: string[] }> {
    await this.replenish();
    const req = buildRequest(op, new Draw(g), this.world, this.routes, this.limits);
    req.ref = ref;
    const { reply, problems } = await this.exec(req, ref);
    return { req, reply, problems };
  }

  /** The process serves: /healthz and an authenticated request both answer 200. */
  async liveness(): Promise<void> {
    await this.must('healthz', this.world.me, {});
    await this.must('listStacks', this.world.me, {});
  }
}
