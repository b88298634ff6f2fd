import { useState } from 'preact/hooks';
import { api, pp, type Execution, type Task } from '../api.ts';
import { LiveLog } from '../live-log.tsx';
import { Action, Fields, Loading, Status, Time, duration, useEvery, useLoad } from '../ui.tsx';

const FINAL = new Set(['complete', 'error', 'cancelled', 'killed', 'timeout']);

/** The task's moments in order: queued, each execution's offer/accept/start/finish, its end. */
function Timeline({ task, executions }: { task: Task; executions: Execution[] }) {
  const points: [string, string][] = [['queued', task.created_at]];
  for (const e of executions) {
    if (e.offered_at) points.push([`#${e.number} offered${e.hostname ? ` to ${e.hostname}` : ''}`, e.offered_at]);
    if (e.accepted_at) points.push([`#${e.number} accepted`, e.accepted_at]);
    if (e.started_at) points.push([`#${e.number} started`, e.started_at]);
    if (e.finished_at) points.push([`#${e.number} ${e.status}`, e.finished_at]);
  }
  if (!executions.length && task.start_time) points.push(['started', task.start_time]);
  if (task.end_time && FINAL.has(task.status)) points.push([task.status, task.end_time]);
  points.sort((a, b) => Date.parse(a[1]) - Date.parse(b[1]));
  const t0 = Date.parse(task.created_at);
  return (
    <ol class="timeline" id="timeline">
      {points.map(([what, at], i) => (
        <li key={i}>
          <Time at={at} /> <span class="muted">+{duration(Date.parse(at) - t0)}</span> {what}
        </li>
      ))}
    </ol>
  );
}

/** One task: payload, timeline, progress, executions, the live log; cancel and retry. */
export function TaskDetail({ id }: { id: string }) {
  const task = useLoad((signal) => api<Task>(pp(`/tasks/${id}`), { signal }), [id]);
  const execs = useLoad((signal) => api<{ executions: Execution[] }>(pp(`/tasks/${id}/executions`), { signal }), [id]);
  const [execution, setExecution] = useState<number>();
  const t = task.data;
  const final = t ? FINAL.has(t.status) : false;
  const refresh = () => {
    task.reload();
    execs.reload();
  };
  useEvery(final ? 60_000 : 1000, refresh);
  if (!t) return <Loading error={task.error} />;
  const logPath = execution === undefined ? pp(`/tasks/${id}/log`) : pp(`/tasks/${id}/executions/${execution}/log`);
  const executions = execs.data?.executions ?? [];
  return (
    <>
      <p class="crumbs"><a href="#/tasks">Tasks</a> /</p>
      <h1>
        <span class="mono">{t.id}</span> <span id="task-status"><Status s={t.status} /></span>
      </h1>
      <p class="actions">
        {!final ? <Action label="Cancel" confirm="Cancel this task?" run={() => api(pp(`/tasks/${id}/cancel`), { method: 'POST' })} done={refresh} /> : null}
        <Action
          label="Retry"
          run={async () => {
            const r = await api<{ tasks: { id: string }[] }>(pp(`/tasks/${id}/retry`), { method: 'POST', json: {} });
            location.hash = `#/tasks/${r.tasks[0]!.id}`;
          }}
        />
      </p>
      {t.msg ? <p class="msg" id="task-msg">{t.msg}</p> : null}
      <div class="two">
        <section>
          <Fields
            rows={[
              ['code', <a href={`#/tasks?code_name=${encodeURIComponent(t.code_name)}`}>{t.code_name}</a>],
              ['revision', t.code_rev],
              ['cluster', t.cluster],
              ['label', t.label],
              ['priority', t.priority],
              ['timeout', t.timeout === undefined ? undefined : `${t.timeout} s`],
              ['delay', t.delay ? `${t.delay} s` : undefined],
              ['duration', t.duration === undefined ? undefined : duration(t.duration)],
              ['log', t.log_size === undefined ? undefined : `${t.log_size} bytes`],
              ['schedule', t.schedule_id ? <a href={`#/schedules/${t.schedule_id}`}>{t.schedule_id}</a> : undefined],
              ['retry of', t.original_task_id ? <a href={`#/tasks/${t.original_task_id}`}>{t.original_task_id}</a> : undefined],
              ['retried as', t.retry_task_id ? <a href={`#/tasks/${t.retry_task_id}`}>{t.retry_task_id}</a> : undefined],
            ]}
          />
          <h2>Progress</h2>
          <progress id="progress" max={100} value={t.percent ?? 0} /> <span>{t.percent ?? 0}%</span>
        </section>
        <section>
          <h2>Timeline</h2>
          <Timeline task={t} executions={executions} />
        </section>
      </div>
      <h2>Payload</h2>
      <pre class="box" id="payload">{t.payload ?? ''}</pre>
      <h2>Executions</h2>
      {executions.length === 0 ? (
        <p class="muted">No runner has taken it yet.</p>
      ) : (
        <table id="executions">
          <thead><tr><th>#</th><th>Status</th><th>Runner</th><th>Exit</th><th>Started</th><th>Duration</th><th>Log</th></tr></thead>
          <tbody>
            {executions.map((e) => (
              <tr key={e.number}>
                <td>{e.number}{e.current ? ' (current)' : ''}</td>
                <td><Status s={e.status} />{e.error || e.msg ? <span class="muted"> {e.error ?? e.msg}</span> : null}</td>
                <td>{e.hostname ?? e.runner_id}</td>
                <td>{e.exit_code ?? '–'}</td>
                <td><Time at={e.started_at} /></td>
                <td>{duration(e.duration)}</td>
                <td>
                  <button type="button" class="link" onClick={() => setExecution(execution === e.number ? undefined : e.number)}>
                    {execution === e.number ? 'following this one' : 'follow'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Log{execution === undefined ? '' : ` of execution ${execution}`}</h2>
      <LiveLog key={logPath} path={logPath} onEnd={refresh} />
    </>
  );
}
