import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Logger } from '../../lib/logger.ts';

/** The REST API's certificate and key (PEM files), when it serves HTTPS. */
export interface ApiTls {
  certFile: string;
  keyFile: string;
}

/** Whether an address only this host can reach (tokens sent to it stay on the host). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** How often the certificate files are looked at for a change (a renewal replaces them). */
const WATCH_MS = 2000;

/**
 * The REST API's server: HTTP, or HTTPS with the certificate and key read from their files
 * and read again whenever either changes (a renewal by certbot or a secrets manager), without
 * a restart: connections made after the change get the new certificate. A changed pair that
 * does not load (half written, a key of another certificate) keeps the one in use and says
 * why in the log. Host-less HTTP/1.1 requests reach the app, which refuses them as JSON.
 */
export function createApiServer(
  handler: http.RequestListener,
  o: { tls?: ApiTls; log: Logger },
): { server: http.Server | https.Server; scheme: 'http' | 'https'; close(): void } {
  if (!o.tls) return { server: http.createServer({ requireHostHeader: false }, handler), scheme: 'http', close: () => undefined };
  const { certFile, keyFile } = o.tls;
  const read = () => ({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) });
  const server = https.createServer({ ...read(), requireHostHeader: false }, handler);
  let pending: NodeJS.Timeout | undefined;
  const reload = () => {
    // Both files may be replaced one after the other: read them once both have settled.
    clearTimeout(pending);
    pending = setTimeout(() => {
      try {
        const pair = read();
        tls.createSecureContext(pair); // throws for a pair that does not load
        server.setSecureContext(pair);
        o.log.info({ certFile }, 'TLS certificate reloaded');
      } catch (err) {
        o.log.error({ certFile, keyFile, err: (err as Error).message }, 'the changed TLS certificate or key does not load; still serving the previous one');
      }
    }, 200);
    pending.unref();
  };
  const watch = (f: string) => fs.watchFile(f, { interval: WATCH_MS, persistent: false }, (cur, prev) => {
    if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) reload();
  });
  watch(certFile);
  watch(keyFile);
  return {
    server,
    scheme: 'https',
    close: () => {
      clearTimeout(pending);
      fs.unwatchFile(certFile);
      fs.unwatchFile(keyFile);
    },
  };
}
