/**
 * A hand-written SVG chart of one scenario: one panel per policy, each with demand (tasks in
 * the system), LIVE capacity, capacity including booting instances, and the queue over time.
 */
import type { SimResult } from './engine.ts';

const W = 960;
const PANEL_H = 190;
const M = { left: 56, right: 16, top: 28, bottom: 26 };
const COLORS = { demand: '#222222', capacity: '#1f6fd1', coming: '#8fb8ea', queued: '#d33a2c' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  return ([1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? 10 * p) || 1;
}

/** Reduces a series to at most `n` points, keeping each bucket's maximum (spikes stay visible). */
function bucketMax(points: { t: number; v: number }[], n: number): { t: number; v: number }[] {
  if (points.length <= n) return points;
  const size = Math.ceil(points.length / n);
  const out: { t: number; v: number }[] = [];
  for (let i = 0; i < points.length; i += size) {
    const b = points.slice(i, i + size);
    out.push({ t: b[0]!.t, v: Math.max(...b.map((p) => p.v)) });
  }
  return out;
}

function timeLabel(ms: number, spanMs: number): string {
  const m = Math.round(ms / 60_000);
  return spanMs > 4 * 3_600_000 ? `${Math.floor(m / 60)}h` : `${m}m`;
}

function panel(r: SimResult, y0: number, spanMs: number): string {
  const iw = W - M.left - M.right;
  const ih = PANEL_H - M.top - M.bottom;
  const s = r.series;
  const yMax = Math.max(1, ...s.map((p) => Math.max(p.demand, p.capacity + p.coming)));
  const ys = niceStep(yMax, 4);
  const top = Math.ceil(yMax / ys) * ys;
  const X = (t: number) => M.left + (t / spanMs) * iw;
  const Y = (v: number) => y0 + M.top + ih - (Math.min(v, top) / top) * ih;
  const line = (key: 'demand' | 'capacity' | 'queued' | 'total', color: string, extra = '') => {
    const pts = bucketMax(s.map((p) => ({ t: p.t, v: key === 'total' ? p.capacity + p.coming : p[key] })), 900);
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${X(p.t).toFixed(1)},${Y(p.v).toFixed(1)}`).join('');
    return `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.3" ${extra}/>`;
  };
  const parts: string[] = [];
  parts.push(`<text x="${M.left}" y="${y0 + 18}" font-size="13" font-weight="bold">${esc(r.policy)}</text>`);
  const m = r.metrics;
  parts.push(`<text x="${W - M.right}" y="${y0 + 18}" font-size="11" text-anchor="end">wait p95 ${m.waitP95.toFixed(0)} s · ${m.instanceHours.toFixed(1)} instance-h · idle ${m.idleRunnerHours.toFixed(0)} runner-h · ${m.reversals} reversals</text>`);
  for (let v = 0; v <= top; v += ys) {
    parts.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${M.left - 6}" y="${(Y(v) + 4).toFixed(1)}" font-size="10" text-anchor="end">${v}</text>`);
  }
  const xs = niceStep(spanMs / 60_000, 8) * 60_000;
  for (let t = 0; t <= spanMs; t += xs) parts.push(`<text x="${X(t).toFixed(1)}" y="${y0 + PANEL_H - 8}" font-size="10" text-anchor="middle">${timeLabel(t, spanMs)}</text>`);
  parts.push(line('total', COLORS.coming, 'stroke-dasharray="4 3"'), line('capacity', COLORS.capacity), line('queued', COLORS.queued), line('demand', COLORS.demand));
  parts.push(`<rect x="${M.left}" y="${y0 + M.top}" width="${iw}" height="${ih}" fill="none" stroke="#999"/>`);
  return parts.join('\n');
}

/** The chart of one scenario, every policy stacked on one time axis. */
export function chartSvg(title: string, results: readonly SimResult[], spanMs: number): string {
  const legendH = 44;
  const H = legendH + results.length * PANEL_H;
  const legend = [
    ['demand (busy + queued)', COLORS.demand, ''],
    ['LIVE runner capacity', COLORS.capacity, ''],
    ['capacity incl. booting', COLORS.coming, 'stroke-dasharray="4 3"'],
    ['queued', COLORS.queued, ''],
  ]
    .map(([label, color, dash], i) => {
      const x = M.left + i * 200;
      return `<line x1="${x}" x2="${x + 22}" y1="34" y2="34" stroke="${color}" stroke-width="2" ${dash}/><text x="${x + 28}" y="38" font-size="11">${esc(label!)}</text>`;
    })
    .join('\n');
  const panels = results.map((r, i) => panel(r, legendH + i * PANEL_H, spanMs)).join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${M.left}" y="18" font-size="14" font-weight="bold">${esc(title)}</text>
${legend}
${panels}
</svg>
`;
}
