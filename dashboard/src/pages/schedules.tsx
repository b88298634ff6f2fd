import { useState } from 'preact/hooks';
import { api, pp, type Code, type Schedule, type Task } from '../api.ts';
import { CodeSelect, WithCodes } from '../code-picker.tsx';
import { href } from '../router.ts';
import { Action, Err, Fields, Loading, Pager, Status, Time, message, useEvery, useLoad } from '../ui.tsx';

const PER_PAGE = 30;

/** Schedules: the list and the create form. */
export function Schedules({ query }: { query: URLSearchParams }) {
  const page = Math.max(0, Number(query.get('page') ?? 0) || 0);
  const list = useLoad((signal) => api<{ schedules: Schedule[] }>(pp('/schedules'), { signal, query: { page, per_page: PER_PAGE } }), [page]);
  return (
    <>
      <h1>Schedules</h1>
      <div class="two wide-first">
        <section>
          {!list.data ? (
            <Loading error={list.error} />
          ) : (
            <>
              <table id="schedules">
                <thead><tr><th>Schedule</th><th>Code</th><th>When</th><th>Status</th><th>Next</th><th>Runs</th></tr></thead>
                <tbody>
                  {list.data.schedules.map((s) => (
                    <tr key={s.id}>
                      <td><a href={`#/schedules/${s.id}`}>{s.name || s.id}</a></td>
                      <td>{s.code_name}</td>
                      <td class="mono">{s.cron ? `${s.cron} ${s.timezone ?? ''}` : `every ${s.run_every} s`}</td>
                      <td><Status s={s.status} /></td>
                      <td><Time at={s.next_start} /></td>
                      <td>{s.run_count ?? 0}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {list.data.schedules.length === 0 ? <p class="muted">No schedule.</p> : null}
              <Pager page={page} full={list.data.schedules.length === PER_PAGE} to={(p) => href('schedules', { page: p })} />
            </>
          )}
        </section>
        <section>
          <h2>New schedule</h2>
          <ScheduleForm done={list.reload} />
        </section>
      </div>
    </>
  );
}

function ScheduleForm({ done }: { done: () => void }) {
  return <WithCodes>{(codes) => <ScheduleFormFor codes={codes} done={done} />}</WithCodes>;
}

function ScheduleFormFor({ codes, done }: { codes: Code[]; done: () => void }) {
  const [err, setErr] = useState<string>();
  return (
    <form
      id="new-schedule"
      class="stack"
      onSubmit={async (e) => {
        e.preventDefault();
        const f = e.currentTarget as HTMLFormElement;
        const v = (n: string) => (f.elements.namedItem(n) as HTMLInputElement).value.trim();
        const s: Record<string, unknown> = { code_name: v('code_name'), payload: (f.elements.namedItem('payload') as HTMLTextAreaElement).value };
        if (v('name')) s.name = v('name');
        if (v('cron')) {
          s.cron = v('cron');
          if (v('timezone')) s.timezone = v('timezone');
        } else if (v('run_every')) s.run_every = Number(v('run_every'));
        if (v('start_at')) s.start_at = new Date(v('start_at')).toISOString();
        if (v('run_times')) s.run_times = Number(v('run_times'));
        setErr(undefined);
        try {
          const r = await api<{ schedules: { id: string }[] }>(pp('/schedules'), { method: 'POST', json: { schedules: [s] } });
          done();
          location.hash = `#/schedules/${r.schedules[0]!.id}`;
        } catch (x) {
          setErr(message(x));
        }
      }}
    >
      <CodeSelect codes={codes} />
      <label>
        Name <input name="name" />
      </label>
      <div class="row">
        <label>
          Every (s) <input name="run_every" type="number" min={60} placeholder="≥ 60" />
        </label>
        <label>
          or cron <input name="cron" placeholder="*/5 * * * *" />
        </label>
        <label>
          Time zone <input name="timezone" placeholder="UTC" />
        </label>
      </div>
      <div class="row">
        <label>
          Start at <input name="start_at" type="datetime-local" />
        </label>
        <label>
          Run times <input name="run_times" type="number" min={1} />
        </label>
      </div>
      <label>
        Payload <textarea name="payload" rows={3} spellcheck={false} />
      </label>
      <button type="submit">Create</button>
      <Err error={err} />
    </form>
  );
}

/** One schedule: its settings, next fire times, the tasks it queued; cancel. */
export function ScheduleDetail({ id, query }: { id: string; query: URLSearchParams }) {
  const page = Math.max(0, Number(query.get('page') ?? 0) || 0);
  const s = useLoad((signal) => api<Schedule>(pp(`/schedules/${id}`), { signal }), [id]);
  const tasks = useLoad((signal) => api<{ tasks: Task[] }>(pp(`/schedules/${id}/tasks`), { signal, query: { page, per_page: PER_PAGE } }), [id, page]);
  useEvery(5000, tasks.reload);
  const d = s.data;
  if (!d) return <Loading error={s.error} />;
  return (
    <>
      <p class="crumbs"><a href="#/schedules">Schedules</a> /</p>
      <h1>
        {d.name || d.id} <span id="schedule-status"><Status s={d.status} /></span>
      </h1>
      <p class="actions">
        {d.status === 'scheduled' ? <Action label="Cancel schedule" confirm="Cancel this schedule?" run={() => api(pp(`/schedules/${id}/cancel`), { method: 'POST' })} done={s.reload} /> : null}
      </p>
      <div class="two">
        <section>
          <Fields
            rows={[
              ['id', <span class="mono">{d.id}</span>],
              ['code', d.code_name],
              ['when', d.cron ? `cron ${d.cron} (${d.timezone ?? 'UTC'})` : `every ${d.run_every} s`],
              ['start at', <Time at={d.start_at} />],
              ['end at', d.end_at ? <Time at={d.end_at} /> : undefined],
              ['runs', `${d.run_count ?? 0}${d.run_times ? ` of ${d.run_times}` : ''}`],
              ['last run', d.last_run_time ? <Time at={d.last_run_time} /> : undefined],
              ['message', d.msg],
              ['payload', d.payload ? <pre class="box">{d.payload}</pre> : undefined],
            ]}
          />
        </section>
        <section>
          <h2>Next fires</h2>
          <ol id="next-fires">
            {(d.next_fires ?? []).map((at) => (
              <li key={at}><Time at={at} /></li>
            ))}
          </ol>
          {(d.next_fires ?? []).length === 0 ? <p class="muted">None.</p> : null}
        </section>
      </div>
      <h2>Tasks it queued</h2>
      {!tasks.data ? (
        <Loading error={tasks.error} />
      ) : (
        <>
          <table id="schedule-tasks">
            <thead><tr><th>Task</th><th>Status</th><th>Created</th></tr></thead>
            <tbody>
              {tasks.data.tasks.map((t) => (
                <tr key={t.id}>
                  <td><a class="mono" href={`#/tasks/${t.id}`}>{t.id}</a></td>
                  <td><Status s={t.status} /></td>
                  <td><Time at={t.created_at} /></td>
                </tr>
              ))}
            </tbody>
          </table>
          {tasks.data.tasks.length === 0 ? <p class="muted">None yet.</p> : null}
          <Pager page={page} full={tasks.data.tasks.length === PER_PAGE} to={(p) => href(`schedules/${id}`, { page: p })} />
        </>
      )}
    </>
  );
}
