/**
 * The dashboard with a project of 10,000 tasks, in Debian's headless Chromium
 * (/usr/bin/chromium through playwright-core): how soon the task list paints. A control
 * plane on a fresh PostgreSQL database gets a code package with 10,000 queued tasks (in a
 * cluster without runners, so they stay), a few tasks run by a real runner in Docker, a
 * schedule, and the recorded fleet data of test/helpers/dashboard-data.ts. Each run loads
 * `/#/tasks` afresh (signed in: the token in the tab's sessionStorage) and reads, from the
 * Performance API, first-contentful-paint and the time until the first page of rows is in the
 * document. Then, unless --skip-screenshots, writes PNGs of the main pages at 1280 px and at
 * a phone's 390 px to docs/screenshots/.
 *
 * Usage: npm run bench:dashboard [-- --runs 10] [-- --tasks 10000] [-- --skip-screenshots]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { chromium, type Page } from 'playwright-core';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { seedFleet } from '../test/helpers/dashboard-data.ts';
import { benchAccount, benchRunner } from './rig.ts';

const { values: args } = parseArgs({ options: { runs: { type: 'string', default: '10' }, tasks: { type: 'string', default: '10000' }, 'skip-screenshots': { type: 'boolean', default: false } } });
const RUNS = Number(args.runs);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const IMAGE = process.env.GANTRY_BENCH_IMAGE ?? 'gantry-test/busybox:latest';
const ROOT = path.resolve(import.meta.dirname, '..');
const SHOTS = path.join(ROOT, 'docs', 'screenshots');
const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TASKS = Number(args.tasks);
const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main() {
  execFileSync('bash', [path.join(ROOT, 'scripts/dashboard.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
  const name = `gantry_dashboard_${process.pid}`;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(ADMIN);
  u.pathname = `/${name}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-dashboard-'));
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const cp = await startControlPlane(
    loadConfig({ DATABASE_URL: u.toString(), GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', GANTRY_DATA_DIR: dir, GANTRY_LOG_FLUSH_INTERVAL_MS: '100', LOG_LEVEL: 'warn' }),
    log,
  );
  const store = cp.store;
  const { project, token, cluster, clusterToken } = await benchAccount(store, 256);
  const user = (await store.accounts.findUser('bench@example.com'))!;
  await store.clusters.create('parked', { userId: user.id });
  const runner = await benchRunner(cp.grpcPort, { id: cluster.id, token: clusterToken }, dir, log, { GANTRY_RUNNER_SLOTS: '2' });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  try {
    const call = async (method: string, p: string, body?: unknown) => {
      const form = body instanceof FormData;
      const res = await fetch(`${cp.url}/2/projects/${project.id}${p}`, {
        method,
        headers: { Authorization: `OAuth ${token}`, ...(body && !form ? { 'Content-Type': 'application/json' } : {}) },
        body: form ? body : body === undefined ? undefined : JSON.stringify(body),
      });
      if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${await res.text()}`);
      return res.json() as Promise<any>;
    };
    const upload = (data: Record<string, unknown>) => {
      const f = new FormData();
      f.append('data', JSON.stringify({ image: IMAGE, ...data }));
      return call('POST', '/codes', f);
    };
    const report = await upload({ name: 'nightly-report', command: 'echo "report for $(cat $PAYLOAD_FILE)"; i=0; while [ $i -lt 8 ]; do echo "step $i of 8"; i=$((i+1)); sleep 0.3; done; echo done' });
    await upload({ name: 'image-resize', command: 'echo resizing; sleep 0.5; echo "<b>not bold</b> 3 files"' });
    await upload({ name: 'flaky-import', command: 'echo importing; echo "connection refused" >&2; exit 3' });
    progress(`queueing ${TASKS} tasks`);
    for (let i = 0; i < TASKS; i += 1000) {
      await call('POST', '/tasks', { tasks: Array.from({ length: 1000 }, (_, j) => ({ code_name: 'image-resize', cluster: 'parked', payload: JSON.stringify({ image: `img-${i + j}.png` }), label: `batch ${i / 1000}` })) });
    }
    const ran = await call('POST', '/tasks', {
      tasks: [
        { code_name: 'nightly-report', payload: '{"day":"2026-12-02"}' },
        { code_name: 'image-resize', payload: '<img src=x onerror=alert(1)>' },
        { code_name: 'flaky-import', payload: '{"source":"s3://bucket/x.csv"}' },
      ],
    });
    const shown: string = ran.tasks[0].id;
    await call('POST', '/schedules', { schedules: [{ code_name: 'nightly-report', name: 'nightly', cron: '30 2 * * *', timezone: 'Europe/Berlin', payload: '{"day":"yesterday"}' }] });
    await call('POST', '/schedules', { schedules: [{ code_name: 'image-resize', name: 'hourly sweep', run_every: 3600, payload: '{}' }] });
    const fleet = await seedFleet(store, { userId: user.id, projectId: project.id, codeId: report.id });
    for (const t of ran.tasks as { id: string }[]) {
      for (;;) {
        const s = (await call('GET', `/tasks/${t.id}`)).status;
        if (s !== 'queued' && s !== 'running') break;
        await new Promise((r) => setTimeout(r, 200));
      }
    }

    // First paint of the task list, each run a fresh load of the page in a signed-in tab.
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    await page.addInitScript(() => {
      const w = window as unknown as { rowsAt?: number };
      new MutationObserver((_, obs) => {
        if (document.querySelector('#tasks tbody tr')) {
          w.rowsAt = performance.now();
          obs.disconnect();
        }
      }).observe(document, { childList: true, subtree: true });
    });
    await page.goto(`${cp.url}/`);
    await page.fill('#token', token);
    await page.click('#sign-in button[type=submit]');
    await page.locator('#project').waitFor();
    const fcp: number[] = [];
    const rows: number[] = [];
    for (let i = 0; i < RUNS + 1; i++) {
      await page.goto('about:blank');
      await page.goto(`${cp.url}/#/tasks`);
      await page.locator('#tasks tbody tr').first().waitFor();
      const m = await page.evaluate(() => ({
        fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? NaN,
        rows: (window as unknown as { rowsAt: number }).rowsAt,
        n: document.querySelectorAll('#tasks tbody tr').length,
      }));
      if (m.n !== 50) throw new Error(`the list shows ${m.n} rows, not 50`);
      if (i === 0) continue; // the first load warms the server's statement cache and the browser's
      fcp.push(m.fcp);
      rows.push(m.rows);
    }
    const t0 = performance.now();
    await call('GET', '/tasks?per_page=50');
    const apiMs = performance.now() - t0;
    const result = {
      date: new Date().toISOString().slice(0, 10),
      cores: os.cpus().length,
      tasks: TASKS,
      runs: RUNS,
      fcp_ms: { p50: Math.round(pct(fcp, 50)), p90: Math.round(pct(fcp, 90)) },
      rows_ms: { p50: Math.round(pct(rows, 50)), p90: Math.round(pct(rows, 90)) },
      list_api_ms: Math.round(apiMs),
    };
    console.log(JSON.stringify(result));
    progress(
      `task list with ${TASKS} tasks, ${RUNS} loads on ${result.cores} cores: first-contentful-paint p50 ${result.fcp_ms.p50} ms (p90 ${result.fcp_ms.p90}), rows shown p50 ${result.rows_ms.p50} ms (p90 ${result.rows_ms.p90})`,
    );
    await context.close();

    if (!args['skip-screenshots']) {
      fs.mkdirSync(SHOTS, { recursive: true });
      const pages: [string, string, (p: Page) => Promise<unknown>][] = [
        ['farm', '#/', (p) => p.locator('#counts').waitFor()],
        ['tasks', '#/tasks', (p) => p.locator('#tasks tbody tr').first().waitFor()],
        ['task', `#/tasks/${shown}`, (p) => p.locator('#log-state', { hasText: 'ended' }).waitFor()],
        ['code', `#/codes/${report.id}`, (p) => p.locator('#revisions').waitFor()],
        ['schedules', '#/schedules', (p) => p.locator('#schedules tbody tr').first().waitFor()],
        ['cluster', `#/clusters/${fleet.clusterId}`, async (p) => {
          await p.click('.range button:text("7d")');
          await p.waitForFunction(() => Number(document.querySelector('#chart-demand .plot')?.getAttribute('data-points')) >= 60_000, undefined, { timeout: 60_000 });
        }],
        ['runner', `#/runners/${encodeURIComponent(fleet.runnerId)}`, (p) => p.locator('#chart-network .plot:not([data-points="0"])').waitFor()],
        ['queue', '#/queue', (p) => p.locator('#chart-load .plot:not([data-points="0"])').waitFor()],
      ];
      for (const [width, height, suffix] of [[1280, 900, 'desktop'], [390, 844, 'phone']] as const) {
        const ctx = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
        const p = await ctx.newPage();
        await p.goto(`${cp.url}/`);
        await p.fill('#token', token);
        await p.click('#sign-in button[type=submit]');
        await p.locator('#project').waitFor();
        for (const [shot, hash, ready] of pages) {
          await p.goto(`${cp.url}/${hash}`);
          await ready(p).catch(async (err: unknown) => {
            await p.screenshot({ path: path.join(dir, 'failed.png') });
            fs.copyFileSync(path.join(dir, 'failed.png'), '/tmp/failed.png');
            throw err;
          });
          await p.screenshot({ path: path.join(SHOTS, `${shot}-${suffix}.png`), fullPage: suffix === 'phone' ? false : true });
        }
        await ctx.close();
      }
      progress(`screenshots in ${path.relative(ROOT, SHOTS)}/`);
    }
  } finally {
    await browser.close();
    await runner.stop();
    await cp.stop();
    await admin.query(`DROP DATABASE ${name} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
