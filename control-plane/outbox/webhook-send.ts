import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { urlToHttpOptions } from 'node:url';
import { checkReceiverUrl, guardedLookup, type EgressPolicy } from '../../lib/egress.ts';

/**
 * One webhook delivery attempt, signed as the Standard Webhooks specification says
 * (https://www.standardwebhooks.com): `webhook-id` is the delivery's id, the same on every
 * attempt, so a receiver drops duplicates by it; `webhook-timestamp` is this attempt's time;
 * `webhook-signature` holds one `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` per
 * secret, so during a rotation a receiver holding either the new or the previous secret
 * verifies. Receivers can use any Standard Webhooks library.
 */

const SECRET_PREFIX = 'whsec_';

/** A new project signing secret: 'whsec_' and the base64 of 32 random bytes (the Standard Webhooks format). */
export function newSigningSecret(): string {
  return SECRET_PREFIX + crypto.randomBytes(32).toString('base64');
}

/**
 * The key bytes of a 'whsec_…' secret.
 *
 * @throws Error when it is malformed; the message never repeats the secret.
 */
export function signingKey(secret: string): Buffer {
  if (!secret.startsWith(SECRET_PREFIX)) throw new Error(`a signing secret starts with ${SECRET_PREFIX}`);
  const b64 = secret.slice(SECRET_PREFIX.length);
  if (b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) throw new Error(`a signing secret is ${SECRET_PREFIX} followed by base64`);
  const key = Buffer.from(b64, 'base64');
  // The specification's bounds: shorter keys are guessable, longer ones add nothing to HMAC-SHA256.
  if (key.length < 24 || key.length > 64) throw new Error(`a signing secret holds 24 to 64 bytes, not ${key.length}`);
  return key;
}

/** The `webhook-signature` value: one `v1,<signature>` per key, in the order given (newest first), space-separated. */
export function signatureHeader(id: string, timestampS: number, body: string, keys: readonly Buffer[]): string {
  if (keys.length === 0) throw new RangeError('a webhook is signed with at least one key');
  const signed = `${id}.${timestampS}.${body}`;
  return keys.map((k) => `v1,${crypto.createHmac('sha256', k).update(signed, 'utf8').digest('base64')}`).join(' ');
}

export interface WebhookAttempt {
  url: string;
  /** The delivery id: webhook-id and idempotency-key, the same on every attempt. */
  id: string;
  /** The gantry-event header: which lists of the task named this receiver. */
  event: string;
  body: string;
  /** Signing keys, newest first (signingKey of each secret). */
  keys: readonly Buffer[];
  /** This attempt's time, unix seconds. */
  timestampS: number;
  /** Bound on the whole attempt: lookup, connect, TLS, the answer's headers and the body read. */
  timeoutMs: number;
  /**
   * Keep-alive pools to send through (webhookAgents), reusing a receiver's connection from one
   * attempt to the next; without them each attempt opens its own.
   */
  agents?: WebhookAgents;
  /** Bytes of the answer's body read at most; the connection is dropped after them. */
  maxResponseBytes: number;
  policy: EgressPolicy;
}

/** What one attempt at a delivery (a webhook or an e-mail) came to. */
export interface SendResult {
  /** The receiver took it: a 2xx, or an SMTP server's acceptance. */
  ok: boolean;
  /** The HTTP status, or the SMTP reply code when known. */
  statusCode?: number;
  /** Why it failed, in words for the tenant reading the delivery's attempts. */
  error?: string;
  /** Retrying cannot help: 410 Gone, a URL the policy refuses, a 5xx SMTP reply. */
  permanent?: boolean;
  latencyMs: number;
  /** The start of the receiver's answer (at most 512 bytes, as UTF-8 text), for the tenant to debug with. */
  response?: string;
}

/** Bytes of the answer kept in SendResult.response. */
const RESPONSE_KEPT = 512;
/** Longest Location quoted in an error: the header is the receiver's to fill. */
const LOCATION_SHOWN = 512;

