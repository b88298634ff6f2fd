import { createHash } from 'node:crypto';
import type { MachineStats } from '../../proto/gen/gantry/runner/v1/runner.ts';

/**
 * Machine stats as recorded series: each beat's MachineStats flattened into (metric,
 * variant, value) triples in a fixed order. Metric names follow ClearML's workers service:
 * the category is the name up to its first '_' (cpu, load, memory, disk, network,
 * containers, slots); a scalar's variant is `total`; per core, per disk and per interface
 * values are variants (the core's index, the mount point, the interface's name). Byte
 * counters become rates (bytes per second since the previous beat), what a chart shows.
 */

/** Every metric, in the order samples carry them, with its unit (for the README and replies). */
export const METRICS: Readonly<Record<string, string>> = Object.freeze({
  cpu_total: 'percent of all CPUs busy',
  cpu_usage: 'percent busy, per core (variant: the core index)',
  load_1m: 'load average over 1 minute',
  load_5m: 'load average over 5 minutes',
  load_15m: 'load average over 15 minutes',
  memory_used: 'MB used by processes',
  memory_cached: 'MB of page cache and buffers',
  memory_free: 'MB neither used nor cached',
  memory_total: 'MB of memory',
  memory_swap_used: 'MB of swap used',
  memory_swap_total: 'MB of swap',
  disk_used: 'MB used, per filesystem (variant: its mount point)',
  disk_total: 'MB in all, per filesystem',
  disk_read: 'bytes read per second, per filesystem',
  disk_write: 'bytes written per second, per filesystem',
  network_rx: 'bytes received per second, per interface (variant: its name)',
  network_tx: 'bytes sent per second, per interface',
  containers_running: 'task containers the runner runs',
  slots_busy: 'slots holding a task',
  slots_total: 'slots the runner has',
  // Reported by third-party workers only (workers.status_report, ClearML's machine_stats).
  cpu_temperature: 'degrees Celsius, per sensor (variant: its index)',
  gpu_usage: 'percent busy, per GPU (variant: its index)',
  gpu_memory_used: 'MB used, per GPU',
  gpu_memory_free: 'MB free, per GPU',
  gpu_temperature: 'degrees Celsius, per GPU',
  disk_free_home: 'percent free of /home',
  disk_free_temp: 'percent free of /tmp',
});
export const METRIC_NAMES: readonly string[] = Object.keys(METRICS);

/** The category of a metric (ClearML's rule: its name up to the first '_'). */
export const categoryOf = (metric: string) => metric.split('_', 1)[0]!;

/** One beat flattened: the layout (metrics and variants, with its md5) and the values in that order. */
export interface Flat {
  metrics: string[];
  variants: string[];
  values: number[];
  md5: string;
  busy: number;
}

/** Byte counters of the previous beat of a runner, to turn counters into rates. */
export interface Counters {
  atMs: number;
  values: Map<string, number>;
}

/**
 * Flattens one beat's stats. `prev` is the same runner's previous beat (undefined for its
 * first: the rates then read 0). Returns the flattened sample and the counters for the next.
 */
