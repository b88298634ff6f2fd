import { useState } from 'preact/hooks';
import { api, pp, TASK_STATUSES, type Code, type Task } from '../api.ts';
import { CodeSelect, WithCodes } from '../code-picker.tsx';
import { href } from '../router.ts';
import { Err, Loading, Pager, Status, Time, duration, message, useEvery, useLoad } from '../ui.tsx';

const PER_PAGE = 50;
/** The list API pages up to page 100. */
const LAST_PAGE = 100;

/** Local `datetime-local` text ↔ the API's ISO time. */
const toIso = (local: string) => (local ? new Date(local).toISOString() : '');
const toLocal = (iso: string | null) => {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
};

/** Tasks: newest first, one page at a time from the server, filtered by status, code and time. */
export function Tasks({ query }: { query: URLSearchParams }) {
  const page = Math.min(LAST_PAGE, Math.max(0, Number(query.get('page') ?? 0) || 0));
  const statuses = TASK_STATUSES.filter((s) => query.get(s) === '1');
  const code = query.get('code_name') ?? '';
  const from = query.get('from') ?? '';
  const to = query.get('to') ?? '';
  const key = query.toString();
  const tasks = useLoad(
    (signal) =>
      api<{ tasks: Task[] }>(pp('/tasks'), {
        signal,
        query: { page, per_page: PER_PAGE, code_name: code, from_time: from, to_time: to, ...Object.fromEntries(statuses.map((s) => [s, 1])) },
      }),
    [key],
  );
  useEvery(5000, tasks.reload);
  const filters = (o: Record<string, string | number | undefined>) => {
    const q: Record<string, string | number | undefined> = { code_name: code, from, to, ...Object.fromEntries(statuses.map((s) => [s, 1])) };
    return href('tasks', { ...q, ...o });
  };
  return (
    <>
      <h1>Tasks</h1>
      <div class="two wide-first">
        <section>
          <form
            id="task-filters"
            key={key}
            class="filters"
            onSubmit={(e) => {
              e.preventDefault();
              const f = e.currentTarget as HTMLFormElement;
              const v = (n: string) => (f.elements.namedItem(n) as HTMLInputElement).value.trim();
              const q: Record<string, string | number | undefined> = { code_name: v('code_name'), from: toIso(v('from')), to: toIso(v('to')) };
              for (const s of TASK_STATUSES) if ((f.elements.namedItem(s) as HTMLInputElement).checked) q[s] = 1;
              location.hash = href('tasks', q);
            }}
          >
            <fieldset class="statuses">
              <legend>Status</legend>
              {TASK_STATUSES.map((s) => (
                <label key={s}>
                  <input type="checkbox" name={s} defaultChecked={statuses.includes(s)} /> {s}
                </label>
              ))}
            </fieldset>
            <label>
              Code <input name="code_name" defaultValue={code} />
            </label>
            <label>
              From <input name="from" type="datetime-local" defaultValue={toLocal(from)} />
            </label>
            <label>
              To <input name="to" type="datetime-local" defaultValue={toLocal(to)} />
            </label>
            <button type="submit">Filter</button>
            <a href="#/tasks">clear</a>
          </form>
          {!tasks.data ? (
            <Loading error={tasks.error} />
          ) : (
            <>
              <table id="tasks">
                <thead><tr><th>Task</th><th>Code</th><th>Status</th><th>Created</th><th>Duration</th></tr></thead>
                <tbody>
                  {tasks.data.tasks.map((t) => (
                    <tr key={t.id} data-id={t.id}>
                      <td><a class="mono" href={`#/tasks/${t.id}`}>{t.id}</a>{t.label ? <span class="muted"> {t.label}</span> : null}</td>
                      <td>{t.code_name}</td>
                      <td><Status s={t.status} /></td>
                      <td><Time at={t.created_at} /></td>
                      <td>{t.duration === undefined ? '–' : duration(t.duration)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {tasks.data.tasks.length === 0 ? <p class="muted">No task matches.</p> : null}
              <Pager
                page={page}
                full={tasks.data.tasks.length === PER_PAGE}
                to={(p) => {
                  // The API pages no further than page 100: older pages go on from the last
                  // row's time (a millisecond after it, so tasks of that same instant are not skipped).
                  const last = tasks.data!.tasks[tasks.data!.tasks.length - 1];
                  if (p > LAST_PAGE && last) return filters({ to: new Date(Date.parse(last.created_at) + 1).toISOString(), page: 0 });
                  return filters({ page: p });
                }}
              />
            </>
          )}
        </section>
        <section>
          <h2>Queue a task</h2>
          <QueueForm defaultCode={code} />
        </section>
      </div>
    </>
  );
}

/** POST .../tasks with one task; on success opens it. */
export function QueueForm({ defaultCode }: { defaultCode?: string }) {
  return <WithCodes>{(codes) => <QueueFormFor codes={codes} defaultCode={defaultCode} />}</WithCodes>;
}

function QueueFormFor({ codes, defaultCode }: { codes: Code[]; defaultCode?: string | undefined }) {
  const [err, setErr] = useState<string>();
  return (
    <form
      id="queue-task"
      class="stack"
      onSubmit={async (e) => {
        e.preventDefault();
        const f = e.currentTarget as HTMLFormElement;
        const v = (n: string) => (f.elements.namedItem(n) as HTMLInputElement).value.trim();
        const task: Record<string, unknown> = { code_name: v('code_name'), payload: (f.elements.namedItem('payload') as HTMLTextAreaElement).value };
        for (const n of ['priority', 'timeout', 'delay']) if (v(n)) task[n] = Number(v(n));
        for (const n of ['cluster', 'label']) if (v(n)) task[n] = v(n);
        setErr(undefined);
        try {
          const r = await api<{ tasks: { id: string }[] }>(pp('/tasks'), { method: 'POST', json: { tasks: [task] } });
          location.hash = `#/tasks/${r.tasks[0]!.id}`;
        } catch (x) {
          setErr(message(x));
        }
      }}
    >
      <CodeSelect codes={codes} preset={defaultCode} />
      <label>
        Payload <textarea name="payload" rows={4} spellcheck={false} />
      </label>
      <div class="row">
        <label>
          Priority
          <select name="priority">
            <option value="">default</option>
            <option value="0">0</option>
            <option value="1">1</option>
            <option value="2">2</option>
          </select>
        </label>
        <label>
          Timeout (s) <input name="timeout" type="number" min={1} />
        </label>
        <label>
          Delay (s) <input name="delay" type="number" min={0} />
        </label>
      </div>
      <div class="row">
        <label>
          Cluster <input name="cluster" />
        </label>
        <label>
          Label <input name="label" />
        </label>
      </div>
      <button type="submit">Queue</button>
      <Err error={err} />
    </form>
  );
}
