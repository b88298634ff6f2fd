import { useMemo, useState } from 'preact/hooks';
import { api, type Worker, type WorkerStats } from '../api.ts';
import { Chart, RANGES, RangePicker, type RangeKey, type Series } from '../chart.tsx';
import { Fields, Loading, Status, Time, duration, useEvery, useLoad } from '../ui.tsx';

const listWorkers = (signal: AbortSignal) => api<{ workers: Worker[] }>('/2/workers.get_all', { method: 'POST', json: {}, signal });

/** Runners (the workers API): state, current tasks and slots. */
export function Runners() {
  const list = useLoad(listWorkers, []);
  useEvery(5000, list.reload);
  return (
    <>
      <h1>Runners</h1>
      {!list.data ? (
        <Loading error={list.error} />
      ) : list.data.workers.length === 0 ? (
        <p class="muted">No runner has registered in your clusters.</p>
      ) : (
        <table id="runners">
          <thead><tr><th>Runner</th><th>Cluster</th><th>State</th><th>Slots</th><th>Tasks</th><th>Last seen</th></tr></thead>
          <tbody>
            {list.data.workers.map((w) => (
              <tr key={w.id}>
                <td><a href={`#/runners/${encodeURIComponent(w.id)}`}>{w.hostname ?? w.id}</a><div class="muted mono small">{w.id}</div></td>
                <td>{w.cluster.name}</td>
                <td><Status s={w.penalised ? 'penalised' : w.draining ? 'draining' : w.state} /></td>
                <td>{w.slots.busy}/{w.slots.total}</td>
                <td>
                  {w.tasks.map((t) => (
                    <div key={t.id}><a class="mono" href={`#/tasks/${t.id}`}>{t.id}</a> <span class="muted">{t.name}</span></div>
                  ))}
                </td>
                <td><Time at={w.last_activity_time ?? w.register_time} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

/** Seconds per point for each range: a few hundred to about a thousand points. */
const INTERVAL: Record<RangeKey, number> = { '1h': 10, '24h': 60, '7d': 600 };

const CHARTS: { id: string; title: string; keys: string[]; scale?: (v: number) => number; unit: string }[] = [
  { id: 'cpu', title: 'CPU (% busy)', keys: ['cpu_usage'], unit: '%' },
  { id: 'memory', title: 'Memory (MB)', keys: ['memory_used', 'memory_cached', 'memory_total'], unit: 'MB' },
  { id: 'disk', title: 'Disk used (MB)', keys: ['disk_used'], unit: 'MB' },
  { id: 'disk-io', title: 'Disk I/O (KiB/s)', keys: ['disk_read', 'disk_write'], scale: (v) => v / 1024, unit: 'KiB/s' },
  { id: 'network', title: 'Network (KiB/s)', keys: ['network_rx', 'network_tx'], scale: (v) => v / 1024, unit: 'KiB/s' },
];

type Metric = WorkerStats['workers'][number]['metrics'][number];

/** Metrics of one chart on one x axis: the union of their bucket starts, gaps as null. */
function align(unordered: Metric[], keys: string[], scale?: (v: number) => number): { x: number[]; series: Series[] } {
  const metrics = [...unordered].sort((a, b) => keys.indexOf(a.metric) - keys.indexOf(b.metric) || (a.variant ?? '').localeCompare(b.variant ?? '', undefined, { numeric: true }));
  const xs = [...new Set(metrics.flatMap((m) => m.dates))].sort((a, b) => a - b);
  const at = new Map(xs.map((d, i) => [d, i]));
  const series = metrics.map((m) => {
    const values: (number | null)[] = new Array(xs.length).fill(null);
    const v = m.stats[0]?.values ?? [];
    m.dates.forEach((d, i) => {
      const n = v[i];
      if (n !== undefined) values[at.get(d)!] = scale ? scale(n) : n;
    });
    return { label: m.variant && m.variant !== 'total' ? `${m.metric} ${m.variant}` : m.metric, values };
  });
  return { x: xs, series };
}

/** One runner: what it is, and charts of its machine over a range, split by variant on request. */
export function RunnerDetail({ id }: { id: string }) {
  const list = useLoad(listWorkers, []);
  const [range, setRange] = useState<RangeKey>('1h');
  const [split, setSplit] = useState(false);
  const stats = useLoad(
    (signal) => {
      const to = Math.floor(Date.now() / 1000);
      return api<WorkerStats>('/2/workers.get_stats', {
        method: 'POST',
        signal,
        json: {
          worker_ids: [id],
          from_date: to - RANGES[range],
          to_date: to,
          interval: INTERVAL[range],
          split_by_variant: split,
          items: CHARTS.flatMap((c) => c.keys).map((key) => ({ key, category: 'avg' })),
        },
      });
    },
    [id, range, split],
  );
  const charts = useMemo(() => {
    const metrics = stats.data?.workers.find((w) => w.worker === id)?.metrics ?? [];
    return CHARTS.map((c) => ({ ...c, ...align(metrics.filter((m) => c.keys.includes(m.metric)), c.keys, c.scale) }));
  }, [stats.data, id]);
  const w = list.data?.workers.find((x) => x.id === id);
  return (
    <>
      <p class="crumbs"><a href="#/runners">Runners</a> /</p>
      <h1><span class="mono">{w?.hostname ?? id}</span></h1>
      {w ? (
        <Fields
          rows={[
            ['id', <span class="mono">{w.id}</span>],
            ['cluster', <a href={`#/clusters/${w.cluster.id}`}>{w.cluster.name}</a>],
            ['state', <Status s={w.state} />],
            ['slots', `${w.slots.busy} busy of ${w.slots.total}`],
            ['instance', w.instance ? `${w.instance.id} (${w.instance.state ?? '?'})` : undefined],
            ['version', w.version],
            ['docker', w.docker_version],
            ['ip', w.ip],
            ['registered', <Time at={w.register_time} />],
            ['penalty', w.penalised ? w.penalty_reason ?? 'yes' : undefined],
            ['tasks', w.tasks.length ? w.tasks.map((t) => `${t.id} (${duration(t.running_time ?? undefined)})`).join(', ') : undefined],
          ]}
        />
      ) : list.data ? (
        <p class="muted">Not among the runners seen now; its recorded stats follow.</p>
      ) : null}
      <div class="toolbar">
        <RangePicker value={range} onChange={setRange} />
        <label>
          <input id="split" type="checkbox" checked={split} onChange={(e) => setSplit((e.target as HTMLInputElement).checked)} /> split by variant (core, disk, interface)
        </label>
      </div>
      {!stats.data ? (
        <Loading error={stats.error} />
      ) : (
        <div class="charts">
          {charts.map((c) => (
            <Chart key={c.id} id={`chart-${c.id}`} title={c.title} x={c.x} series={c.series} />
          ))}
        </div>
      )}
    </>
  );
}
