import t from 'tap';
import {
  CONTAINER_DEFAULTS,
  DOCKER_DEFAULT_CAPS,
  isValidUser,
  normaliseCap,
  resolveContainerPolicy,
  sortCaps,
} from '../../../lib/container-policy.ts';

t.test('the add-list is exactly Docker\'s default capability set', async (t) => {
  t.same([...DOCKER_DEFAULT_CAPS].sort(), [
    'AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE', 'NET_RAW', 'SETFCAP', 'SETGID',
    'SETPCAP', 'SETUID', 'SYS_CHROOT',
  ]);
});

t.test('capability names: with or without CAP_, any case; nothing outside the default set', async (t) => {
  for (const n of ['chown', 'CHOWN', 'cap_chown', 'CAP_CHOWN', 'Cap_Chown', ' chown ']) t.equal(normaliseCap(n), 'CHOWN', n);
  for (const n of ['SYS_ADMIN', 'cap_sys_admin', 'NET_ADMIN', 'SYS_PTRACE', 'ALL', '', 'CAP_', 'CHOWNX', 'CAP_CAP_CHOWN']) {
    t.equal(normaliseCap(n), undefined, JSON.stringify(n));
  }
  t.same(sortCaps(['SETUID', 'CHOWN', 'SETUID']), ['CHOWN', 'SETUID'], 'sorted and unique');
});

t.test('users as Docker takes them', async (t) => {
  for (const u of ['0', '1000', '1000:1000', 'nobody', 'app:staff', 'app:100', '100:staff', '_svc', 'a.b-c_d', '2147483647']) t.ok(isValidUser(u), u);
  for (const u of ['', ':', '1000:', ':1000', '1:2:3', '-rf', 'root; rm', 'a b', '2147483648', '99999999999', 'a'.repeat(33), 'ünï', '$(id)']) {
    t.notOk(isValidUser(u), JSON.stringify(u));
  }
});

t.test('what a runner applies', async (t) => {
  t.same(resolveContainerPolicy(undefined), { policy: CONTAINER_DEFAULTS, ignored: [] }, 'no policy: the defaults');
  t.same(
    resolveContainerPolicy({ capAdd: [], pidsLimit: 0, readOnlyRootfs: false, tmpSizeMb: 0, user: '', nofile: 0 }).policy,
    CONTAINER_DEFAULTS,
    'zero fields: the defaults',
  );
  const r = resolveContainerPolicy({ capAdd: ['kill', 'SYS_ADMIN', 'CAP_CHOWN', 'kill'], pidsLimit: 5, nofile: 10_000_000, tmpSizeMb: 2 ** 30, user: 'nobody' });
  t.same(r.policy, { capAdd: ['CHOWN', 'KILL'], pidsLimit: 16, readOnlyRootfs: false, tmpSizeMb: 1_048_576, user: 'nobody', nofile: 1_048_576, network: 'bridge' });
  t.same(r.ignored, ['cap_add "SYS_ADMIN"'], 'what it left out, for the log');
  t.notOk(r.error);
  const bad = resolveContainerPolicy({ user: 'root; id' });
  t.equal(bad.error, 'the container user "root; id" is not uid[:gid] or name[:group]', 'a malformed user is not guessed at');
  t.same(resolveContainerPolicy({ pidsLimit: 100.7, nofile: Number.NaN }).policy, { ...CONTAINER_DEFAULTS, pidsLimit: 100 });
  t.not(resolveContainerPolicy(undefined).policy.capAdd, CONTAINER_DEFAULTS.capAdd, 'a fresh list each time');
  t.equal(resolveContainerPolicy({ network: 'host' }).policy.network, 'host');
  t.equal(resolveContainerPolicy({ network: 'jobs_net.1' }).policy.network, 'jobs_net.1', "a network's name");
  t.equal(resolveContainerPolicy({ network: '' }).policy.network, 'bridge', 'empty (as protobuf reads a missing one): the bridge');
  t.equal(resolveContainerPolicy({ network: 'container:db' }).error, 'the container network "container:db" is not none, bridge, host or a network\'s name', "another container's namespace is never joined");
});
