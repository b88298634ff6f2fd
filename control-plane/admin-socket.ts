import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from '../lib/logger.ts';
import { UsageError } from '../lib/errors.ts';
import { runAdmin, type AdminContext } from './admin.ts';
import type { Store } from './store/index.ts';

/**
 * The admin commands of a running embedded server. PGlite lets one process open its data
 * directory, so `gantry user list` and the rest cannot open the store while `gantry start`
 * runs; they send their arguments to this socket instead, and the server runs them on its
 * own store. The socket lives in the data directory, mode 0600: only the user who may read
 * the data may use it, as with the directory itself.
 *
 * One request per connection: a JSON line `{"argv": [...]}`; replies are JSON lines,
 * `{"progress": "..."}` while a long command runs, then `{"out": "..."}` or
 * `{"error": "...", "usage": true|false}`.
 */
export const ADMIN_SOCKET = 'admin.sock';

/** The longest path a Unix socket may have (sun_path, with its terminating NUL). */
const MAX_SOCKET_PATH = 107;

export function adminSocketPath(dataDir: string): string {
  return path.join(path.resolve(dataDir), ADMIN_SOCKET);
}

export async function startAdminSocket(
  dataDir: string,
  store: Store,
  ctx: Pick<AdminContext, 'instancesChanged'>,
  log: Logger,
): Promise<{ path: string; close(): Promise<void> } | undefined> {
  const file = adminSocketPath(dataDir);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    log.warn({ path: file }, 'the data directory path is too long for the admin socket: admin commands cannot reach this server while it runs');
    return undefined;
  }
  // A socket file left by a process that died (kill -9): this process holds the data
  // directory's lock, so no live server owns it.
  fs.rmSync(file, { force: true });
  const server = net.createServer((conn) => serve(conn, store, ctx, log));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => resolve());
  });
  fs.chmodSync(file, 0o600);
  return {
    path: file,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        fs.rmSync(file, { force: true });
      }),
  };
}

function serve(conn: net.Socket, store: Store, ctx: Pick<AdminContext, 'instancesChanged'>, log: Logger): void {
  let buf = '';
  const send = (o: object) => {
    if (!conn.destroyed) conn.write(`${JSON.stringify(o)}\n`);
  };
  conn.on('error', () => undefined);
  conn.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    if (buf.length > 1 << 20) return conn.destroy();
    const nl = buf.indexOf('\n');
    if (nl < 0) return;
    conn.removeAllListeners('data');
    let argv: unknown;
    try {
      argv = (JSON.parse(buf.slice(0, nl)) as { argv?: unknown }).argv;
    } catch {
      send({ error: 'the admin socket takes one JSON line {"argv": [...]}', usage: false });
      return void conn.end();
    }
    if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string')) {
      send({ error: 'argv must be an array of strings', usage: false });
      return void conn.end();
    }
    log.info({ command: argv.slice(0, 2).join(' ') }, 'admin command through the socket');
    runAdmin(store, argv, { ...ctx, progress: (line) => send({ progress: line }) }).then(
      (out) => {
        send({ out });
        conn.end();
      },
      (err: unknown) => {
        send({ error: (err as Error).message, usage: err instanceof UsageError });
        if (!(err instanceof UsageError)) log.error({ err }, 'admin command failed');
        conn.end();
      },
    );
  });
}

/**
 * Runs an admin command through a running server's socket: progress lines go to
 * `progress`, the output is returned; a refusal is a UsageError as if run here.
 */
export function runThroughSocket(file: string, argv: string[], progress: (line: string) => void): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const conn = net.createConnection(file);
    let buf = '';
    let done = false;
    conn.on('connect', () => conn.write(`${JSON.stringify({ argv })}\n`));
    conn.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as { progress?: string; out?: string; error?: string; usage?: boolean };
        buf = buf.slice(nl + 1);
        if (msg.progress !== undefined) progress(msg.progress);
        else if (msg.out !== undefined) {
          done = true;
          resolve(msg.out);
        } else if (msg.error !== undefined) {
          done = true;
          reject(msg.usage ? new UsageError(msg.error) : new Error(msg.error));
        }
      }
    });
    conn.on('error', (err) => reject(err));
    conn.on('close', () => {
      if (!done) reject(new Error('the running server closed the admin socket without an answer; see its log'));
    });
  });
}
