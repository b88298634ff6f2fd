/**
 * The stream page in a real headless Chromium (Debian's /usr/bin/chromium through
 * playwright-core; scripts/services.sh installs it): a task that prints a line every 100 ms
 * on a real runner with Docker; its lines appear while it runs, stdout and stderr apart, a
 * `<script>` in the log is shown as text, and the end is shown. The token travels in the
 * fragment only and leaves the address bar. A screenshot is kept as docs/stream-page.png.
 * The task waits after its lines until the test lets it end (a file touched in its container
 * by `docker exec`), so "shown while it ran" holds however slow the machine is.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import Dockerode from 'dockerode';
import { chromium } from 'playwright-core';
import { startTestApi, uploadCode } from '../../helpers/api.ts';
import { tempDir } from '../../helpers/db.ts';
import { FAST_TIMERS, queueTasks } from '../../helpers/faults.ts';
import { TEST_IMAGE, startTestRunner, testCluster } from '../../helpers/runner.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const SCREENSHOT = path.resolve(import.meta.dirname, '../../../docs/stream-page.png');

t.test('the stream page shows the log live, escaped, and its end', async (t) => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run bash scripts/services.sh browser`);
  const api = await startTestApi(t, 'pglite', { env: FAST_TIMERS });
  const cluster = await testCluster(api);
  await startTestRunner(t, api, { cluster, env: { GANTRY_RUNNER_SLOTS: '1' } });
  const command =
    'echo "<script>document.title=\'owned\'</script> starting"; i=0; while [ $i -lt 20 ]; do echo "line $i"; [ $((i % 4)) -eq 3 ] && echo "warn $i" >&2; i=$((i+1)); sleep 0.1; done; n=0; while [ ! -e /tmp/go ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; echo finished';
  t.equal((await uploadCode(api.user, { name: 'ticker', image: TEST_IMAGE, command, log_streams: 'separate' })).status, 200);
  const [id] = await queueTasks(api, 'ticker');

  const context = await chromium.launchPersistentContext(tempDir(t, 'gantry-chromium-'), { executablePath: CHROMIUM, headless: true, args: FLAGS });
  t.teardown(() => context.close());
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
  const url = `${api.url}/2/projects/${api.user.projectId}/tasks/${id}/stream`;
  const res = await page.goto(`${url}#oauth=${api.user.token}`);
  t.match(res?.headers()['content-security-policy'], /default-src 'none'; script-src 'sha256-/);
  t.equal(page.url(), url, 'the token left the address bar');

  // Lines appear while the task runs.
  await page.waitForFunction(() => (document.getElementById('log')?.textContent ?? '').includes('line 3'));
  const running = (await api.user.project('GET', `/tasks/${id}`)).body.status;
  t.equal(running, 'running', 'lines were shown while the task ran');
  t.equal(await page.locator('#end').isHidden(), true, 'no end yet');
  const execution = (await api.user.project('GET', `/tasks/${id}/executions/1`)).body;
  const go = await new Dockerode().getContainer(execution.container_id).exec({ Cmd: ['touch', '/tmp/go'] });
  // The answer is a stream: read to its end, or its socket holds the process open for minutes.
  (await go.start({ Detach: true })).resume();

  // The end.
  await page.locator('#end').waitFor({ state: 'visible', timeout: 30000 });
  t.match(await page.locator('#end').textContent(), /^Ended: complete/);
  t.equal(await page.locator('#status').textContent(), 'complete');
  const shown = await page.locator('#log').textContent();
  const stored = (await api.user.project('GET', `/tasks/${id}/log`)).text;
  t.equal(shown, stored, 'the page shows the whole log');
  t.match(shown, /^<script>document\.title='owned'<\/script> starting\n/, 'markup in the log is text');
  t.equal(await page.evaluate(() => document.querySelectorAll('#log script, #log *:not(span)').length), 0, 'nothing but text spans in the log');
  t.equal(await page.title(), 'Gantry: live log', 'the script in the log did not run');
  t.equal(await page.locator('#log span.stderr').first().textContent().then((s) => s?.startsWith('warn')), true, 'stderr is marked apart');
  t.same(errors, [], 'no script errors, no CSP violations');
  await page.screenshot({ path: SCREENSHOT, fullPage: false });

  // No token: the page asks for one, and has sent nothing.
  const fresh = await context.newPage();
  await fresh.goto(url.replace(`/tasks/${id}/`, `/tasks/${id}/executions/1/`));
  await fresh.locator('#auth').waitFor({ state: 'visible' });
  await fresh.fill('#token', api.user.token);
  await fresh.click('#auth button');
  await fresh.locator('#end').waitFor({ state: 'visible', timeout: 30000 });
  t.equal(await fresh.locator('#log').textContent(), stored, "the execution's page shows its log");
});
