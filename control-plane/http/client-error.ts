import type http from 'node:http';
import type https from 'node:https';
import type { Duplex } from 'node:stream';

/**
 * Requests Node's HTTP parser refuses never reach Koa; Node would answer them with an
 * empty body. Answer them as every other error is answered: JSON `{"msg"}`.
 *
 * A parser error can also arrive while a request on the same socket is still being
 * served: its body ended early (the client half-closed, or the request timed out), or
 * bytes after a whole request were not HTTP. When that request's body arrived whole, its
 * handler may act, so its own reply is the truth: no reply of ours goes first, and the
 * socket closes once that reply is out. When its body did not arrive whole, no handler has
 * acted (every one reads its body, declared or not, before acting), and ours is the reply.
 */
export function answerClientErrors(server: http.Server | https.Server): void {
  const serving = new WeakMap<Duplex, { req: http.IncomingMessage; res: http.ServerResponse }>();
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const entry = { req, res };
    serving.set(req.socket, entry);
    res.once('close', () => {
      if (serving.get(req.socket) === entry) serving.delete(req.socket);
    });
  });
  server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
    const inFlight = serving.get(socket);
    if (inFlight?.req.complete) {
      if (inFlight.res.writableFinished) socket.destroy();
      else inFlight.res.once('close', () => socket.destroy());
      return;
    }
    answerClientError(err, socket);
  });
}

function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  // Like Node's own handler: never write once a reply began.
  if (err.code === 'ECONNRESET' || !socket.writable || (socket as Duplex & { bytesWritten?: number }).bytesWritten) {
    socket.destroy();
    return;
  }
  const [status, reason, msg] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', 'Request headers are larger than the limit of 16 KiB']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', 'The request was not received in time']
        : [400, 'Bad Request', `Malformed HTTP request: ${err.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 200)}`];
  rawJson(socket, status, reason, msg);
}

/** A reply written on the raw socket, for requests that never reach Koa. */
export function rawJson(socket: Duplex, status: number, reason: string, msg: string): void {
  const body = JSON.stringify({ msg });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/**
 * The other requests Node answers by itself (or not at all): CONNECT (its socket would be
 * closed without a word) and an `Expect` other than 100-continue (Node's bare 417). Both
 * get a JSON `{"msg"}`. A request without `Host` reaches Koa (requireHostHeader off) and is
 * refused there, as JSON too.
 */
export function answerOtherProtocolErrors(server: http.Server | https.Server): void {
  server.on('connect', (_req: http.IncomingMessage, socket: Duplex) => {
    rawJson(socket, 405, 'Method Not Allowed', 'CONNECT is not supported: this is a REST API, not a proxy');
  });
  server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const body = JSON.stringify({ msg: `Expect: ${String(req.headers.expect).slice(0, 100)} is not supported; only 100-continue is` });
    res.writeHead(417, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
    res.end(body);
  });
}
