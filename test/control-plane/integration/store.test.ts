// The store on both engines: migrations (idempotent, safe when several replicas start at
// once), and the domain operations the API relies on.
import t from 'tap';
import { newId } from '../../../lib/ids.ts';
import { systemClock } from '../../../lib/clock.ts';
import { silentLogger } from '../../../lib/logger.ts';
import { openStore } from '../../../control-plane/store/index.ts';
import { loadMigrations, migrate } from '../../../control-plane/store/migrate.ts';
import { ENGINES, freshPgDatabase, freshStore } from '../../helpers/db.ts';

t.test('migrations applied by several replicas starting at once run exactly once', async (t) => {
  const url = await freshPgDatabase(t);
  const opts = { databaseUrl: url, dataDir: '/nonexistent', pgPoolMax: 2, pgConnectTimeoutMs: 3000, pgQueryTimeoutMs: 15000 };
  const stores = await Promise.all([1, 2, 3, 4, 5].map(() => openStore(opts, silentLogger(), systemClock, newId)));
  t.teardown(() => Promise.all(stores.map((s) => s.close())));
  const rows = (await stores[0]!.db.query<{ version: number }>('SELECT version FROM gantry_migrations ORDER BY version')).rows;
  t.same(rows.map((r) => r.version), loadMigrations().map((m) => m.version), 'each migration recorded once');
});

for (const engine of ENGINES) {
  t.test(`store on ${engine}`, async (t) => {
    const store = await freshStore(t, engine);

    t.test('migrating again applies nothing', async (t) => {
      t.equal(await migrate(store.db, silentLogger()), 0);
    });

    t.test('times cross the store unchanged at the edges of the calendar', async (t) => {
      // Years 1-99 once came back from PGlite as 2001-2099; a Date before year 1 was refused.
      for (const iso of ['0001-01-01T00:00:00.000Z', '0050-06-15T12:34:56.789Z', '0099-12-31T23:59:59.999Z', '9999-12-31T23:59:59.999Z', '2026-12-02T01:02:03.004Z']) {
        const r = await store.db.query<{ t: Date }>('SELECT $1::timestamptz AS t', [new Date(iso)]);
        t.equal(r.rows[0]!.t.toISOString(), iso, `${iso} reads back as sent`);
      }
      const bc = new Date(Date.UTC(0, 11, 31));
      bc.setUTCFullYear(0);
      const r = await store.db.query<{ t: Date; year: number }>('SELECT $1::timestamptz AS t, extract(year FROM $1::timestamptz AT TIME ZONE \'UTC\')::int AS year', [bc]);
      t.equal(r.rows[0]!.t.getTime(), bc.getTime(), 'the day before year 1 reads back as sent');
      t.equal(r.rows[0]!.year, -1, 'and is 1 BC to PostgreSQL');
    });

    t.test('accounts: tokens authenticate their user until revoked; only hashes are kept', async (t) => {
      const u = await store.accounts.createUser(`a-${engine}@example.com`);
      const tok = await store.accounts.createToken(u.id, 'x');
      t.equal(await store.accounts.authenticate(tok.token), u.id);
      t.equal(await store.accounts.authenticate(tok.token + 'x'), undefined);
      const raw = await store.db.query<{ token_hash: string }>('SELECT token_hash FROM tokens WHERE id = $1', [tok.id]);
      t.not(raw.rows[0]!.token_hash, tok.token);
      t.ok(await store.accounts.revokeToken(tok.id));
      t.equal(await store.accounts.authenticate(tok.token), undefined);
      const p = await store.accounts.createProject(u.id, 'p');
      const other = await store.accounts.createUser(`b-${engine}@example.com`);
      t.ok(await store.accounts.projectOfUser(p.id, u.id));
      t.equal(await store.accounts.projectOfUser(p.id, other.id), undefined, 'not visible to another user');
    });

    t.test('codes: concurrent first uploads of one name make one package with two revisions', async (t) => {
      const u = await store.accounts.createUser(`c-${engine}@example.com`);
      const p = await store.accounts.createProject(u.id, 'p');
      const [a, b] = await Promise.all([
        store.codes.upload(p.id, 'same', { image: 'busybox' }),
        store.codes.upload(p.id, 'same', { image: 'busybox' }),
      ]);
      t.equal(a!.id, b!.id, 'one package');
      t.same([a!.rev, b!.rev].sort(), [1, 2], 'two revisions');
      const zip = Buffer.from('PK\x05\x06' + '\0'.repeat(18), 'binary');
      const c = await store.codes.upload(p.id, 'same', { image: 'busybox', retries: 3 }, { data: zip, fileName: 'x.zip', checksum: 'c' });
      t.same(await store.codes.archive(c.latestRevisionId), zip, 'archive bytes round-trip');
    });
  });
}
