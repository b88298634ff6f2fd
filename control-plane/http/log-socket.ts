import { isUtf8 } from 'node:buffer';
import http from 'node:http';
import type https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { ParameterizedContext } from 'koa';
import { WebSocketServer, type WebSocket } from 'ws';
import { HttpError, badRequest } from '../errors.ts';
import { encodedOnce, type DataEvent, type LogFeed } from '../live/log-feed.ts';
import { rawJson } from './client-error.ts';
import { textEvents, type FollowStart } from './log-follow.ts';
import type { ApiState } from './state.ts';

/** The upgrade a request came with (set by `acceptUpgrades`, taken by the route). */
const UPGRADE = Symbol('upgrade');
interface Pending {
  socket: Duplex;
  head: Buffer;
}
type Upgradable = http.IncomingMessage & { [UPGRADE]?: Pending };

/** Messages a client may send are not read; anything larger than this closes the socket. */
const MAX_CLIENT_MESSAGE = 1024;

const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_MESSAGE, perMessageDeflate: false });

/**
 * Upgrade requests go through the app like any other request (`handler`): authentication,
 * validation and error replies are the API's own, written on the upgrading socket. A route
 * that takes the upgrade (`takeUpgrade`) hands the socket to the WebSocket server; any other
 * answers as it would without the Upgrade header.
 */
export function acceptUpgrades(server: http.Server | https.Server, handler: http.RequestListener): void {
  server.on('upgrade', (req: Upgradable, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    // Node hands an upgrading request over without reading its body: one with a body cannot
    // go through the app (its routes would wait for it), and no WebSocket handshake has one.
    if (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined || head.length > 0) {
      rawJson(socket, 400, 'Bad Request', `Upgrade is only accepted on a log WebSocket, a GET without a body; send this ${req.method ?? ''} request without Upgrade`.replace('  ', ' '));
      return;
    }
    req[UPGRADE] = { socket, head };
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as net.Socket);
    res.on('finish', () => {
      res.detachSocket(socket as net.Socket);
      socket.end();
    });
    handler(req, res);
  });
}

/**
 * Takes the request's WebSocket upgrade (the route has authenticated it), or answers 426
 * when it came without one. The socket then carries the log: by default each message is log
 * text as the seed's sample client prints it; with `json` each is
 * `{"type": "log"|"behind"|"execution"|"end", ...}` as the Server-Sent Events are. It
 * closes with 1000 `done` once the log is whole and the task final, or `timeout` at the
 * follow's time limit (reconnect with `?offset=` the bytes received).
 */
export function takeUpgrade(
  ctx: ParameterizedContext<ApiState>,
  feed: LogFeed,
  start: FollowStart,
  from: number,
  o: { json: boolean; stream?: 'stdout' | 'stderr' },
): void {
  const pending = (ctx.req as Upgradable)[UPGRADE];
  if (!pending || !/^websocket$/i.test(ctx.get('Upgrade'))) {
    throw new HttpError(426, 'This endpoint is a WebSocket: connect with Upgrade: websocket (ws:// or wss://)', {
      code: 'upgrade_required',
      headers: { Upgrade: 'websocket' },
    });
  }
  // Checked here, so a malformed handshake is the API's JSON 400 rather than the ws package's own reply.
  if (!/^[+/0-9A-Za-z]{22}==$/.test(ctx.get('Sec-WebSocket-Key')) || !/^(8|13)$/.test(ctx.get('Sec-WebSocket-Version'))) {
    throw badRequest('A WebSocket handshake needs Sec-WebSocket-Key (16 bytes, base64) and Sec-WebSocket-Version 13');
  }
  if (ctx.method !== 'GET') throw badRequest('A WebSocket handshake is a GET');
  ctx.respond = false;
  wss.handleUpgrade(ctx.req, pending.socket, pending.head, (ws) => void pump(ws, feed, start, from, o, ctx.state.log));
}

/** Text frames must be UTF-8: bytes that are not (a binary log) go as their replacement characters. */
const textMessage = (e: DataEvent) => (isUtf8(e.data) ? e.data : Buffer.from(e.data.toString('utf8')));
const jsonMessage = (e: DataEvent) => Buffer.from(JSON.stringify({ type: 'log', offset: e.offset, stream: e.stream, text: e.data.toString('utf8') }));

async function pump(
  ws: WebSocket,
  feed: LogFeed,
  start: FollowStart,
  from: number,
  o: { json: boolean; stream?: 'stdout' | 'stderr' },
  log: ParameterizedContext<ApiState>['state']['log'],
): Promise<void> {
  const aborted = new AbortController();
  ws.on('close', () => aborted.abort());
  ws.on('error', () => aborted.abort());
  // Sent one at a time, each once the last is on the wire: a slow client holds only its own follow.
  const send = (data: string | Buffer) =>
    new Promise<void>((resolve) => {
      if (ws.readyState !== ws.OPEN) return resolve();
      ws.send(data, { binary: false }, () => resolve());
    });
  try {
    if (o.json) await send(JSON.stringify({ type: 'start', task_id: start.taskId, execution: start.execution, status: start.status, offset: from }));
    let ended = false;
    for await (const e of textEvents(feed.follow(start.taskId, start.attempt, from, aborted.signal), o.stream)) {
      if (e.kind === 'data') await send(encodedOnce(e, o.json ? 'ws-json' : 'ws-text', o.json ? jsonMessage : textMessage));
      else if (!o.json) ended = e.kind === 'end';
      else if (e.kind === 'behind') await send(JSON.stringify({ type: 'behind', offset: e.offset, size: e.size }));
      else if (e.kind === 'attempt') await send(JSON.stringify({ type: 'execution', attempt: e.attempt }));
      else {
        await send(JSON.stringify({ type: 'end', status: e.status, size: e.size, log_complete: e.logComplete }));
        ended = true;
      }
    }
    if (ws.readyState === ws.OPEN) ws.close(1000, ended ? 'done' : aborted.signal.aborted ? 'closed' : 'timeout');
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'a log WebSocket failed');
    if (ws.readyState === ws.OPEN) ws.close(1011, 'error');
  }
}
