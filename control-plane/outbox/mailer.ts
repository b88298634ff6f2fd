import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import nodemailer, { type NodemailerError, type SMTPSentMessageInfo, type Transporter } from 'nodemailer';
import { EnvReader } from '../../lib/env.ts';
import { ConfigError } from '../../lib/errors.ts';
import { CERT_CODES, type SendResult } from './webhook-send.ts';

/**
 * E-mail notifications of task outcomes, through the operator's SMTP server (nodemailer).
 * Gantry relays to one configured server and never looks up recipients' MX hosts, so the
 * tenant's address decides only who receives the mail, not where Gantry connects.
 */

/**
 * How Gantry reaches the SMTP server.
 *
 * `security`: 'tls' speaks TLS from the first byte (usually port 465); 'starttls' requires the
 * server to upgrade with STARTTLS before anything else is sent, and fails rather than go on in
 * clear, so credentials and messages never cross the network unencrypted; 'none' sends
 * everything in clear, credentials included, and is only for a relay on a trusted network
 * (the same host, a private segment).
 *
 * `password` is not enumerable: the config is logged at start, and a spread or JSON copy of
 * it leaves the password out; `cfg.password` still reads it.
 */
export interface SmtpConfig {
  host: string;
  port: number;
  security: 'tls' | 'starttls' | 'none';
  user?: string;
  password?: string;
  from: string;
  timeoutMs: number;
  /** PEM certificates trusted for the server instead of the system's (GANTRY_SMTP_TLS_CA), for a relay with a private CA. */
  tlsCa?: string;
}

const SMTP_VARIABLES = [
  'GANTRY_SMTP_PORT',
  'GANTRY_SMTP_SECURITY',
  'GANTRY_SMTP_USER',
  'GANTRY_SMTP_PASSWORD',
  'GANTRY_SMTP_FROM',
  'GANTRY_SMTP_TIMEOUT_MS',
  'GANTRY_SMTP_TLS_CA',
] as const;

/**
 * The SMTP server from the environment: GANTRY_SMTP_HOST (unset: no e-mail),
 * GANTRY_SMTP_SECURITY (starttls, the default; tls; none), GANTRY_SMTP_PORT (587, or 465 with
 * tls), GANTRY_SMTP_USER and GANTRY_SMTP_PASSWORD (both or neither), GANTRY_SMTP_FROM
 * (gantry@<host>; an address, or `Name <address>`), GANTRY_SMTP_TIMEOUT_MS (10000),
 * GANTRY_SMTP_TLS_CA (a PEM file to trust, read now).
 *
 * @throws ConfigError naming the variable.
 */
