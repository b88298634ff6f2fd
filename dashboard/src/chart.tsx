import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** The ranges a chart can show, by their label in the picker. */
export const RANGES = { '1h': 3600, '24h': 86_400, '7d': 7 * 86_400 } as const;
export type RangeKey = keyof typeof RANGES;

export function RangePicker({ value, onChange }: { value: RangeKey; onChange: (r: RangeKey) => void }) {
  return (
    <div class="range" role="group" aria-label="range">
      {(Object.keys(RANGES) as RangeKey[]).map((k) => (
        <button type="button" key={k} class={k === value ? 'on' : ''} aria-pressed={k === value} onClick={() => onChange(k)}>
          {k}
        </button>
      ))}
    </div>
  );
}

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563', '#65a30d', '#9333ea'];

export interface Series {
  label: string;
  values: (number | null)[];
}

/**
 * A uPlot line chart: x in seconds since the epoch, one line per series. uPlot draws on a
 * canvas and keeps its styles in its stylesheet and the DOM's style properties, so it needs
 * no inline style under the page's CSP; tens of thousands of points draw in milliseconds.
 */
export function Chart({ title, x, series, height = 200, id }: { title: string; x: number[]; series: Series[]; height?: number; id?: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => s.label).join('\u0000');

  useEffect(() => {
    const el = box.current!;
    const width = Math.max(200, el.clientWidth);
    const opts: uPlot.Options = {
      width,
      height,
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length]!, width: 1.5, points: { show: false } }))],
      axes: [{}, { size: 56 }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    const p = new uPlot(opts, [x, ...series.map((s) => s.values)] as uPlot.AlignedData, el);
    plot.current = p;
    el.dataset.points = String(x.length);
    el.dataset.drawn = String(performance.now());
    const ro = new ResizeObserver(() => {
      const w = Math.max(200, el.clientWidth);
      if (w !== p.width) p.setSize({ width: w, height });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      p.destroy();
      plot.current = null;
    };
    // Rebuilt when the series change shape; new data of the same shape goes through setData.
  }, [shape, height]);

  useEffect(() => {
    const p = plot.current;
    if (!p) return;
    p.setData([x, ...series.map((s) => s.values)] as uPlot.AlignedData);
    box.current!.dataset.points = String(x.length);
  }, [x, series]);

  return (
    <figure class="chart" id={id}>
      <figcaption>{title}</figcaption>
      <div ref={box} class="plot" data-points="0" />
      {x.length === 0 ? <p class="muted">No data recorded in this range.</p> : null}
    </figure>
  );
}
