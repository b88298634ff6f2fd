/**
 * The clusters' `container` settings over HTTP on both engines: defaults shown, create and
 * partial update, capability names normalised, every bad value a 400 naming the field and
 * the limit that changes nothing, what a shared user sees, the `default` cluster and the
 * clusters that existed before migration 010.
 */
import t from 'tap';
import { silentLogger } from '../../../lib/logger.ts';
import { CONTAINER_DEFAULTS } from '../../../lib/container-policy.ts';
import { openPglite, openPostgres, type Db } from '../../../control-plane/store/db.ts';
import { loadMigrations, migrate } from '../../../control-plane/store/migrate.ts';
import { startTestApi, type ApiUser, type TestApi } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { ENGINES, freshPgDatabase, tempDir } from '../../helpers/db.ts';

const MiB = 1024 * 1024;
const DEFAULTS = { cap_add: [], pids_limit: 1024, read_only_rootfs: false, tmp_size: 64 * MiB, user: null, nofile: 4096, network: 'bridge' };
const ALLOWED =
  'AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, NET_RAW, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT';

for (const engine of ENGINES) {
  t.test(`container settings on ${engine}`, async (t) => {
    const api: TestApi = await startTestApi(t, engine);
    const owner = api.user;
    const as = (u: ApiUser) => ({
      get: (path: string) => api.request('GET', `/2${path}`, { token: u.token }),
      post: (path: string, json: unknown) => api.request('POST', `/2${path}`, { token: u.token, json }),
      put: (path: string, json: unknown) => api.request('PUT', `/2${path}`, { token: u.token, json }),
    });
    const o = as(owner);
    const rawRow = async (id: string) =>
      (await api.store.db.query<Record<string, unknown>>('SELECT * FROM clusters WHERE id = $1', [id])).rows[0]!;
    const count = async () => (await api.store.db.query<{ n: number }>('SELECT count(*)::int AS n FROM clusters')).rows[0]!.n;

    t.test('a cluster created without them shows the defaults; the list form does not carry them', async (t) => {
      const r = await o.post('/clusters', { name: 'plain' });
      t.equal(r.status, 200, r.text);
      t.same(r.body.cluster.container, DEFAULTS);
      t.same((await o.get(`/clusters/${r.body.id}`)).body.cluster.container, DEFAULTS, 'GET shows the same');
      const listed = (await o.get('/clusters')).body.clusters.find((c: { id: string }) => c.id === r.body.id);
      t.notOk('container' in listed);
      t.same(await api.store.clusters.containerPolicy(r.body.id), CONTAINER_DEFAULTS, 'what runners are sent');
    });

    t.test('create with settings: capability names normalised, sorted, unique', async (t) => {
      const r = await o.post('/clusters', {
        name: 'tight',
        container: {
          cap_add: ['chown', 'CAP_NET_RAW', 'Cap_Chown', ' kill '],
          pids_limit: 64,
          read_only_rootfs: true,
          tmp_size: 16 * MiB,
          user: '1000:1000',
          nofile: '1024',
          network: 'none',
        },
      });
      t.equal(r.status, 200, r.text);
      const shown = { cap_add: ['CHOWN', 'KILL', 'NET_RAW'], pids_limit: 64, read_only_rootfs: true, tmp_size: 16 * MiB, user: '1000:1000', nofile: 1024, network: 'none' };
      t.same(r.body.cluster.container, shown);
      t.same((await o.get(`/clusters/${r.body.id}`)).body.cluster.container, shown);
      t.match(await rawRow(r.body.id), {
        container_cap_add: ['CHOWN', 'KILL', 'NET_RAW'],
        container_pids_limit: 64,
        container_read_only_rootfs: true,
        container_tmp_size_mb: 16,
        container_user: '1000:1000',
        container_nofile: 1024,
        container_network: 'none',
      }, 'stored normalised');
      t.same(await api.store.clusters.containerPolicy(r.body.id), {
        capAdd: ['CHOWN', 'KILL', 'NET_RAW'], pidsLimit: 64, readOnlyRootfs: true, tmpSizeMb: 16, user: '1000:1000', nofile: 1024, network: 'none',
      });
      const partial = await o.post('/clusters', { name: 'partial', container: { user: 'nobody' } });
      t.same(partial.body.cluster.container, { ...DEFAULTS, user: 'nobody' }, 'what is not given is the default');
    });

    t.test('update: only the settings given change, like the cluster\'s other fields', async (t) => {
      const { id } = (await o.post('/clusters', { name: 'upd', memory: 256 * MiB, container: { cap_add: ['SETUID', 'SETGID'], user: '1000' } })).body;
      const get = async () => (await o.get(`/clusters/${id}`)).body.cluster;
      const before = await get();
      const r = await o.put(`/clusters/${id}`, { container: { pids_limit: 2048 } });
      t.equal(r.status, 200, r.text);
      t.same(r.body.cluster.container, { ...before.container, pids_limit: 2048 }, 'only pids_limit changed');
      t.same({ ...(await get()), updated_at: before.updated_at }, { ...before, container: { ...before.container, pids_limit: 2048 } }, 'and nothing else of the cluster');
      await o.put(`/clusters/${id}`, { container: { cap_add: ['net_bind_service'] } });
      t.same((await get()).container.cap_add, ['NET_BIND_SERVICE'], 'cap_add replaces the list');
      await o.put(`/clusters/${id}`, { container: { read_only_rootfs: true, nofile: 65536, tmp_size: 128 * MiB } });
      t.match((await get()).container, { read_only_rootfs: true, nofile: 65536, tmp_size: 128 * MiB, cap_add: ['NET_BIND_SERVICE'], user: '1000', pids_limit: 2048 });
      await o.put(`/clusters/${id}`, { container: { user: null, cap_add: [] } });
      t.match((await get()).container, { user: null, cap_add: [] }, 'user null: the image\'s own user again; [] adds nothing');
      await o.put(`/clusters/${id}`, { container: { user: 'app:staff' } });
      t.equal((await get()).container.user, 'app:staff');
      await o.put(`/clusters/${id}`, { container: { user: '' } });
      t.equal((await get()).container.user, null, '"" is the image\'s user too');
      await o.put(`/clusters/${id}`, { container: { network: 'host' } });
      t.equal((await get()).container.network, 'host');
      t.match(await rawRow(id), { container_network: 'host' });
      await o.put(`/clusters/${id}`, { container: { network: 'gantry_jobs.1' } });
      t.equal((await api.store.clusters.containerPolicy(id))!.network, 'gantry_jobs.1', 'a named network reaches what runners are sent');
      await o.put(`/clusters/${id}`, { container: { network: null } });
      t.equal((await get()).container.network, 'bridge', 'null: the default bridge again');
      isError(t, await o.put(`/clusters/${id}`, { container: {} }), 400, /^Nothing to update/);
      // What GET shows can be sent back as is.
      const shown = await get();
      t.equal((await o.put(`/clusters/${id}`, shown)).status, 200, 'a GET body round-trips');
      t.same({ ...(await get()), updated_at: shown.updated_at }, shown);
    });

    t.test('bad values: 400 naming the field and the limit; nothing is stored or changed', async (t) => {
      const { id } = (await o.post('/clusters', { name: 'steady', container: { cap_add: ['CHOWN'], pids_limit: 100, user: '1000:1000' } })).body;
      const rowBefore = await rawRow(id);
      const shownBefore = (await o.get(`/clusters/${id}`)).body.cluster;
      const before = await count();
      const cases: [unknown, RegExp][] = [
        [[], /^container must be an object/],
        ['strict', /^container must be an object/],
        // The request schema (http/schema) may answer before the route's own parser: either wording names the field and the limit.
        [{ colour: 1 }, /^container\.colour is not a (cluster|container) field \(known: cap_add, pids_limit, read_only_rootfs, tmp_size, user, nofile, network\)/],
        [{ cap_add: 'CHOWN' }, new RegExp(`^container\\.cap_add must be an array of capability names from ${ALLOWED}`)],
        [{ cap_add: ['SYS_ADMIN'] }, new RegExp(`^container\\.cap_add\\[0\\]: "SYS_ADMIN" cannot be added; allowed: ${ALLOWED} \\(Docker's default set`)],
        [{ cap_add: ['CHOWN', 'cap_sys_module'] }, /^container\.cap_add\[1\]: "cap_sys_module" cannot be added; allowed: AUDIT_WRITE/],
        [{ cap_add: ['ALL'] }, /^container\.cap_add\[0\]: "ALL" cannot be added/],
        [{ cap_add: ['NET_ADMIN'] }, /^container\.cap_add\[0\]: "NET_ADMIN" cannot be added/],
        [{ cap_add: [7] }, /^container\.cap_add\[0\](: 7 cannot be added| must be a string)/],
        [{ cap_add: Array(65).fill('CHOWN') }, /^container\.cap_add must hold at most 64 entries, got 65/],
        [{ pids_limit: 15 }, /^container\.pids_limit must be an integer from 16 to 1048576, got 15$/],
        [{ pids_limit: 1048577 }, /^container\.pids_limit must be an integer from 16 to 1048576, got 1048577$/],
        [{ pids_limit: -1 }, /^container\.pids_limit must be an integer from 16 to 1048576, got -1$/],
        [{ pids_limit: 'many' }, /^container\.pids_limit must be an integer from 16 to 1048576$/],
        [{ pids_limit: 64.5 }, /^container\.pids_limit must be an integer from 16 to 1048576$/],
        [{ nofile: 63 }, /^container\.nofile must be an integer from 64 to 1048576, got 63$/],
        [{ nofile: 2 ** 21 }, /^container\.nofile must be an integer from 64 to 1048576, got 2097152$/],
        [{ read_only_rootfs: 'yes' }, /^container\.read_only_rootfs must be true or false$/],
        [{ tmp_size: 1000 }, /^container\.tmp_size must be an integer from 1048576 to 1099511627776, got 1000$/],
        [{ tmp_size: MiB + 1 }, /^container\.tmp_size is in bytes and must be a whole number of MiB/],
        [{ user: 5 }, /^container\.user must be a string$/],
        [{ user: 'root; rm -rf /' }, /^container\.user must be uid, uid:gid, name or name:group .*e\.g\. "1000:1000" or "nobody".*got "root; rm -rf \/"$/],
        [{ user: '1000:1000:1000' }, /^container\.user must be uid, uid:gid/],
        [{ user: '4294967295' }, /^container\.user must be uid, uid:gid, name or name:group \(ids up to 2147483647/],
        [{ user: '-rf' }, /^container\.user must be uid/],
        [{ user: 'a'.repeat(33) }, /^container\.user must be uid/],
        [{ user: 'a'.repeat(66) }, /^container\.user must be at most 65 (bytes|characters), got 66$/],
        [{ pids_limit: 64, user: 'bad user' }, /^container\.user must be uid/],
        [{ network: 'container:abc123' }, /^container\.network must be none, bridge, host or a Docker network's name .*got "container:abc123"$/],
        [{ network: '-net' }, /^container\.network must be none, bridge, host/],
        [{ network: 'a'.repeat(129) }, /^container\.network must be at most 128 (bytes|characters), got 129$/],
        [{ network: 5 }, /^container\.network must be a string$/],
      ];
      for (const [container, msg] of cases) {
        const what = JSON.stringify(container).slice(0, 60);
        isError(t, await o.post('/clusters', { name: 'never', container }), 400, msg, `create ${what}`);
        isError(t, await o.put(`/clusters/${id}`, { memory: 1024 * MiB, container }), 400, msg, `update ${what}`);
      }
      t.equal(await count(), before, 'no cluster was created');
      t.same(await rawRow(id), rowBefore, 'the stored row did not change (not even memory, given beside)');
      t.same((await o.get(`/clusters/${id}`)).body.cluster, shownBefore);
    });

    t.test('a shared user sees the settings (they decide what their tasks may do) but cannot change them', async (t) => {
      const bob = await api.newUser();
      const { id } = (await o.post('/clusters', { name: 'shared', shared_to: [bob.userId], container: { read_only_rootfs: true } })).body;
      const seen = await as(bob).get(`/clusters/${id}`);
      t.equal(seen.status, 200);
      t.same(seen.body.cluster.container, { ...DEFAULTS, read_only_rootfs: true });
      t.notOk('autoscale' in seen.body.cluster, 'still none of the owner\'s other settings');
      isError(t, await as(bob).put(`/clusters/${id}`, { container: { read_only_rootfs: false } }), 403, /owner can update it/);
      t.equal((await o.get(`/clusters/${id}`)).body.cluster.container.read_only_rootfs, true);
    });

    t.test('the default cluster (operator-made, as the embedded start makes it) has the defaults', async (t) => {
      const { cluster } = await api.store.clusters.create('default');
      t.same((await api.store.clusters.detail(cluster.id))!.container, CONTAINER_DEFAULTS);
      t.same(await api.store.clusters.containerPolicy(cluster.id), CONTAINER_DEFAULTS);
    });

    t.test('the database refuses what the API refuses, whoever writes', async (t) => {
      const { id } = (await o.post('/clusters', { name: 'sql' })).body;
      for (const [col, v] of [
        ['container_cap_add', ['SYS_ADMIN']],
        ['container_pids_limit', 0],
        ['container_nofile', 10],
        ['container_tmp_size_mb', 0],
        ['container_user', 'root; x'],
      ] as const) {
        await t.rejects(api.store.db.query(`UPDATE clusters SET ${col} = $2 WHERE id = $1`, [id, v]), /violates check constraint/, `${col} = ${JSON.stringify(v)} is refused`);
      }
      t.same(await api.store.clusters.containerPolicy(id), CONTAINER_DEFAULTS);
    });
  });

  t.test(`clusters that existed before migration 010 get the defaults (${engine})`, async (t) => {
    let db: Db;
    if (engine === 'postgres') {
      db = openPostgres({ url: await freshPgDatabase(t), poolMax: 2, connectTimeoutMs: 3000, queryTimeoutMs: 15000, log: silentLogger() });
    } else {
      db = await openPglite(tempDir(t, 'gantry-pglite-'));
    }
    t.teardown(() => db.close());
    const all = loadMigrations();
    t.ok(all.some((m) => m.name === '010_container_policy.sql'));
    await migrate(db, silentLogger(), all.filter((m) => m.version < 10));
    const now = new Date();
    await db.query(
      `INSERT INTO clusters (id, name, user_id, token_hash, memory_mb, created_at, updated_at) VALUES ('0123456789abcdef01234567', 'default', NULL, 'h', 512, $1, $1)`,
      [now],
    );
    await migrate(db, silentLogger(), all);
    const row = (await db.query<Record<string, unknown>>('SELECT * FROM clusters')).rows[0]!;
    t.match(row, {
      container_cap_add: [],
      container_pids_limit: 1024,
      container_read_only_rootfs: false,
      container_tmp_size_mb: 64,
      container_user: null,
      container_nofile: 4096,
      // Tasks of a cluster that existed before 011 ran without network: it keeps that.
      container_network: 'none',
    });
    await db.query(
      `INSERT INTO clusters (id, name, user_id, token_hash, memory_mb, created_at, updated_at) VALUES ('0123456789abcdef01234568', 'later', NULL, 'h2', 512, $1, $1)`,
      [now],
    );
    t.match((await db.query<Record<string, unknown>>("SELECT container_network FROM clusters WHERE name = 'later'")).rows[0], { container_network: 'bridge' }, 'a cluster made since gets the bridge');
    await t.rejects(db.query("UPDATE clusters SET container_network = 'container:x'"), 'the database refuses another container\'s namespace');
  });
}
