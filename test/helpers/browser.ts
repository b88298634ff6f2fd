import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { tempDir } from './db.ts';

export const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ROOT = path.resolve(import.meta.dirname, '../..');

/** Builds the dashboard when its sources changed (scripts/dashboard.sh), so a test never reads a stale build. */
export function buildDashboard(): void {
  execFileSync('bash', [path.join(ROOT, 'scripts/dashboard.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Debian's Chromium through playwright-core, with a fresh profile; closed at teardown. */
export async function launchChromium(t: Test): Promise<BrowserContext> {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run bash scripts/services.sh browser`);
  const context = await chromium.launchPersistentContext(tempDir(t, 'gantry-chromium-'), {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  t.teardown(() => context.close());
  return context;
}

/** A page whose script errors, console errors (CSP violations among them) and failed requests are collected. */
export async function watchedPage(context: BrowserContext): Promise<{ page: Page; errors: string[] }> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => void (m.type() === 'error' && errors.push(`console: ${m.text()}`)));
  return { page, errors };
}

/** Signs in through the form with `token`, and waits for the shell (the project switcher). */
export async function signIn(page: Page, base: string, token: string): Promise<void> {
  await page.goto(`${base}/`);
  await page.fill('#token', token);
  await page.click('#sign-in button[type=submit]');
  await page.locator('#project').waitFor();
}
