/**
 * One webhook delivery (control-plane/outbox/webhook-send.ts) against real receivers on
 * loopback: signed as Standard Webhooks says (checked with the `standardwebhooks` package a
 * receiver would use), bounded in time and in what it reads, never following a redirect, and
 * refused by the egress policy before any byte reaches a receiver it does not allow.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { Webhook } from 'standardwebhooks';
import { parseEgressAllow } from '../../../lib/egress.ts';
import { newSigningSecret, sendWebhook, signatureHeader, signingKey, webhookAgents, type WebhookAttempt } from '../../../control-plane/outbox/webhook-send.ts';
import { tempDir } from '../../helpers/db.ts';

const loopback = parseEgressAllow('127.0.0.0/8');

interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A receiver on 127.0.0.1 answering with `answer`; what reached it is in `received`. */
async function receiver(t: Test, answer: (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void) {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      answer(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  return { port, url: `http://127.0.0.1:${port}/hook`, received, server };
}

function attempt(url: string, over: Partial<WebhookAttempt> = {}): WebhookAttempt {
  return {
    url,
    id: 'dlv_0123456789abcdef01234567',
    event: 'succeeds,finishes',
    body: JSON.stringify({ task_id: 't1', status: 'complete', note: 'naïve ✓' }),
    keys: [signingKey(newSigningSecret())],
    timestampS: Math.floor(Date.now() / 1000),
    timeoutMs: 5000,
    maxResponseBytes: 64 * 1024,
    policy: loopback,
    ...over,
  };
}

t.test('secrets: the Standard Webhooks format; malformed ones refused without repeating them', async (t) => {
  const s = newSigningSecret();
  t.match(s, /^whsec_[A-Za-z0-9+/]{43}=$/);
  t.equal(signingKey(s).length, 32);
  t.not(newSigningSecret(), s, 'random');
  for (const bad of ['', 'whsec_', 'sk_' + s.slice(6), 'whsec_not base64!', 'whsec_' + Buffer.alloc(8).toString('base64'), 'whsec_' + Buffer.alloc(65).toString('base64'), 'whsec_abc']) {
    t.throws(() => signingKey(bad), Error, JSON.stringify(bad));
    try {
      signingKey(bad);
    } catch (err) {
      if (bad.length > 8) t.notOk((err as Error).message.includes(bad.slice(6)), 'the message does not repeat the secret');
    }
  }
  t.throws(() => signatureHeader('id', 1, 'b', []), RangeError, 'no key, no signature');
});

t.test('a 200 delivery: the headers, and a signature the standardwebhooks package verifies', async (t) => {
  const r = await receiver(t, (_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('thanks'));
  const secret = newSigningSecret();
  const a = attempt(r.url, { keys: [signingKey(secret)] });
  const result = await sendWebhook(a);
  t.match(result, { ok: true, statusCode: 200, response: 'thanks' });
  t.notOk(result.error);
  t.notOk(result.permanent);
  t.ok(result.latencyMs >= 0 && result.latencyMs < 5000, `latency ${result.latencyMs} ms`);

  t.equal(r.received.length, 1);
  const got = r.received[0]!;
  t.same([got.method, got.url, got.body], ['POST', '/hook', a.body], 'POSTed the body as given, to the path of the URL');
  t.match(got.headers, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(a.body)),
    'user-agent': 'Gantry-Webhooks/1',
    'webhook-id': a.id,
    'webhook-timestamp': String(a.timestampS),
    'idempotency-key': a.id,
    'gantry-event': 'succeeds,finishes',
  });
  t.match(got.headers['webhook-signature'], /^v1,[A-Za-z0-9+/]{43}=$/, 'one signature for one key');
  t.equal(got.headers['webhook-signature'], signatureHeader(a.id, a.timestampS, a.body, a.keys));

  const wh = new Webhook(secret);
  const headers = got.headers as Record<string, string>;
  t.same(wh.verify(got.body, headers), JSON.parse(a.body), 'verified by the receiver library');
  t.throws(() => wh.verify(got.body.replace('complete', 'error'), headers), 'a changed body does not verify');
  t.throws(() => wh.verify(got.body, { ...headers, 'webhook-id': 'dlv_other' }), 'a changed id does not verify');
  t.throws(() => wh.verify(got.body, { ...headers, 'webhook-timestamp': String(a.timestampS + 1) }), 'a changed timestamp does not verify');
  t.throws(() => new Webhook(newSigningSecret()).verify(got.body, headers), 'another secret does not verify');

  // A retry carries the same id (the idempotency key) and its own timestamp.
  await sendWebhook({ ...a, timestampS: a.timestampS + 30 });
  t.equal(r.received[1]?.headers['webhook-id'], a.id);
  t.equal(r.received[1]?.headers['webhook-timestamp'], String(a.timestampS + 30));
  t.not(r.received[1]?.headers['webhook-signature'], got.headers['webhook-signature']);
});

t.test('a rotation: signed with both keys, newest first; a receiver with either secret verifies', async (t) => {
  const r = await receiver(t, (_req, res) => res.writeHead(204).end());
  const newer = newSigningSecret();
  const older = newSigningSecret();
  const a = attempt(r.url, { keys: [signingKey(newer), signingKey(older)] });
  t.match(await sendWebhook(a), { ok: true, statusCode: 204 });
  const headers = r.received[0]!.headers as Record<string, string>;
  const sigs = headers['webhook-signature']!.split(' ');
  t.equal(sigs.length, 2, 'two signatures');
  t.equal(sigs[0], signatureHeader(a.id, a.timestampS, a.body, [signingKey(newer)]), 'the newest first');
  t.equal(sigs[1], signatureHeader(a.id, a.timestampS, a.body, [signingKey(older)]));
  for (const [name, secret] of [['new', newer], ['previous', older]] as const) {
    t.same(new Webhook(secret).verify(r.received[0]!.body, headers), JSON.parse(a.body), `verified with the ${name} secret`);
  }
});

t.test('receiver answers: 500 is retried, 410 is not', async (t) => {
  const r500 = await receiver(t, (_req, res) => res.writeHead(500).end('database down'));
  const failed = await sendWebhook(attempt(r500.url));
  t.match(failed, { ok: false, statusCode: 500, error: 'answered 500', response: 'database down' });
  t.notOk(failed.permanent, 'a 500 may pass later');
  const r410 = await receiver(t, (_req, res) => res.writeHead(410).end());
  t.match(await sendWebhook(attempt(r410.url)), { ok: false, statusCode: 410, permanent: true, error: /410/ });
  const r404 = await receiver(t, (_req, res) => res.writeHead(404).end());
  const notFound = await sendWebhook(attempt(r404.url));
  t.match(notFound, { ok: false, statusCode: 404, error: 'answered 404' });
  t.notOk(notFound.permanent);
});

t.test('a receiver that never answers: timed out within timeoutMs', async (t) => {
  const r = await receiver(t, () => {
    // Takes the request and says nothing.
  });
  const result = await sendWebhook(attempt(r.url, { timeoutMs: 300 }));
  t.match(result, { ok: false, error: 'timed out after 300 ms' });
  t.notOk(result.statusCode);
  t.notOk(result.permanent);
  t.ok(result.latencyMs >= 290 && result.latencyMs < 1500, `gave up after ${result.latencyMs} ms`);

  // Headers sent at once, then a body that trickles forever: the bound covers the body read too.
  const slow = await receiver(t, (_req, res) => {
    res.writeHead(200);
    const tick = setInterval(() => res.write('.'), 20);
    res.on('close', () => clearInterval(tick));
  });
  const trickle = await sendWebhook(attempt(slow.url, { timeoutMs: 300 }));
  t.match(trickle, { ok: false, error: 'timed out after 300 ms' });
  t.ok(trickle.latencyMs < 1500, `gave up after ${trickle.latencyMs} ms`);
});

t.test('a closed port: connection refused', async (t) => {
  // A port that was just free and is closed again.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const result = await sendWebhook(attempt(`http://127.0.0.1:${port}/hook`));
  t.match(result, { ok: false, error: 'connection refused' });
  t.notOk(result.permanent);
  t.notOk(result.statusCode);
});

t.test('a huge answer: only maxResponseBytes read, then the connection dropped', async (t) => {
  let written = 0;
  let closed!: () => void;
  const gone = new Promise<void>((resolve) => (closed = resolve));
  const total = 1024 * 1024 * 1024;
  const r = await receiver(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    const chunk = Buffer.alloc(64 * 1024, 'x');
    const pump = (): void => {
      while (written < total && !res.destroyed) {
        written += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    res.on('close', closed);
    pump();
  });
  const result = await sendWebhook(attempt(r.url, { maxResponseBytes: 4096 }));
  t.match(result, { ok: true, statusCode: 200 });
  t.equal(result.response?.length, 512, 'the answer kept is 512 bytes');
  t.match(result.response, /^x+$/);
  await gone;
  t.ok(written < total / 16, `the receiver could write only ${written} bytes (of ${total}) before the connection was dropped`);

  const none = await sendWebhook(attempt(r.url, { maxResponseBytes: 0 }));
  t.match(none, { ok: true, statusCode: 200 });
  t.notOk(none.response, 'nothing read');
});

t.test('through the agents: one connection carries attempt after attempt; an answer cut at the cap closes it', async (t) => {
  const agents = webhookAgents();
  t.teardown(() => {
    agents.http.destroy();
    agents.https.destroy();
  });
  let big = false;
  const r = await receiver(t, (_req, res) => {
    if (big) res.writeHead(200, { 'content-type': 'text/plain' }).end(Buffer.alloc(8192, 'y'));
    else res.writeHead(204).end();
  });
  let connections = 0;
  r.server.on('connection', () => connections++);
  for (let i = 0; i < 5; i++) t.match(await sendWebhook(attempt(r.url, { agents })), { ok: true, statusCode: 204 });
  t.equal(r.received.length, 5);
  t.equal(connections, 1, 'five attempts over one kept-open connection');

  big = true;
  t.match(await sendWebhook(attempt(r.url, { agents, maxResponseBytes: 4096 })), { ok: true, statusCode: 200 });
  big = false;
  t.match(await sendWebhook(attempt(r.url, { agents })), { ok: true, statusCode: 204 });
  t.equal(connections, 2, 'the connection whose answer was not read to its end is not reused');

  // Without agents (the default), every attempt has its own.
  await sendWebhook(attempt(r.url));
  await sendWebhook(attempt(r.url));
  t.equal(connections, 4);
});

t.test('through the agents: a kept-open connection the receiver reset is retried once on a new one', async (t) => {
  const agents = webhookAgents();
  t.teardown(() => agents.http.destroy());
  // A raw receiver: its first connection answers one request and resets on the next; later
  // connections answer every request.
  const answered: number[] = [];
  let n = 0;
  const server = net.createServer((sock) => {
    const conn = ++n;
    let requests = 0;
    let buf = '';
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      // Each request here is small: its headers and body arrive before the blank line's body ends.
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
      if (buf.length < end + 4 + length) return;
      buf = buf.slice(end + 4 + length);
      requests++;
      if (conn === 1 && requests === 2) return void sock.resetAndDestroy();
      answered.push(conn);
      sock.write('HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n');
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  t.match(await sendWebhook(attempt(url, { agents })), { ok: true, statusCode: 204 });
  t.match(await sendWebhook(attempt(url, { agents })), { ok: true, statusCode: 204 }, 'the reset on reuse is not the attempt\'s result');
  t.same(answered, [1, 2], 'the second attempt went out again on a second connection');
});

t.test('a redirect is not followed', async (t) => {
  const target = await receiver(t, (_req, res) => res.writeHead(200).end());
  const r = await receiver(t, (_req, res) => res.writeHead(302, { location: target.url }).end());
  const result = await sendWebhook(attempt(r.url));
  t.match(result, { ok: false, statusCode: 302, error: `redirected to ${target.url}: redirects are not followed; give the final URL` });
  const relative = await receiver(t, (_req, res) => res.writeHead(307, { location: '/elsewhere' }).end());
  t.match(await sendWebhook(attempt(relative.url)), { ok: false, statusCode: 307, error: `redirected to http://127.0.0.1:${relative.port}/elsewhere: redirects are not followed; give the final URL` });
  t.equal(target.received.length, 0, 'the redirect target got nothing');
});

t.test('without the allow-list: loopback refused for good, before any byte is sent', async (t) => {
  const r = await receiver(t, (_req, res) => res.writeHead(200).end());
  const policy = parseEgressAllow(undefined);

  const literal = await sendWebhook(attempt(r.url, { policy }));
  t.match(literal, { ok: false, permanent: true, error: 'refused: the address 127.0.0.1 is loopback; webhooks go only to public addresses' });

  const byName = await sendWebhook(attempt(`http://localhost:${r.port}/hook`, { policy }));
  t.match(byName, { ok: false, permanent: true, error: /^refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address$/ });
  t.notOk(byName.statusCode);

  const scheme = await sendWebhook(attempt(`ftp://127.0.0.1:${r.port}/`, { policy: loopback }));
  t.match(scheme, { ok: false, permanent: true, error: 'refused: only http and https URLs are accepted' });
  t.equal(r.received.length, 0, 'the receiver got nothing');

  t.match(await sendWebhook(attempt(`http://localhost:${r.port}/hook`, { policy: parseEgressAllow('localhost') })), { ok: true }, 'allowed by host name');
  t.equal(r.received.length, 1);
});

t.test('https: the receiver\'s certificate is verified', async (t) => {
  const dir = tempDir(t);
  const certFile = path.join(dir, 'r.crt');
  const keyFile = path.join(dir, 'r.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  let requests = 0;
  const server = https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, (_req, res) => {
    requests++;
    res.end();
  });
  server.on('tlsClientError', () => {
    // The sender refusing the certificate shows up here as a dropped handshake.
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const result = await sendWebhook(attempt(`https://localhost:${port}/hook`, { policy: parseEgressAllow('localhost') }));
  t.match(result, { ok: false, error: "the receiver's TLS certificate is not accepted: self-signed certificate" }, 'a self-signed certificate is not trusted');
  t.notOk(result.permanent);
  t.equal(requests, 0, 'nothing was sent over it');
});

t.test('what cannot be sent is reported, not thrown', async (t) => {
  const r = await receiver(t, (_req, res) => res.writeHead(200).end());
  t.match(await sendWebhook(attempt(r.url, { event: 'bad\r\nx-injected: 1' })), { ok: false, error: /^not sent: / }, 'a header value with a newline');
  t.match(await sendWebhook(attempt(r.url, { keys: [] })), { ok: false, error: /^not sent: / }, 'no key');
  t.equal(r.received.length, 0);
});