export function flatten(s: MachineStats, prev: Counters | undefined, nowMs: number): { flat: Flat; counters: Counters } {
  const metrics: string[] = [];
  const variants: string[] = [];
  const values: number[] = [];
  const counters = new Map<string, number>();
  const dtS = prev ? (nowMs - prev.atMs) / 1000 : 0;
  const put = (metric: string, variant: string, value: number) => {
    metrics.push(metric);
    variants.push(variant);
    values.push(Number.isFinite(value) ? value : 0);
  };
  const rate = (metric: string, variant: string, counter: number) => {
    const key = `${metric}\u0000${variant}`;
    counters.set(key, counter);
    const before = prev?.values.get(key);
    // A counter that went back (a reboot, a re-created interface) gives no rate for this beat.
    put(metric, variant, before !== undefined && dtS > 0 && counter >= before ? (counter - before) / dtS : 0);
  };
  const n = (x: number | bigint | undefined) => Number(x ?? 0);

  put('cpu_total', 'total', s.cpuPercent);
  s.cpuPerCore.forEach((v, i) => put('cpu_usage', String(i), v));
  put('load_1m', 'total', s.load1);
  put('load_5m', 'total', s.load5);
  put('load_15m', 'total', s.load15);
  const total = n(s.memTotalMb);
  const used = n(s.memUsedMb);
  const cached = n(s.memCachedMb);
  put('memory_used', 'total', used);
  put('memory_cached', 'total', cached);
  put('memory_free', 'total', Math.max(0, total - used - cached));
  put('memory_total', 'total', total);
  put('memory_swap_used', 'total', n(s.swapUsedMb));
  put('memory_swap_total', 'total', n(s.swapTotalMb));
  // An older runner sends only the work directory's filesystem.
  const disks = s.disks.length > 0 ? s.disks : n(s.diskTotalMb) > 0 ? [{ mount: 'work', device: '', usedMb: s.diskUsedMb, totalMb: s.diskTotalMb, readBytes: 0, writeBytes: 0 }] : [];
  for (const d of disks) {
    put('disk_used', d.mount, n(d.usedMb));
    put('disk_total', d.mount, n(d.totalMb));
  }
  for (const d of disks) rate('disk_read', d.mount, n(d.readBytes));
  for (const d of disks) rate('disk_write', d.mount, n(d.writeBytes));
  for (const i of s.interfaces) rate('network_rx', i.name, n(i.rxBytes));
  for (const i of s.interfaces) rate('network_tx', i.name, n(i.txBytes));
  put('containers_running', 'total', s.runningContainers);
  put('slots_busy', 'total', s.busySlots);
  put('slots_total', 'total', s.totalSlots);

  return { flat: { metrics, variants, values, md5: layoutMd5(metrics, variants), busy: s.busySlots }, counters: { atMs: nowMs, values: counters } };
}

/** A third-party worker's machine_stats (ClearML's fields: MB, MB per second, percent). */
export interface ReportedStats {
  cpu_usage?: number[] | null;
  gpu_usage?: number[] | null;
  memory_used?: number;
  memory_free?: number;
  gpu_memory_free?: number[] | null;
  gpu_memory_used?: number[] | null;
  network_tx?: number;
  network_rx?: number;
  disk_free_home?: number;
  disk_free_temp?: number;
  disk_read?: number;
  disk_write?: number;
  cpu_temperature?: number[] | null;
  gpu_temperature?: number[] | null;
}

const MB = 1048576;

/**
 * Flattens a third-party worker's machine_stats into the same metrics as runners' (rates in
 * bytes per second, memory in MB), with `busy` its busy slots (1 while it runs a task).
 */
export function flattenReported(s: ReportedStats, busy: number): Flat {
  const metrics: string[] = [];
  const variants: string[] = [];
  const values: number[] = [];
  const put = (metric: string, variant: string, value: number | undefined) => {
    if (value === undefined || !Number.isFinite(value)) return;
    metrics.push(metric);
    variants.push(variant);
    values.push(value);
  };
  const each = (metric: string, list: number[] | null | undefined) => (list ?? []).forEach((v, i) => put(metric, String(i), v));
  const cores = s.cpu_usage ?? [];
  if (cores.length > 0) put('cpu_total', 'total', cores.reduce((a, b) => a + b, 0) / cores.length);
  each('cpu_usage', cores);
  each('cpu_temperature', s.cpu_temperature);
  put('memory_used', 'total', s.memory_used);
  put('memory_free', 'total', s.memory_free);
  if (s.memory_used !== undefined && s.memory_free !== undefined) put('memory_total', 'total', s.memory_used + s.memory_free);
  each('gpu_usage', s.gpu_usage);
  each('gpu_memory_used', s.gpu_memory_used);
  each('gpu_memory_free', s.gpu_memory_free);
  each('gpu_temperature', s.gpu_temperature);
  put('disk_free_home', 'total', s.disk_free_home);
  put('disk_free_temp', 'total', s.disk_free_temp);
  put('disk_read', 'total', s.disk_read === undefined ? undefined : s.disk_read * MB);
  put('disk_write', 'total', s.disk_write === undefined ? undefined : s.disk_write * MB);
  put('network_rx', 'total', s.network_rx === undefined ? undefined : s.network_rx * MB);
  put('network_tx', 'total', s.network_tx === undefined ? undefined : s.network_tx * MB);
  put('slots_busy', 'total', busy);
  put('slots_total', 'total', 1);
  return { metrics, variants, values, md5: layoutMd5(metrics, variants), busy };
}

function layoutMd5(metrics: string[], variants: string[]): string {
  return createHash('md5').update(metrics.join('\u0001')).update('\u0002').update(variants.join('\u0001')).digest('hex');
}
