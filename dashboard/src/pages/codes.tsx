import { useState } from 'preact/hooks';
import { api, pp, request, TASK_STATUSES, type Code, type Revision } from '../api.ts';
import { RANGES, RangePicker, type RangeKey } from '../chart.tsx';
import { href } from '../router.ts';
import { Action, Err, Fields, Loading, Status, Time, bytes, message, useLoad } from '../ui.tsx';

/** Code packages: the list and the upload form (POST .../codes, multipart). */
export function Codes() {
  const codes = useLoad((signal) => api<{ codes: Code[] }>(pp('/codes'), { signal, query: { per_page: 100 } }), []);
  return (
    <>
      <h1>Code packages</h1>
      <div class="two wide-first">
        <section>
          {!codes.data ? (
            <Loading error={codes.error} />
          ) : codes.data.codes.length === 0 ? (
            <p class="muted">No code package yet: upload one.</p>
          ) : (
            <table id="codes">
              <thead><tr><th>Name</th><th>Rev</th><th>Image</th><th>Queue</th><th>Updated</th></tr></thead>
              <tbody>
                {codes.data.codes.map((c) => (
                  <tr key={c.id}>
                    <td><a href={`#/codes/${c.id}`}>{c.name}</a></td>
                    <td>{c.rev}</td>
                    <td class="mono">{c.image}</td>
                    <td>{c.paused ? <Status s="paused" /> : <span class="muted">open</span>}</td>
                    <td><Time at={c.latest_change ?? c.created_at} /></td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
        <section>
          <h2>Upload</h2>
          <UploadForm done={codes.reload} />
        </section>
      </div>
    </>
  );
}

/** A new code package, or a new revision of one (`name` given): image and command, or a zip. */
export function UploadForm({ name, done }: { name?: string; done: () => void }) {
  const [err, setErr] = useState<string>();
  const [ok, setOk] = useState<string>();
  return (
    <form
      id="upload"
      class="stack"
      onSubmit={async (e) => {
        e.preventDefault();
        const f = e.currentTarget as HTMLFormElement;
        const v = (n: string) => (f.elements.namedItem(n) as HTMLInputElement).value.trim();
        const data: Record<string, unknown> = { name: name ?? v('name') };
        if (v('image')) data.image = v('image');
        if (v('command')) data.command = v('command');
        if (v('max_concurrency')) data.max_concurrency = Number(v('max_concurrency'));
        if (v('retries')) data.retries = Number(v('retries'));
        const form = new FormData();
        form.append('data', JSON.stringify(data));
        const file = (f.elements.namedItem('file') as HTMLInputElement).files?.[0];
        if (file) form.append('file', file, file.name);
        setErr(undefined);
        setOk(undefined);
        try {
          const r = await api<Code>(pp('/codes'), { method: 'POST', form });
          setOk(`Uploaded ${r.name} revision ${r.rev}.`);
          f.reset();
          done();
        } catch (x) {
          setErr(message(x));
        }
      }}
    >
      {name ? null : (
        <label>
          Name <input name="name" required maxLength={255} />
        </label>
      )}
      <label>
        Image <input name="image" placeholder={name ? 'keep the current one' : 'e.g. gantry-test/busybox:latest'} />
      </label>
      <label>
        Command <input name="command" placeholder="e.g. cat $PAYLOAD_FILE" />
      </label>
      <label>
        Zip <input name="file" type="file" accept=".zip,application/zip" />
      </label>
      <div class="row">
        <label>
          Max concurrency <input name="max_concurrency" type="number" min={-1} />
        </label>
        <label>
          Retries <input name="retries" type="number" min={0} />
        </label>
      </div>
      <button type="submit">{name ? 'Upload revision' : 'Upload'}</button>
      <Err error={err} />
      {ok ? <p class="ok" role="status">{ok}</p> : null}
    </form>
  );
}

/** One code package: settings, revisions, counts by status over a window, pause/resume, download. */
export function CodeDetail({ id }: { id: string }) {
  const code = useLoad((signal) => api<Code>(pp(`/codes/${id}`), { signal }), [id]);
  const revs = useLoad((signal) => api<{ revisions: Revision[] }>(pp(`/codes/${id}/revisions`), { signal, query: { per_page: 50 } }), [id]);
  const [range, setRange] = useState<RangeKey>('24h');
  const stats = useLoad(
    (signal) => {
      const end = Math.floor(Date.now() / 1000);
      return api<Record<string, number>>(pp(`/codes/${id}/stats`), { signal, query: { start_date: end - RANGES[range], end_date: end } });
    },
    [id, range],
  );
  const c = code.data;
  if (!c) return <Loading error={code.error} />;
  const download = async (rev?: number) => {
    const res = await request(pp(`/codes/${id}/download`), { accept: '*/*', query: { revision: rev } });
    const blob = await res.blob();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${c.name}${rev ? `-r${rev}` : ''}.zip`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  };
  return (
    <>
      <p class="crumbs"><a href="#/codes">Code packages</a> /</p>
      <h1>
        {c.name} {c.paused ? <Status s="paused" /> : null}
      </h1>
      <p class="actions">
        {c.paused ? (
          <Action label="Resume queue" run={() => api(pp(`/codes/${id}/resume_task_queue`), { method: 'POST' })} done={code.reload} />
        ) : (
          <Action label="Pause queue" run={() => api(pp(`/codes/${id}/pause_task_queue`), { method: 'POST' })} done={code.reload} />
        )}
        {c.file_name ? <Action label="Download zip" run={() => download()} /> : null}
        <a class="button" href={href('tasks', { code_name: c.name })}>Its tasks</a>
      </p>
      <div class="two">
        <section>
          <h2>Settings (revision {c.rev})</h2>
          <Fields
            rows={[
              ['id', <span class="mono">{c.id}</span>],
              ['image', <span class="mono">{c.image}</span>],
              ['command', c.command ? <code>{c.command}</code> : undefined],
              ['zip', c.file_name ? `${c.file_name} (${bytes(c.code_size)})` : undefined],
              ['max concurrency', c.max_concurrency],
              ['retries', c.retries === undefined ? undefined : `${c.retries} (delay ${c.retries_delay ?? 0} s)`],
              ['default priority', c.default_priority],
              ['log streams', c.log_streams],
              ['category', c.category],
              ['env vars', c.env_vars && Object.keys(c.env_vars).length ? Object.keys(c.env_vars).join(', ') : undefined],
              ['config', c.config ? <pre class="box">{c.config}</pre> : undefined],
              ['created', <Time at={c.created_at} />],
            ]}
          />
        </section>
        <section>
          <h2>Tasks by status</h2>
          <RangePicker value={range} onChange={setRange} />
          {stats.data ? (
            <table id="code-stats">
              <tbody>
                {TASK_STATUSES.map((s) => (
                  <tr key={s}><td><Status s={s} /></td><td class="num">{stats.data![s] ?? 0}</td></tr>
                ))}
              </tbody>
            </table>
          ) : (
            <Loading error={stats.error} />
          )}
          <h2>New revision</h2>
          <UploadForm name={c.name} done={() => { code.reload(); revs.reload(); }} />
        </section>
      </div>
      <h2>Revisions</h2>
      {revs.data ? (
        <table id="revisions">
          <thead><tr><th>Rev</th><th>Image</th><th>Command</th><th>Zip</th><th>Created</th></tr></thead>
          <tbody>
            {revs.data.revisions.map((r) => (
              <tr key={r.id}>
                <td>{r.rev}</td>
                <td class="mono">{r.image}</td>
                <td><code>{r.command}</code></td>
                <td>{r.file_name ? <Action label={`${r.file_name} (${bytes(r.code_size)})`} cls="link" run={() => download(r.rev)} /> : '–'}</td>
                <td><Time at={r.created_at} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <Loading error={revs.error} />
      )}
    </>
  );
}