/**
 * Connection pools for webhook attempts, one pair per sender: a receiver taking hundreds of
 * deliveries a second gets them over a few kept-open connections instead of a new TCP (and
 * TLS) handshake each. Safe with the egress checks: a pooled socket is one that connected to
 * an address guardedLookup (or checkReceiverUrl, for a literal IP) allowed, under the same
 * policy, since the pools belong to one sender with one policy. An idle socket is closed
 * after FREE_SOCKET_MS, or sooner when the receiver's Keep-Alive header says it will.
 */
export interface WebhookAgents {
  http: http.Agent;
  https: https.Agent;
}

/** Idle connections kept open this long (under the 5 s most servers keep them, so a send rarely meets one closing). */
const FREE_SOCKET_MS = 4000;
/** Idle connections kept per receiver (host and port) at most. */
const FREE_SOCKETS = 32;

export function webhookAgents(): WebhookAgents {
  const o = { keepAlive: true, timeout: FREE_SOCKET_MS, maxFreeSockets: FREE_SOCKETS, scheduling: 'lifo' as const };
  return { http: new http.Agent(o), https: new https.Agent(o) };
}

/**
 * POSTs one delivery to its receiver and says how it went; never throws.
 *
 * The URL is checked again before the send (the policy may have changed since the API took
 * it, and a literal IP host is connected to without a lookup), and every address a host name
 * resolves to is checked as the socket connects (guardedLookup). Through `agents` a
 * connection is reused only when the answer was read to its end; one the receiver closed
 * while it sat idle (a reset on the first write) is retried once on a new connection.
 * Redirects are not followed: the Location would be a second, unchecked target.
 */
export async function sendWebhook(a: WebhookAttempt): Promise<SendResult> {
  const started = performance.now();
  const result = (r: Omit<SendResult, 'latencyMs'>): SendResult => ({ ...r, latencyMs: Math.round(performance.now() - started) });
  const checked = checkReceiverUrl(a.url, a.policy);
  if (!checked.ok) return result({ ok: false, error: `refused: ${checked.reason}`, permanent: true });
  const url = checked.url;
  let headers: Record<string, string | number>;
  try {
    const signature = signatureHeader(a.id, a.timestampS, a.body, a.keys);
    headers = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(a.body),
      'user-agent': 'Gantry-Webhooks/1',
      'webhook-id': a.id,
      'webhook-timestamp': String(a.timestampS),
      'webhook-signature': signature,
      'idempotency-key': a.id,
      'gantry-event': a.event,
    };
  } catch (err) {
    return result({ ok: false, error: `not sent: ${(err as Error).message}` });
  }

  return new Promise<SendResult>((resolve) => {
    let req: http.ClientRequest | undefined;
    let settled = false;
    /** `reuse`: the answer was read to its end, so the connection may carry the next attempt. */
    const finish = (r: Omit<SendResult, 'latencyMs'>, reuse = false): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // Otherwise ends the socket whatever state it is in: a body still arriving is not read further.
      if (!reuse || !a.agents) req?.destroy();
      resolve(result(r));
    };
    const timer = setTimeout(() => finish({ ok: false, error: `timed out after ${a.timeoutMs} ms` }), a.timeoutMs);
    const agent = a.agents ? (url.protocol === 'https:' ? a.agents.https : a.agents.http) : false;
    const send = (retried: boolean): void => {
      let r: http.ClientRequest;
      try {
        const options: http.RequestOptions = { ...urlToHttpOptions(url), method: 'POST', headers, agent, lookup: guardedLookup(a.policy) };
        r = (url.protocol === 'https:' ? https : http).request(options, (res) =>
          readAnswer(res, a.maxResponseBytes, (text, whole) => finish(judgeAnswer(res, text, url), whole)),
        );
      } catch (err) {
        // Header values Node refuses (a newline in the event name, say) throw here.
        finish({ ok: false, error: `not sent: ${(err as Error).message}` });
        return;
      }
      req = r;
      r.on('error', (err) => {
        if (settled || r !== req) return;
        // A kept-open connection the receiver had closed: nothing reached it; send again on a new one.
        if (!retried && r.reusedSocket && (err as NodeJS.ErrnoException).code === 'ECONNRESET') return send(true);
        finish(failure(err, url));
      });
      r.end(a.body);
    };
    send(false);
  });
}

