import t from 'tap';
import { ENGINES } from '../../helpers/db.ts';
import { startTestApi, uploadCode } from '../../helpers/api.ts';

for (const engine of ENGINES) {
  t.test(`smoke on ${engine}`, async (t) => {
    const api = await startTestApi(t, engine);
    const up = await uploadCode(api.user, { name: 'hello' });
    t.equal(up.status, 200, up.text);
    const q = await api.user.project('POST', '/tasks', { json: { tasks: [{ code_name: 'hello', payload: '{"x":1}' }] } });
    t.equal(q.status, 200, q.text);
    const id = q.body.tasks[0].id;
    const g = await api.user.project('GET', `/tasks/${id}`);
    t.equal(g.body.status, 'queued');
    t.equal(g.body.payload, '{"x":1}');
  });
}
