import { useMemo, useState } from 'preact/hooks';
import { api, type Cluster, type ClusterDetail as Detail, type ClusterLoadPoint, type ClusterStats } from '../api.ts';
import { Chart, RANGES, RangePicker, type RangeKey } from '../chart.tsx';
import { allPoints, lastSeconds } from '../series.ts';
import { Action, Fields, Loading, Status, Time, bytes, useEvery, useLoad } from '../ui.tsx';

/** The clusters the user owns or is shared; for an operator (GANTRY_OPERATORS), every cluster on asking. */
export function Clusters() {
  const [every, setEvery] = useState(false);
  const list = useLoad(
    (signal) => api<{ clusters: Cluster[] }>('/2/clusters', { signal, query: { per_page: 100, ...(every ? { all: 'true' } : {}) } }),
    [every],
  );
  return (
    <>
      <h1>Clusters</h1>
      <p class="actions">
        <label>
          <input id="all-clusters" type="checkbox" checked={every} onChange={(e) => setEvery((e.target as HTMLInputElement).checked)} /> every
          cluster (operators)
        </label>
      </p>
      {!list.data ? (
        <Loading error={list.error} />
      ) : (
        <table id="clusters">
          <thead><tr><th>Name</th><th>Memory</th><th>Disk</th><th>Created</th></tr></thead>
          <tbody>
            {list.data.clusters.map((c) => (
              <tr key={c.id}>
                <td><a href={`#/clusters/${c.id}`}>{c.name}</a></td>
                <td>{bytes(c.memory)}</td>
                <td>{bytes(c.disk_space)}</td>
                <td><Time at={c.created_at} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

/** Settings as a flat list of text: nested objects as key paths (the API sends no secrets, only `*_set` flags). */
function flat(o: Record<string, unknown>, prefix = ''): [string, string][] {
  const out: [string, string][] = [];
  for (const [k, v] of Object.entries(o)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) out.push(...flat(v as Record<string, unknown>, key));
    // User data may carry credentials of the operator's own: its size only.
    else if (k === 'user_data') out.push([key, typeof v === 'string' && v ? `(${v.length} characters, not shown)` : '–']);
    else out.push([key, Array.isArray(v) ? v.join(', ') : String(v)]);
  }
  return out;
}

/** A cluster: settings, instances (terminate), its current EWMA and its recorded load over time. */
export function ClusterDetail({ id }: { id: string }) {
  const cluster = useLoad((signal) => api<{ cluster: Detail }>(`/2/clusters/${id}`, { signal }), [id]);
  const stats = useLoad((signal) => api<{ cluster: ClusterStats }>(`/2/clusters/${id}/stats`, { signal }), [id]);
  const [range, setRange] = useState<RangeKey>('24h');
  const load = useLoad((signal) => allPoints<ClusterLoadPoint>(`/2/clusters/${id}/load`, lastSeconds(RANGES[range]), signal), [id, range]);
  const [picked, setPicked] = useState<Set<string>>(new Set());
  useEvery(10_000, stats.reload);
  const charts = useMemo(() => {
    const pts = load.data ?? [];
    const x = pts.map((p) => Date.parse(p.time) / 1000);
    return {
      x,
      demand: [
        { label: 'demand (busy + queued)', values: pts.map((p) => p.busy + p.queued) },
        { label: 'busy', values: pts.map((p) => p.busy) },
        { label: 'queued', values: pts.map((p) => p.queued) },
        { label: 'slots', values: pts.map((p) => p.slots) },
        { label: 'EWMA', values: pts.map((p) => p.ewma) },
      ],
      runners: [{ label: 'runners', values: pts.map((p) => p.runners) }],
      instances: [
        { label: 'ADD', values: pts.map((p) => p.instances.add) },
        { label: 'LIVE', values: pts.map((p) => p.instances.live) },
        { label: 'KILL', values: pts.map((p) => p.instances.kill) },
      ],
    };
  }, [load.data]);
  const c = cluster.data?.cluster;
  if (!c) return <Loading error={cluster.error} />;
  const st = stats.data?.cluster;
  const instances = st?.instances ?? c.machines;
  return (
    <>
      <p class="crumbs"><a href="#/clusters">Clusters</a> /</p>
      <h1>{c.name}</h1>
      <section class="cards">
        <div class="card"><h2>EWMA of demand</h2><p class="big" id="ewma">{st ? st.ewma.toFixed(2) : '…'}</p></div>
        <div class="card"><h2>Queued</h2><p class="big">{st?.queued ?? '…'}</p></div>
        <div class="card"><h2>Runners</h2><p class="big">{st ? `${st.runners_available}/${st.runners_total}` : '…'}</p><p>available / total</p></div>
      </section>
      <h2>Instances</h2>
      {instances.length === 0 ? (
        <p class="muted">No instance.</p>
      ) : (
        <>
          <table id="instances">
            <thead><tr><th /><th>Instance</th><th>State</th><th>Provider</th><th>Runners</th><th>Launched</th><th>Live</th></tr></thead>
            <tbody>
              {instances.map((m) => (
                <tr key={m.instance_id} data-instance={m.instance_id}>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`select ${m.instance_id}`}
                      disabled={m.type === 'KILL' || m.type === 'TERMINATE'}
                      checked={picked.has(m.instance_id)}
                      onChange={(e) => {
                        const next = new Set(picked);
                        if ((e.target as HTMLInputElement).checked) next.add(m.instance_id);
                        else next.delete(m.instance_id);
                        setPicked(next);
                      }}
                    />
                  </td>
                  <td class="mono">{m.instance_id}</td>
                  <td><Status s={m.type} /></td>
                  <td>{m.provider}</td>
                  <td>{m.runners_available}/{m.runners_total}</td>
                  <td><Time at={m.launched_at} /></td>
                  <td><Time at={m.live_at} /></td>
                </tr>
              ))}
            </tbody>
          </table>
          <p class="actions">
            <Action
              label={`Terminate ${picked.size || ''} selected`}
              confirm="Terminate the selected instances? Their runners finish their tasks first."
              run={async () => {
                if (picked.size === 0) throw new Error('select an instance first');
                await api(`/2/clusters/${id}/terminate`, { method: 'POST', json: { instance_ids: [...picked] } });
              }}
              done={() => {
                setPicked(new Set());
                stats.reload();
                cluster.reload();
              }}
            />
          </p>
        </>
      )}
      <h2>Load over time</h2>
      <RangePicker value={range} onChange={setRange} />
      {load.data ? (
        <div class="charts">
          <Chart id="chart-demand" title="Demand" x={charts.x} series={charts.demand} />
          <Chart id="chart-runners" title="Runners" x={charts.x} series={charts.runners} />
          <Chart id="chart-instances" title="Instances by state" x={charts.x} series={charts.instances} />
        </div>
      ) : (
        <Loading error={load.error} />
      )}
      <h2>Settings</h2>
      <Fields
        rows={[
          ['id', <span class="mono">{c.id}</span>],
          ['memory', bytes(c.memory)],
          ['disk space', bytes(c.disk_space)],
          ['shared to', c.shared_to.join(', ')],
          ...flat(c.container, 'container').map(([k, v]): [string, string] => [k, v]),
          ...flat(c.autoscale, 'autoscale').map(([k, v]): [string, string] => [k, v]),
        ]}
      />
    </>
  );
}
