/**
 * The dashboard in a real headless Chromium (Debian's /usr/bin/chromium through
 * playwright-core) against a real control plane and a real runner running tasks in Docker:
 * sign in (the token only in sessionStorage, never in the address bar), the project switcher,
 * upload a code package through the form, queue a task from the form and watch its log appear
 * live and its status reach complete, cancel a running one, a payload of markup shown as text,
 * the task list's filters, a schedule created, shown with the tasks it queued and cancelled,
 * sign out. The page's script errors and console errors (CSP violations are reported there)
 * fail the test.
 */
import t from 'tap';
import { startTestApi } from '../helpers/api.ts';
import { buildDashboard, launchChromium, signIn, watchedPage } from '../helpers/browser.ts';
import { FAST_TIMERS } from '../helpers/faults.ts';
import { makeZip } from '../helpers/zip.ts';
import { TEST_IMAGE, startTestRunner, testCluster } from '../helpers/runner.ts';

const XSS = '<img src=x onerror=alert(1)>';

t.test('the dashboard runs tasks end to end', async (t) => {
  buildDashboard();
  const api = await startTestApi(t, 'pglite', { env: FAST_TIMERS, scheduler: true });
  const cluster = await testCluster(api);
  await startTestRunner(t, api, { cluster, env: { GANTRY_RUNNER_SLOTS: '2' } });
  const other = await api.store.accounts.createProject(api.user.userId, 'second');

  const context = await launchChromium(t);
  const { page, errors } = await watchedPage(context);
  const alerts: string[] = [];
  page.on('dialog', (d) => {
    if (d.type() === 'confirm') return void d.accept();
    alerts.push(`${d.type()}: ${d.message()}`);
    return void d.dismiss();
  });

  await t.test('sign in: the token is kept in sessionStorage, never in the address bar', async (t) => {
    await page.goto(`${api.url}/`);
    await page.fill('#token', 'not-a-token');
    await page.click('#sign-in button[type=submit]');
    t.match(await page.locator('#sign-in .error').textContent(), /401/, 'a wrong token is refused');
    // Chromium reports the refused request itself on the console: that one is expected.
    t.match(errors.splice(0), [/^console: Failed to load resource: the server responded with a status of 401/], 'the 401, and nothing else');
    await signIn(page, api.url, api.user.token);
    t.notMatch(page.url(), new RegExp(api.user.token), 'not in the URL');
    t.equal(await page.evaluate(() => sessionStorage.getItem('gantry.oauth')), api.user.token);
    const options = await page.locator('#project option').allTextContents();
    t.same(options.map((o) => o.replace(/ \(.*\)$/, '')), ['test', 'second'], 'the switcher lists both projects');
    t.equal(await page.locator('#project').inputValue(), api.user.projectId, 'the first project is chosen');
    await page.locator('#health .big').waitFor();
    t.equal(await page.locator('#health .big').textContent(), 'healthy', 'the farm page shows health');
  });

  await t.test('upload a code package through the form', async (t) => {
    await page.goto(`${api.url}/#/codes`);
    const upload = async (name: string, command: string) => {
      await page.fill('#upload input[name=name]', name);
      await page.fill('#upload input[name=image]', TEST_IMAGE);
      await page.fill('#upload input[name=command]', command);
      await page.click('#upload button[type=submit]');
      await page.locator('#upload .ok').filter({ hasText: `Uploaded ${name} revision 1.` }).waitFor();
    };
    await upload('ticker', 'echo start; i=0; while [ $i -lt 15 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done; cat $PAYLOAD_FILE');
    await upload('sleeper', 'echo sleeping; sleep 120');
    await page.locator('#codes a', { hasText: 'sleeper' }).waitFor();
    t.same(await page.locator('#codes td:first-child').allTextContents(), ['sleeper', 'ticker'].sort(), 'both listed');
    const codes = (await api.user.project('GET', '/codes')).body.codes;
    t.match(codes.find((c: { name: string }) => c.name === 'ticker'), { image: TEST_IMAGE, rev: 1, command: /^echo start/ }, 'the API has it');
    await page.click('#codes a >> text=ticker');
    await page.locator('#revisions tbody tr').first().waitFor();
    t.equal(await page.locator('#revisions tbody tr').count(), 1, 'its one revision');
    await page.locator('#code-stats').waitFor();

    // A new revision with a zip, from the package's page; then its zip downloaded.
    const zip = makeZip([{ name: 'notes.txt', data: Buffer.from('hello from the zip\n') }]);
    await page.setInputFiles('#upload input[name=file]', { name: 'bundle.zip', mimeType: 'application/zip', buffer: zip });
    await page.click('#upload button[type=submit]');
    await page.locator('#upload .ok', { hasText: 'Uploaded ticker revision 2.' }).waitFor();
    await page.locator('#revisions tbody tr').nth(1).waitFor();
    t.equal(await page.locator('#revisions tbody tr').count(), 2, 'two revisions');
    const code = (await api.user.project('GET', '/codes')).body.codes.find((c: { name: string }) => c.name === 'ticker');
    t.match(code, { rev: 2, file_name: 'bundle.zip', image: TEST_IMAGE, command: /^echo start/ }, 'the zip joined the settings it kept');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('button:text("Download zip")')]);
    const saved = await download.path();
    const { readFileSync } = await import('node:fs');
    t.equal(readFileSync(saved).equals(zip), true, 'the download is the zip uploaded');

    // Pause and resume its queue.
    await page.click('button:text("Pause queue")');
    await page.locator('button:text("Resume queue")').waitFor();
    t.equal((await api.user.project('GET', `/codes/${code.id}`)).body.paused, true, 'paused');
    await page.click('button:text("Resume queue")');
    await page.locator('button:text("Pause queue")').waitFor();
    t.equal((await api.user.project('GET', `/codes/${code.id}`)).body.paused, false, 'resumed');
  });

  let done = '';
  await t.test('queue a task from the form: its log appears live, its status reaches complete, the payload is text', async (t) => {
    await page.goto(`${api.url}/#/tasks`);
    await page.selectOption('#queue-task select[name=code_name]', 'ticker');
    await page.fill('#queue-task textarea[name=payload]', XSS);
    await page.fill('#queue-task input[name=label]', XSS);
    await page.click('#queue-task button[type=submit]');
    await page.waitForURL(/#\/tasks\/[0-9a-f]{24}$/);
    done = page.url().split('/').pop()!;
    t.equal((await api.user.project('GET', `/tasks/${done}`)).body.payload, XSS, 'queued with the payload typed');

    await page.waitForFunction(() => (document.getElementById('log')?.textContent ?? '').includes('tick 3'));
    t.equal((await api.user.project('GET', `/tasks/${done}`)).body.status, 'running', 'lines were shown while it ran');
    await page.locator('#task-status', { hasText: 'complete' }).waitFor({ timeout: 30_000 });
    await page.locator('#log-state', { hasText: 'ended: complete' }).waitFor();
    const stored = (await api.user.project('GET', `/tasks/${done}/log`)).text;
    t.equal(await page.locator('#log').textContent(), stored, 'the page shows the whole log');
    t.ok(stored.endsWith(XSS), 'the task printed the payload');
    t.equal(await page.locator('#payload').textContent(), XSS, 'the payload is shown as text');
    t.equal(await page.locator('img').count(), 0, 'no element was made of it');
    t.match(await page.locator('#timeline').textContent(), /queued.*#1 started.*complete/s, 'the timeline, in order');
    t.equal(await page.locator('#executions tbody tr').count(), 1, 'one execution');
  });

  await t.test('cancel a running task', async (t) => {
    await page.goto(`${api.url}/#/tasks?code_name=sleeper`);
    await page.click('#queue-task button[type=submit]');
    await page.waitForURL(/#\/tasks\/[0-9a-f]{24}$/);
    const id = page.url().split('/').pop()!;
    await page.waitForFunction(() => (document.getElementById('log')?.textContent ?? '').includes('sleeping'), undefined, { timeout: 30_000 });
    await page.locator('#task-status', { hasText: 'running' }).waitFor();
    await page.click('button:text("Cancel")');
    await page.locator('#task-status', { hasText: 'cancelled' }).waitFor({ timeout: 30_000 });
    t.equal((await api.user.project('GET', `/tasks/${id}`)).body.status, 'cancelled', 'the API says cancelled');
    await page.locator('#log-state', { hasText: 'ended: cancelled' }).waitFor();
  });

  await t.test('the task list: filters by status and code, shown as text', async (t) => {
    await page.goto(`${api.url}/#/tasks?complete=1`);
    await page.locator(`#tasks tr[data-id="${done}"]`).waitFor();
    t.equal(await page.locator('#tasks tbody tr').count(), 1, 'only the complete one');
    t.match(await page.locator(`#tasks tr[data-id="${done}"]`).textContent(), XSS, 'its label is text');
    await page.goto(`${api.url}/#/tasks?cancelled=1&code_name=ticker`);
    await page.locator('#tasks + p.muted', { hasText: 'No task matches.' }).waitFor();
    await page.goto(`${api.url}/#/tasks`);
    await page.locator('#tasks tbody tr').nth(1).waitFor();
    t.equal(await page.locator('#tasks tbody tr').count(), 2, 'all, newest first');
    await page.goto(`${api.url}/#/tasks?from=${new Date(Date.now() + 3_600_000).toISOString()}`);
    await page.locator('#tasks + p.muted', { hasText: 'No task matches.' }).waitFor();
    t.equal(await page.locator('#task-filters input[name=from]').inputValue() !== '', true, 'none created after an hour from now; the filter shows its time');
  });

  await t.test('a schedule: created from the form, its tasks listed, cancelled', async (t) => {
    await page.goto(`${api.url}/#/schedules`);
    await page.selectOption('#new-schedule select[name=code_name]', 'ticker');
    await page.fill('#new-schedule input[name=name]', 'every minute');
    await page.fill('#new-schedule input[name=run_every]', '60');
    await page.fill('#new-schedule textarea[name=payload]', '{"from":"schedule"}');
    await page.click('#new-schedule button[type=submit]');
    await page.waitForURL(/#\/schedules\/[0-9a-f]{24}$/);
    const id = page.url().split('/').pop()!;
    const s = (await api.user.project('GET', `/schedules/${id}`)).body;
    t.match(s, { code_name: 'ticker', name: 'every minute', run_every: 60, status: 'scheduled', payload: '{"from":"schedule"}' }, 'the API has it');
    await page.locator('#next-fires li').nth(4).waitFor();
    t.equal(await page.locator('#next-fires li').count(), 5, 'its next five fire times');
    // Its first run is due now: the scheduler queues it and the page lists it.
    await page.locator('#schedule-tasks tbody tr').first().waitFor({ timeout: 30_000 });
    const queued = (await api.user.project('GET', `/schedules/${id}/tasks`)).body.tasks;
    t.equal(await page.locator('#schedule-tasks tbody tr').count(), queued.length, 'the tasks it queued');
    await page.click('button:text("Cancel schedule")');
    await page.locator('#schedule-status', { hasText: 'cancelled' }).waitFor();
    t.equal((await api.user.project('GET', `/schedules/${id}`)).body.status, 'cancelled', 'the API says cancelled');
  });

  await t.test('retry a finished task', async (t) => {
    await page.goto(`${api.url}/#/tasks/${done}`);
    await page.locator('#task-status', { hasText: 'complete' }).waitFor();
    await page.click('button:text("Retry")');
    await page.waitForURL((u) => /#\/tasks\/[0-9a-f]{24}$/.test(u.hash) && !u.hash.endsWith(done));
    const id = page.url().split('/').pop()!;
    t.match((await api.user.project('GET', `/tasks/${id}`)).body, { original_task_id: done, payload: XSS }, 'a new task, retrying the first');
    await page.locator(`a[href="#/tasks/${done}"]`, { hasText: done }).waitFor();
    t.pass('the page links the original');
  });

  await t.test('the project switcher and sign out', async (t) => {
    await page.goto(`${api.url}/#/codes`);
    await page.locator('#codes').waitFor();
    await page.selectOption('#project', other.id);
    await page.locator('main p.muted', { hasText: 'No code package yet' }).waitFor();
    t.equal(await page.evaluate(() => sessionStorage.getItem('gantry.project')), other.id);
    await page.click('#sign-out');
    await page.locator('#sign-in').waitFor();
    t.equal(await page.evaluate(() => sessionStorage.getItem('gantry.oauth')), null, 'the token is forgotten');
  });

  t.same(alerts, [], 'no script of a payload ran');
  t.same(errors, [], 'no script errors, no console errors, no CSP violations');
});
