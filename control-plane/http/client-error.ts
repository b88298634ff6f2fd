import type { Duplex } from 'node:stream';

/**
 * Requests Node's HTTP parser refuses never reach Koa; Node would answer them with an
 * empty body. Answer them as every other error is answered: JSON `{"msg"}`.
 */
export function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, msg] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', 'Request headers are larger than the limit of 16 KiB']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', 'The request was not received in time']
        : [400, 'Bad Request', `Malformed HTTP request: ${err.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 200)}`];
  const body = JSON.stringify({ msg });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
