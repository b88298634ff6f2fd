import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Middleware } from 'koa';
import type { ApiState } from './state.ts';

/**
 * The web dashboard's built files (dashboard/, built by scripts/dashboard.sh into
 * dashboard/dist; `npm run build` puts them at the same place beside the compiled output):
 * `/` is its index.html, never cached, and `/assets/<name>` its hashed files, cached for good.
 * The page is a client of the public API only and routes by the URL's hash, so no other path
 * is served here. Every answer carries a Content-Security-Policy that allows only the page's
 * own files and requests to its origin (uPlot and Preact set styles through the DOM, which
 * `style-src 'self'` allows; nothing inline is emitted). Unbuilt, `/` says how to build it.
 */
export const DASHBOARD_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dashboard/dist');

export const DASHBOARD_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};
/** A file name Vite writes under assets/: no slash, no dot-dot, nothing to escape the folder. */
const ASSET = /^\/assets\/([A-Za-z0-9_-][A-Za-z0-9._-]{0,200})$/;

async function readOrUndefined(file: string): Promise<Buffer | undefined> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'EISDIR') return undefined;
    throw err;
  }
}

/** Serves the dashboard from `dir` on GET/HEAD `/` and `/assets/...`; every other request passes on. */
export function serveDashboard(dir = DASHBOARD_DIR): Middleware<ApiState> {
  return async (ctx, next) => {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') return next();
    const asset = ASSET.exec(ctx.path);
    if (ctx.path !== '/' && !asset) return next();
    const common = { 'Content-Security-Policy': DASHBOARD_CSP, 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer' };
    if (!asset) {
      const html = await readOrUndefined(path.join(dir, 'index.html'));
      ctx.set({ ...common, 'Cache-Control': 'no-store' });
      if (html) {
        ctx.type = 'text/html; charset=utf-8';
        ctx.body = html;
      } else {
        ctx.type = 'text/plain; charset=utf-8';
        ctx.body = 'The Gantry dashboard is not built. Build it with: bash scripts/dashboard.sh (scripts/start.sh and scripts/test.sh run it), then reload.\nThe API is at /2/ (its document: /2/openapi.json).\n';
      }
      return;
    }
    const name = asset[1]!;
    const body = await readOrUndefined(path.join(dir, 'assets', name));
    if (!body) return next();
    ctx.set({ ...common, 'Cache-Control': 'public, max-age=31536000, immutable' });
    ctx.type = TYPES[path.extname(name)] ?? 'application/octet-stream';
    ctx.body = body;
  };
}