export function smtpConfigFromEnv(env: Record<string, string | undefined>): SmtpConfig | undefined {
  const e = new EnvReader(env);
  const host = e.str('GANTRY_SMTP_HOST')?.trim();
  if (host === undefined || host === '') {
    // A half-done setup would otherwise silently send no mail.
    const stray = SMTP_VARIABLES.find((name) => e.str(name) !== undefined);
    if (stray) throw new ConfigError(`${stray} is set but GANTRY_SMTP_HOST is not: set GANTRY_SMTP_HOST to the SMTP server to send e-mail`);
    return undefined;
  }
  if (!/^[A-Za-z0-9._-]+$/.test(host) && !net.isIPv6(host)) {
    throw new ConfigError(`GANTRY_SMTP_HOST must be a host name or an IP address (no scheme, no port), got ${JSON.stringify(host)}`);
  }
  const security = e.oneOf('GANTRY_SMTP_SECURITY', 'starttls', ['starttls', 'tls', 'none'] as const);
  const port = e.int('GANTRY_SMTP_PORT', security === 'tls' ? 465 : 587, { min: 1, max: 65535 });
  const user = e.str('GANTRY_SMTP_USER');
  const password = e.str('GANTRY_SMTP_PASSWORD');
  if ((user === undefined) !== (password === undefined)) {
    throw new ConfigError(`GANTRY_SMTP_USER and GANTRY_SMTP_PASSWORD go together: set both, or neither for a relay that needs no login (${user === undefined ? 'GANTRY_SMTP_USER' : 'GANTRY_SMTP_PASSWORD'} is missing)`);
  }
  const fromSet = e.str('GANTRY_SMTP_FROM');
  const from = fromSet ?? `gantry@${host}`;
  if (fromSet === undefined && (net.isIP(host) || checkFrom(from))) {
    throw new ConfigError(`GANTRY_SMTP_FROM must be set: the default, gantry@${host}, is not an address mail can come from`);
  }
  const fromProblem = checkFrom(from);
  if (fromProblem) throw new ConfigError(`GANTRY_SMTP_FROM ${JSON.stringify(from)}: ${fromProblem}`);
  const timeoutMs = e.int('GANTRY_SMTP_TIMEOUT_MS', 10_000, { min: 100, max: 600_000 });
  const caFile = e.str('GANTRY_SMTP_TLS_CA');
  let tlsCa: string | undefined;
  if (caFile !== undefined) {
    if (security === 'none') throw new ConfigError('GANTRY_SMTP_TLS_CA is set but GANTRY_SMTP_SECURITY is none: no TLS is spoken to trust it for');
    try {
      tlsCa = fs.readFileSync(caFile, 'utf8');
    } catch (err) {
      throw new ConfigError(`GANTRY_SMTP_TLS_CA: cannot read ${caFile} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    const certs = tlsCa.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
    if (certs.length === 0) throw new ConfigError(`GANTRY_SMTP_TLS_CA: ${caFile} holds no PEM certificate`);
    // TLS would skip a certificate it cannot parse and fail later with "not trusted"; say so now.
    for (const pem of certs) {
      try {
        new X509Certificate(pem);
      } catch (err) {
        throw new ConfigError(`GANTRY_SMTP_TLS_CA: ${caFile} holds a certificate that does not load: ${(err as Error).message}`);
      }
    }
  }
  const cfg: SmtpConfig = { host, port, security, from, timeoutMs };
  if (user !== undefined) cfg.user = user;
  if (tlsCa !== undefined) cfg.tlsCa = tlsCa;
  if (password !== undefined) Object.defineProperty(cfg, 'password', { value: password, enumerable: false });
  return Object.freeze(cfg);
}

/**
 * GANTRY_SMTP_FROM: an address, or a display name and the address in angle brackets. Unlike
 * a tenant's address its domain may be a single label (gantry@mailhost): the operator's own
 * relay may well accept that.
 */
function checkFrom(from: string): string | undefined {
  const named = /^([^<>"\r\n,;]*)<([^<>]*)>$/.exec(from);
  return addressProblem(named ? named[2]! : from, true);
}

/** One notification e-mail. */
export interface Mail {
  to: string;
  subject: string;
  text: string;
  /** '<delivery-id@gantry>': the same on every attempt, so mail clients and relays can drop duplicates. */
  messageId: string;
  headers?: Record<string, string>;
}


/**
 * Sends notification e-mails through one SMTP server, a connection per message (a few
 * notifications a minute do not need a pool, and a fresh connection has no state left from
 * an earlier failure). Never logs through nodemailer: its debug output carries the AUTH
 * exchange.
 */
export class Mailer {
  private readonly transport: Transporter<SMTPSentMessageInfo>;
  private readonly cfg: SmtpConfig;

  constructor(cfg: SmtpConfig) {
    this.cfg = cfg;
    const tls = { minVersion: 'TLSv1.2' as const, ...(cfg.tlsCa === undefined ? {} : { ca: cfg.tlsCa }) };
    this.transport = nodemailer.createTransport({
      host: cfg.host,
      port: cfg.port,
      secure: cfg.security === 'tls',
      requireTLS: cfg.security === 'starttls',
      ignoreTLS: cfg.security === 'none',
      ...(cfg.user === undefined ? {} : { auth: { user: cfg.user, pass: cfg.password ?? '' } }),
      tls,
      connectionTimeout: cfg.timeoutMs,
      greetingTimeout: cfg.timeoutMs,
      socketTimeout: cfg.timeoutMs,
      dnsTimeout: cfg.timeoutMs,
      logger: false,
      debug: false,
      transactionLog: false,
    });
  }

  /**
   * Sends one message; never throws. The whole exchange is bounded by timeoutMs (each
   * phase's own timeout could otherwise add up). `statusCode` is the server's SMTP reply
   * code when there was one; `permanent` marks a 5xx reply to the message, which retrying
   * would get again. A refused login is not permanent: it is the operator's setting that is
   * wrong, and the message can go once it is fixed.
   */
  async send(m: Mail): Promise<SendResult> {
    const started = performance.now();
    const result = (r: Omit<SendResult, 'latencyMs'>): SendResult => ({ ...r, latencyMs: Math.round(performance.now() - started) });
    const bad = checkEmailAddress(m.to);
    if (bad) return result({ ok: false, permanent: true, error: `not sent: ${bad}` });
    if (!/^<[^<>\s@]+@[^<>\s@]+>$/.test(m.messageId)) return result({ ok: false, error: `not sent: ${JSON.stringify(m.messageId)} is not a Message-ID (<id@domain>)` });
    try {
      const info = await this.transport.sendMail({
        from: this.cfg.from,
        to: m.to,
        subject: m.subject,
        text: m.text,
        messageId: m.messageId,
        // RFC 3834: out-of-office and other auto-responders do not answer an automatic message.
        headers: { 'Auto-Submitted': 'auto-generated', ...m.headers },
        signal: AbortSignal.timeout(this.cfg.timeoutMs),
      });
      const response = this.scrub(String(info.response ?? ''));
      const code = /^(\d{3})/.exec(response)?.[1];
      return result({ ok: true, ...(code ? { statusCode: Number(code) } : {}), ...(response ? { response: response.slice(0, 512) } : {}) });
    } catch (err) {
      return result(this.failure(err));
    }
  }

  /** A nodemailer error in words; the one place its codes are translated. */
  private failure(err: unknown): Omit<SendResult, 'latencyMs'> {
    const e = err as NodemailerError;
    const reply = e.response ? this.scrub(e.response).slice(0, 512) : undefined;
    const withReply = (r: Omit<SendResult, 'latencyMs'>): Omit<SendResult, 'latencyMs'> => ({
      ...r,
      ...(e.responseCode ? { statusCode: e.responseCode } : {}),
      ...(reply ? { response: reply } : {}),
    });
    const server = `the SMTP server ${this.cfg.host}:${this.cfg.port}`;
    const message = this.scrub(e.message).trim();
    const sys = e.originalCode ?? e.code;
    if (e.name === 'AbortError' || e.name === 'TimeoutError' || e.code === 'ETIMEDOUT' || e.code === 'EABORT') {
      return withReply({ ok: false, error: `timed out after ${this.cfg.timeoutMs} ms talking to ${server}` });
    }
    // A login refused or missing (RFC 4954: 530, 534, 535, 538) is the operator's setting, whatever the reply class.
    if (e.code === 'EAUTH' || e.code === 'ENOAUTH' || (e.responseCode !== undefined && [530, 534, 535, 538].includes(e.responseCode))) {
      return withReply({ ok: false, error: `${server} refused the login (GANTRY_SMTP_USER, GANTRY_SMTP_PASSWORD): ${reply ?? message}` });
    }
    if (sys !== undefined && CERT_CODES.has(sys)) return { ok: false, error: `the certificate of ${server} is not trusted (GANTRY_SMTP_TLS_CA): ${message}` };
    if (e.code === 'ETLS' || (e.code === 'ESOCKET' && /STARTTLS/i.test(e.message))) {
      return withReply({ ok: false, error: `TLS with ${server} failed: ${message}` });
    }
    if (sys === 'EPROTO' || sys?.startsWith('ERR_SSL_')) {
      return { ok: false, error: `TLS with ${server} failed (is GANTRY_SMTP_SECURITY right for port ${this.cfg.port}?): ${message}` };
    }
    if (e.responseCode !== undefined) {
      // nodemailer's own verdict where it gives one: it also reads 503 (bad sequence of
      // commands) as a session's fault that a new connection does not repeat.
      const permanent = e.permanent ?? (e.responseCode >= 500 && e.responseCode < 600);
      const what = e.code === 'EENVELOPE' ? 'refused the message' : 'answered';
      return withReply({ ok: false, permanent, error: `${server} ${what}: ${reply ?? message}` });
    }
    if (sys === 'ECONNREFUSED') return { ok: false, error: `connection to ${server} refused` };
    if (sys === 'ENOTFOUND' || sys === 'EDNS') return { ok: false, error: `${this.cfg.host} does not resolve (GANTRY_SMTP_HOST)` };
    if (sys === 'ECONNRESET' || sys === 'ECONNECTION') return { ok: false, error: `${server} closed the connection: ${message}` };
    return withReply({ ok: false, error: `sending through ${server} failed: ${message}` });
  }

  /**
   * Text from the server or nodemailer with the password taken out, in any form it crosses
   * the wire in (plain, or base64 in AUTH PLAIN and LOGIN), should a server echo it back.
   */
  private scrub(text: string): string {
    const { user, password } = this.cfg;
    if (!password) return text;
    const forms = [password, Buffer.from(password).toString('base64'), Buffer.from(`\0${user ?? ''}\0${password}`).toString('base64')];
    let out = text;
    for (const f of forms) out = out.split(f).join('[redacted]');
    return out;
  }

  /** Closes the transport; a send in progress ends with an error. */
  close(): void {
    this.transport.close();
  }
}

/** Characters of a dot-atom local part (RFC 5322), ASCII only. */
const LOCAL = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
/** A DNS name of at least two labels, the last one not starting with a digit (no IP addresses). */
const DOMAIN = /^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/** The same, of one label or more. */
const HOST = /^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/**
 * Checks an e-mail address a tenant gives: at most 254 characters, a plain local@domain with
 * no display name, quotes, comments, commas or spaces, so it names exactly one mailbox.
 * ASCII only: an internationalised domain is given in its xn-- form.
 *
 * @returns the reason in words, or undefined when the address is acceptable.
 */
export function checkEmailAddress(s: string): string | undefined {
  return addressProblem(s, false);
}

function addressProblem(s: string, singleLabel: boolean): string | undefined {
  if (s.length === 0) return 'the address is empty';
  if (s.length > 254) return 'the address is longer than 254 characters';
  if (/[\x00-\x1f\x7f]/.test(s)) return 'the address contains a control character (a line break, say)';
  if (/[<>",;()[\]\\:]/.test(s)) return 'give the address alone (name@example.com), without a display name, quotes, brackets or commas';
  if (/\s/.test(s)) return 'the address contains a space';
  if (/[^\x20-\x7e]/.test(s)) return 'only ASCII addresses are accepted (write an internationalised domain in its xn-- form)';
  const at = s.indexOf('@');
  if (at < 0 || at !== s.lastIndexOf('@')) return 'the address must contain exactly one @';
  const local = s.slice(0, at);
  const domain = s.slice(at + 1);
  if (local.length === 0 || local.length > 64) return 'the part before the @ must be 1 to 64 characters';
  if (!LOCAL.test(local)) return `the part before the @ (${local}) is not a valid mailbox name`;
  if (!(singleLabel ? HOST : DOMAIN).test(domain) || domain.length > 253) return `the part after the @ (${domain}) is not a domain name like example.com`;
  return undefined;
}
