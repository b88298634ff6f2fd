import t from 'tap';
import { loadConfig, redactedConfig } from '../../../control-plane/config.ts';
import { ConfigError } from '../../../lib/errors.ts';

t.test('defaults', async (t) => {
  const c = loadConfig({});
  t.equal(c.databaseUrl, undefined, 'no DATABASE_URL means PGlite');
  t.equal(c.port, 8080);
  t.equal(c.maxTimeout, 3600);
  t.ok(Object.isFrozen(c), 'config is frozen');
});

t.test('bad values name the variable', async (t) => {
  t.throws(() => loadConfig({ GANTRY_PORT: 'abc' }), { message: /GANTRY_PORT/ });
  t.throws(() => loadConfig({ GANTRY_PORT: '70000' }), ConfigError);
  t.throws(() => loadConfig({ DATABASE_URL: 'mysql://x' }), { message: /DATABASE_URL/ });
  t.throws(() => loadConfig({ LOG_LEVEL: 'loud' }), { message: /LOG_LEVEL/ });
  t.throws(() => loadConfig({ GANTRY_CLUSTER_MAX_TIMEOUTS: 'long:5' }), { message: /GANTRY_CLUSTER_MAX_TIMEOUTS/ });
});

t.test('cluster timeout ceilings', async (t) => {
  t.same(loadConfig({ GANTRY_CLUSTER_MAX_TIMEOUTS: 'long=86400, etl=43200' }).clusterMaxTimeouts, { long: 86400, etl: 43200 });
});

t.test('the logged config never shows the database password', async (t) => {
  const r = JSON.stringify(redactedConfig(loadConfig({ DATABASE_URL: 'postgres://u:s3cret@db:5432/g' })));
  t.notMatch(r, /s3cret/);
  t.match(r, /postgres:\/\/u:\*\*\*@db:5432\/g/);
});

t.test('the logged config never shows the SMTP password; the egress allow-list reads as text', async (t) => {
  const c = loadConfig({
    GANTRY_SMTP_HOST: 'smtp.example.com',
    GANTRY_SMTP_USER: 'gantry',
    GANTRY_SMTP_PASSWORD: 'smtp-s3cret-pw',
    GANTRY_WEBHOOK_ALLOW: '10.0.0.0/8,hooks.internal',
  });
  t.equal(c.deliveries.smtp?.password, 'smtp-s3cret-pw', 'the mailer can read it');
  const r = JSON.stringify(redactedConfig(c));
  t.notMatch(r, /smtp-s3cret-pw/);
  t.match(r, /"password":"\[redacted\]"/);
  t.match(r, /"egress":\["10\.0\.0\.0\/8","hooks\.internal"\]/);
});

t.test('/metrics protection: a token and a separate listener, checked and never logged', async (t) => {
  const token = 'scrape-0123456789abcdef';
  const c = loadConfig({ GANTRY_METRICS_TOKEN: token, GANTRY_METRICS_PORT: '9464', GANTRY_METRICS_HOST: '0.0.0.0' });
  t.match(c, { metricsToken: token, metricsPort: 9464, metricsHost: '0.0.0.0' });
  t.match(loadConfig({}), { metricsToken: undefined, metricsPort: undefined }, 'by default /metrics is open, on the API port');
  t.notMatch(JSON.stringify(redactedConfig(c)), new RegExp(token), 'the logged config hides the token');
  t.throws(() => loadConfig({ GANTRY_METRICS_TOKEN: 'short' }), { message: /GANTRY_METRICS_TOKEN must be at least 16/ });
  t.throws(() => loadConfig({ GANTRY_METRICS_TOKEN: 'has a space in it, long enough' }), { message: /GANTRY_METRICS_TOKEN may hold only printable/ });
  t.throws(() => loadConfig({ GANTRY_METRICS_PORT: 'x' }), { message: /GANTRY_METRICS_PORT must be an integer/ });
  t.throws(() => loadConfig({ GANTRY_METRICS_PORT: '8080' }), { message: /GANTRY_METRICS_PORT must differ from GANTRY_PORT/ });
  t.throws(() => loadConfig({ GANTRY_METRICS_HOST: '0.0.0.0' }), { message: /GANTRY_METRICS_HOST needs GANTRY_METRICS_PORT/ });
});

t.test('retention: periods, batch, pause and interval, with clear errors', async (t) => {
  t.same(
    loadConfig({}).retention,
    { tasksDays: 30, schedulesDays: 30, batch: 1000, pauseMs: 100, intervalS: 3600, queueLoadDays: 30, queueLoadHourlyDays: 365, statsRawDays: 2, statsMinuteDays: 30, statsHourDays: 365 },
    'defaults',
  );
  t.equal(loadConfig({}).statsIntervalS, 10, 'stats interval default');
  t.throws(() => loadConfig({ GANTRY_STATS_INTERVAL_S: '0' }), { message: /GANTRY_STATS_INTERVAL_S/ });
  t.same(loadConfig({ GANTRY_OPERATORS: ' Ops@Example.com, b@example.com,' }).operators, ['ops@example.com', 'b@example.com'], 'operators');
  t.match(loadConfig({ GANTRY_RETENTION_TASKS_DAYS: '7' }).retention, { tasksDays: 7, schedulesDays: 7 }, 'schedules follow tasks unless set');
  t.match(loadConfig({ GANTRY_RETENTION_TASKS_DAYS: '0', GANTRY_RETENTION_SCHEDULES_DAYS: '90' }).retention, { tasksDays: 0, schedulesDays: 90 }, '0 disables a kind');
  t.throws(() => loadConfig({ GANTRY_RETENTION_TASKS_DAYS: '-1' }), { message: /GANTRY_RETENTION_TASKS_DAYS must be at least 0/ });
  t.throws(() => loadConfig({ GANTRY_RETENTION_BATCH: '0' }), { message: /GANTRY_RETENTION_BATCH must be at least 1/ });
  t.throws(() => loadConfig({ GANTRY_RETENTION_INTERVAL_S: 'hourly' }), { message: /GANTRY_RETENTION_INTERVAL_S must be an integer/ });
  t.throws(() => loadConfig({ GANTRY_RETENTION_PAUSE_MS: '600000' }), { message: /GANTRY_RETENTION_PAUSE_MS must be at most 60000/ });
  t.match(loadConfig({ GANTRY_RETENTION_QUEUE_LOAD_DAYS: '7', GANTRY_RETENTION_QUEUE_LOAD_HOURLY_DAYS: '0' }).retention, { queueLoadDays: 7, queueLoadHourlyDays: 0 });
  t.throws(() => loadConfig({ GANTRY_RETENTION_QUEUE_LOAD_DAYS: '-1' }), { message: /GANTRY_RETENTION_QUEUE_LOAD_DAYS must be at least 0/ });
});

t.test('queue load: recorded every minute unless set; 0 records nothing', async (t) => {
  t.equal(loadConfig({}).queueLoadIntervalS, 60);
  t.equal(loadConfig({ GANTRY_QUEUE_LOAD_INTERVAL_S: '0' }).queueLoadIntervalS, 0);
  t.throws(() => loadConfig({ GANTRY_QUEUE_LOAD_INTERVAL_S: '3601' }), { message: /GANTRY_QUEUE_LOAD_INTERVAL_S must be at most 3600/ });
});
