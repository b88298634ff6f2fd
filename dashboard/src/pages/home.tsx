import { api, TASK_STATUSES, type Farm, type Health } from '../api.ts';
import { href } from '../router.ts';
import { Loading, Status, Time, useEvery, useLoad } from '../ui.tsx';

/** The first page: the farm's health and state at a glance (GET /healthcheck, GET /2/status). */
export function Home() {
  const farm = useLoad((signal) => api<Farm>('/2/status', { signal }), []);
  // /healthcheck answers 503 with the same body when a dependency is down: read it either way.
  const health = useLoad(async (signal) => {
    const res = await fetch('/healthcheck', { signal, cache: 'no-store' });
    return (await res.json()) as Health;
  }, []);
  useEvery(5000, farm.reload);
  useEvery(5000, health.reload);
  const f = farm.data;
  const h = health.data;
  return (
    <>
      <h1>Farm</h1>
      <section class="cards">
        <div id="health" class={`card ${h ? (h.errors.length ? 'bad' : 'good') : ''}`}>
          <h2>Health</h2>
          {h ? (
            <>
              <p class="big">{h.errors.length ? 'degraded' : 'healthy'}</p>
              <p>
                {h.database} {h.postgres ? 'up' : 'down'}
                {h.etcd === null ? '' : `, etcd ${h.etcd ? 'up' : 'down'}`}
                {h.draining ? ', draining' : ''}
              </p>
              {h.errors.map((e) => (
                <p class="error" key={e}>{e}</p>
              ))}
            </>
          ) : (
            <Loading error={health.error} />
          )}
        </div>
        {f ? (
          <>
            <div class="card">
              <h2>Runners</h2>
              <p class="big">{f.hosts.filter((x) => x.connected).length}</p>
              <p>
                connected of {f.hosts.length}; slots {f.hosts.reduce((n, x) => n + x.busy, 0)}/{f.hosts.reduce((n, x) => n + x.slots, 0)} busy
              </p>
            </div>
            <div class="card">
              <h2>Tasks</h2>
              <p class="big">
                {f.counts.tasks.running} <small>running</small>
              </p>
              <p>
                {f.counts.tasks.queued} queued, {f.others_running} of other users running
              </p>
            </div>
            <div class="card">
              <h2>Project</h2>
              <p class="big">{f.counts.codes} <small>codes</small></p>
              <p>{f.counts.schedules} schedules</p>
            </div>
          </>
        ) : null}
      </section>
      {!f ? (
        <Loading error={farm.error} />
      ) : (
        <>
          <h2>Tasks by status</h2>
          <p class="counts" id="counts">
            {TASK_STATUSES.map((s) => (
              <a key={s} href={href('tasks', { [s]: 1 })}>
                <Status s={s} /> {f.counts.tasks[s]}
              </a>
            ))}
          </p>
          <div class="two">
            <section>
              <h2>Running now</h2>
              {f.running.length === 0 ? (
                <p class="muted">Nothing runs.</p>
              ) : (
                <table>
                  <thead><tr><th>Task</th><th>Code</th><th>Runner</th><th>Since</th></tr></thead>
                  <tbody>
                    {f.running.map((r) => (
                      <tr key={r.task_id}>
                        <td><a href={`#/tasks/${r.task_id}`}>{r.task_id}</a></td>
                        <td>{r.code_name}</td>
                        <td>{r.runner_id}</td>
                        <td><Time at={r.since} /></td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
            <section>
              <h2>Queues</h2>
              {f.queues.clusters.length === 0 ? (
                <p class="muted">No queue.</p>
              ) : (
                <table>
                  <thead><tr><th>Cluster</th><th>Queued</th><th>Delayed</th><th>Running</th></tr></thead>
                  <tbody>
                    {f.queues.clusters.map((c) => (
                      <tr key={c.cluster}><td>{c.cluster}</td><td>{c.queued}</td><td>{c.delayed}</td><td>{c.running}</td></tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
          </div>
          <div class="two">
            <section>
              <h2>Hosts</h2>
              <table>
                <thead><tr><th>Runner</th><th>Cluster</th><th>State</th><th>Slots</th></tr></thead>
                <tbody>
                  {f.hosts.map((x) => (
                    <tr key={x.runner_id}>
                      <td><a href={`#/runners/${encodeURIComponent(x.runner_id)}`}>{x.hostname || x.runner_id}</a></td>
                      <td>{x.cluster}</td>
                      <td><Status s={!x.connected ? 'gone' : x.penalised ? 'penalised' : x.draining ? 'draining' : 'available'} /></td>
                      <td>{x.busy}/{x.slots}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </section>
            <section>
              <h2>Upcoming</h2>
              {f.upcoming.length === 0 ? (
                <p class="muted">No schedule is due.</p>
              ) : (
                <table>
                  <thead><tr><th>Schedule</th><th>Code</th><th>Next</th></tr></thead>
                  <tbody>
                    {f.upcoming.map((u) => (
                      <tr key={u.schedule_id + u.next_start}>
                        <td><a href={`#/schedules/${u.schedule_id}`}>{u.schedule_id.slice(-8)}</a></td>
                        <td>{u.code_name}</td>
                        <td><Time at={u.next_start} /></td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
          </div>
        </>
      )}
    </>
  );
}
