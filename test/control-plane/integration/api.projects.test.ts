/**
 * `GET /2/projects`: the projects of the token's user, oldest first, with id, name and
 * created_at only; another user's are never listed; no token is a 401. On both engines.
 */
import t from 'tap';
import { startTestApi } from '../../helpers/api.ts';
import { isError } from '../../helpers/assert.ts';
import { ENGINES } from '../../helpers/db.ts';

for (const engine of ENGINES) {
  t.test(`GET /2/projects (${engine})`, async (t) => {
    const api = await startTestApi(t, engine);
    const second = await api.store.accounts.createProject(api.user.userId, 'second <b>');
    const other = await api.newUser();

    const r = await api.request('GET', '/2/projects');
    t.equal(r.status, 200, r.text);
    t.same(r.body.projects.map((p: { id: string; name: string }) => [p.id, p.name]), [[api.user.projectId, 'test'], [second.id, 'second <b>']], 'both of the user\'s, oldest first');
    t.same(Object.keys(r.body.projects[0]).sort(), ['created_at', 'id', 'name'], 'id, name and created_at only');
    t.ok(!Number.isNaN(Date.parse(r.body.projects[1].created_at)), 'created_at is a time');

    const theirs = await api.request('GET', '/2/projects', { token: other.token });
    t.same(theirs.body.projects.map((p: { id: string }) => p.id), [other.projectId], "another user sees only their own");
    t.equal((await api.request('GET', '/2/projects', { query: { oauth: api.user.token }, token: null })).body.projects.length, 2, '?oauth= works as everywhere');
    isError(t, await api.request('GET', '/2/projects', { token: null }), 401, /./);
    isError(t, await api.request('GET', '/2/projects', { token: 'nope' }), 401, /./);
  });
}
