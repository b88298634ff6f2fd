import { useMemo, useState } from 'preact/hooks';
import { api, pp, type LoadPoint } from '../api.ts';
import { Chart, RANGES, RangePicker, type RangeKey } from '../chart.tsx';
import { allPoints, lastSeconds } from '../series.ts';
import { Loading, Status, Time, useEvery, useLoad } from '../ui.tsx';

interface QueueEntry { job_type_id: string; job_type_name: string; job_type_version: string; job_type_category?: string; count: number; longest_queued: string; highest_priority: number; is_job_type_paused: boolean }

/** The queue now, per code package, and the project's recorded load over a range. */
export function Queue() {
  const status = useLoad((signal) => api<{ queue_status: QueueEntry[] }>(pp('/queue/status'), { signal }), []);
  useEvery(5000, status.reload);
  const [range, setRange] = useState<RangeKey>('24h');
  const load = useLoad((signal) => allPoints<LoadPoint>(pp('/load'), lastSeconds(RANGES[range]), signal), [range]);
  const chart = useMemo(() => {
    const pts = load.data ?? [];
    return {
      x: pts.map((p) => Date.parse(p.time) / 1000),
      series: [
        { label: 'pending (delayed)', values: pts.map((p) => p.pending_count) },
        { label: 'queued', values: pts.map((p) => p.queued_count) },
        { label: 'running', values: pts.map((p) => p.running_count) },
      ],
    };
  }, [load.data]);
  return (
    <>
      <h1>Queue</h1>
      {!status.data ? (
        <Loading error={status.error} />
      ) : status.data.queue_status.length === 0 ? (
        <p class="muted">Nothing is queued.</p>
      ) : (
        <table id="queue-status">
          <thead><tr><th>Code</th><th>Revision</th><th>Queued</th><th>Waiting since</th><th>Top priority</th><th /></tr></thead>
          <tbody>
            {status.data.queue_status.map((q) => (
              <tr key={q.job_type_id + q.job_type_version}>
                <td><a href={`#/codes/${q.job_type_id}`}>{q.job_type_name}</a>{q.job_type_category ? <span class="muted"> {q.job_type_category}</span> : null}</td>
                <td>{q.job_type_version}</td>
                <td class="num">{q.count}</td>
                <td><Time at={q.longest_queued} /></td>
                <td>{q.highest_priority}</td>
                <td>{q.is_job_type_paused ? <Status s="paused" /> : null}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Load over time</h2>
      <RangePicker value={range} onChange={setRange} />
      {load.data ? <Chart id="chart-load" title="Tasks" x={chart.x} series={chart.series} /> : <Loading error={load.error} />}
    </>
  );
}