/**
 * Reads at most `max` bytes of the body, then calls `done` once with the first RESPONSE_KEPT
 * of them, and whether the body was read to its end.
 */
function readAnswer(res: http.IncomingMessage, max: number, done: (text: string, whole: boolean) => void): void {
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let read = 0;
  let called = false;
  const end = (whole: boolean): void => {
    if (called) return;
    called = true;
    done(Buffer.concat(kept).toString('utf8'), whole);
  };
  if (max <= 0) {
    end(false);
    return;
  }
  res.on('data', (chunk: Buffer) => {
    const part = chunk.subarray(0, max - read);
    read += part.length;
    if (keptBytes < RESPONSE_KEPT) {
      const k = part.subarray(0, RESPONSE_KEPT - keptBytes);
      kept.push(k);
      keptBytes += k.length;
    }
    if (read >= max) end(false);
  });
  res.on('end', () => end(true));
  // A body cut short still leaves the status the receiver answered with.
  res.on('error', () => end(false));
  res.on('close', () => end(false));
}

function judgeAnswer(res: http.IncomingMessage, text: string, url: URL): Omit<SendResult, 'latencyMs'> {
  const statusCode = res.statusCode ?? 0;
  const response = text === '' ? undefined : text;
  if (statusCode >= 200 && statusCode < 300) return { ok: true, statusCode, response };
  if (statusCode >= 300 && statusCode < 400) {
    const location = res.headers.location;
    if (location === undefined) return { ok: false, statusCode, response, error: `answered ${statusCode}, a redirect without a Location` };
    let target: string;
    try {
      target = new URL(location, url).href;
    } catch {
      target = location;
    }
    if (target.length > LOCATION_SHOWN) target = `${target.slice(0, LOCATION_SHOWN)}…`;
    return { ok: false, statusCode, response, error: `redirected to ${target}: redirects are not followed; give the final URL` };
  }
  // 410 Gone is the receiver saying the endpoint is retired.
  if (statusCode === 410) return { ok: false, statusCode, response, permanent: true, error: 'answered 410 (Gone): not retried' };
  return { ok: false, statusCode, response, error: `answered ${statusCode}` };
}

/** TLS verification failures, as OpenSSL names them (the mailer reads them too). */
export const CERT_CODES = new Set([
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** A request error in words; the one place Node's error codes are translated. */
function failure(err: unknown, url: URL): Omit<SendResult, 'latencyMs'> {
  const e = err as NodeJS.ErrnoException;
  // When Node tries several addresses (autoSelectFamily) and all fail, it reports them together.
  const code = e.code ?? (err instanceof AggregateError ? (err.errors[0] as NodeJS.ErrnoException | undefined)?.code : undefined);
  const host = url.hostname;
  if (code === 'EGRESS_BLOCKED') return { ok: false, permanent: true, error: e.message };
  if (code === 'ECONNREFUSED') return { ok: false, error: 'connection refused' };
  if (code === 'ECONNRESET') return { ok: false, error: 'the connection was reset before an answer' };
  if (code === 'ENOTFOUND') return { ok: false, error: `${host} does not resolve (no such host)` };
  if (code === 'EAI_AGAIN') return { ok: false, error: `${host} could not be resolved (DNS failure)` };
  if (code === 'ETIMEDOUT') return { ok: false, error: 'connecting timed out' };
  if (code === 'EHOSTUNREACH') return { ok: false, error: 'the host is unreachable' };
  if (code === 'ENETUNREACH') return { ok: false, error: 'the network is unreachable' };
  if (code && CERT_CODES.has(code)) return { ok: false, error: `the receiver's TLS certificate is not accepted: ${e.message}` };
  if (code === 'EPROTO' || code?.startsWith('ERR_SSL_')) return { ok: false, error: `TLS failed: ${e.message}` };
  if (code?.startsWith('HPE_')) return { ok: false, error: `the answer is not valid HTTP: ${e.message}` };
  return { ok: false, error: e.message || String(err) };
}
