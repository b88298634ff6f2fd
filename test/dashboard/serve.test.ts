/**
 * How the control plane serves the dashboard (control-plane/http/dashboard.ts): `/` is the
 * built index.html, never cached, and `/assets/...` its hashed files, cached for good, each
 * with the strict Content-Security-Policy and nosniff; nothing else is served from the
 * folder; the API is untouched. Unbuilt, `/` answers 200 with how to build it, never a 5xx.
 */
import fs from 'node:fs';
import path from 'node:path';
import Koa from 'koa';
import t from 'tap';
import { DASHBOARD_CSP, DASHBOARD_DIR, serveDashboard } from '../../control-plane/http/dashboard.ts';
import type { ApiState } from '../../control-plane/http/state.ts';
import { startTestApi } from '../helpers/api.ts';
import { buildDashboard } from '../helpers/browser.ts';
import { tempDir } from '../helpers/db.ts';

t.test('the built dashboard at / and /assets/', async (t) => {
  buildDashboard();
  const api = await startTestApi(t, 'pglite');
  const res = await fetch(`${api.url}/`);
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  t.equal(res.headers.get('content-security-policy'), DASHBOARD_CSP);
  t.equal(
    DASHBOARD_CSP,
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  );
  t.equal(res.headers.get('x-content-type-options'), 'nosniff');
  t.equal(res.headers.get('cache-control'), 'no-store', 'index.html is never cached');
  const html = await res.text();
  t.equal(html, fs.readFileSync(path.join(DASHBOARD_DIR, 'index.html'), 'utf8'));
  t.notMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
  t.notMatch(html, /<style|\sstyle=/, 'no inline style');

  const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]!);
  t.ok(assets.some((a) => a.endsWith('.js')) && assets.some((a) => a.endsWith('.css')), `the page names its script and stylesheet: ${assets.join(', ')}`);
  for (const a of assets) {
    const r = await fetch(`${api.url}${a}`);
    t.equal(r.status, 200, a);
    t.equal(r.headers.get('cache-control'), 'public, max-age=31536000, immutable', `${a}: cached for good (its name is its hash)`);
    t.match(r.headers.get('content-type'), a.endsWith('.js') ? /^text\/javascript/ : /^text\/css/);
    t.equal(r.headers.get('x-content-type-options'), 'nosniff');
    t.equal(Buffer.from(await r.arrayBuffer()).equals(fs.readFileSync(path.join(DASHBOARD_DIR, a))), true, `${a}: the built file`);
    t.equal((await fetch(`${api.url}${a}`, { method: 'HEAD' })).status, 200, `HEAD ${a}`);
  }

  for (const p of ['/assets/nope.js', '/assets/..%2findex.html', '/assets/.source-hash', '/index.html', '/assets/', '/dashboard']) {
    const r = await fetch(`${api.url}${p}`);
    t.equal(r.status, 404, `${p}: not served`);
    t.same(await r.json(), { msg: `Not found: GET ${new URL(p, api.url).pathname}` }, `${p}: the API's 404`);
  }
  const post = await fetch(`${api.url}/`, { method: 'POST' });
  t.equal(post.status, 404, 'POST / is no route');
  t.equal((await api.request('GET', '/2/stacks')).status, 200, 'the API is untouched');
  t.equal((await api.request('GET', '/2/projects')).body.projects.length, 1, 'and GET /2/projects answers');
});

t.test('unbuilt: / says how to build it', async (t) => {
  const app = new Koa<ApiState>();
  app.use(serveDashboard(tempDir(t, 'gantry-no-dashboard-')));
  const server = app.listen(0, '127.0.0.1');
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  const { port } = server.address() as { port: number };
  const r = await fetch(`http://127.0.0.1:${port}/`);
  t.equal(r.status, 200);
  t.match(r.headers.get('content-type'), /^text\/plain/);
  t.match(await r.text(), /not built\. Build it with: bash scripts\/dashboard\.sh/);
  t.equal(r.headers.get('content-security-policy'), DASHBOARD_CSP);
  t.equal((await fetch(`http://127.0.0.1:${port}/assets/index.js`)).status, 404, 'no asset');
});
