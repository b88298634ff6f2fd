import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import { storableText } from '../../lib/text.ts';
import type { MachineStats } from '../../proto/gen/gantry/runner/v1/runner.ts';
import type { Sample, SeriesLayout, SeriesStore } from '../store/series.ts';
import { flatten, type Counters, type Flat } from './machine-stats.ts';

/** What one replica buffers at most between flushes (a database away for long drops the oldest). */
const MAX_BUFFERED = 50_000;
/** Bounds on what a runner's stats may carry into the record. */
const MAX_CORES = 1024;
const MAX_VARIANT_BYTES = 128;

interface RunnerState {
  clusterId: string;
  counters: Counters | undefined;
  /** The window of the last sample buffered (one sample per runner per window). */
  window: number;
  /** The runner's current layout and its series id, once resolved. */
  md5: string;
  seriesId: number | undefined;
}

interface Pending {
  runnerId: string;
  clusterId: string;
  flat: Flat;
  ts: Date;
}

/**
 * Records runners' machine stats as time series (README, "Fleet stats"). Every beat's stats
 * are observed here in O(1) of the fleet (the runner's own values only): the first beat of a
 * runner primes its byte counters, and after that at most one sample per runner per
 * `intervalS` window is buffered, stamped with the window's start. Each flush, every
 * `intervalS`, writes the whole buffer with one multi-row INSERT; a runner's series (its
 * layout of metrics and variants) is looked up only when the layout is new to this replica.
 * Samples are not durable until flushed: a replica that dies loses at most one interval of
 * its runners' samples.
 */
export class StatsRecorder {
  private readonly runners = new Map<string, RunnerState>();
  private buffer: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<number> | undefined;
  private dropped = 0;

  constructor(
    private readonly o: { series: SeriesStore; clock: Clock; intervalS: number; log: Logger },
  ) {}

  /** A beat's stats (absent from a runner that sends none). */
  observe(runnerId: string, clusterId: string, stats: MachineStats | undefined): void {
    if (!stats) return;
    const nowMs = this.o.clock.now().getTime();
    let st = this.runners.get(runnerId);
    if (!st || st.clusterId !== clusterId) {
      st = { clusterId, counters: undefined, window: -1, md5: '', seriesId: undefined };
      this.runners.set(runnerId, st);
    }
    const { flat, counters } = flatten(bounded(stats), st.counters, nowMs);
    const primed = st.counters !== undefined;
    st.counters = counters;
    // The priming beat's window gets no sample: the first one has rates over a whole beat.
    if (primed) this.bufferSample(runnerId, clusterId, st, flat, nowMs);
    else st.window = Math.floor(nowMs / (this.o.intervalS * 1000));
  }

  /** A third-party worker's report, flattened already (its rates come as rates: nothing to prime). */
  observeFlat(runnerId: string, clusterId: string, flat: Flat): void {
    let st = this.runners.get(runnerId);
    if (!st || st.clusterId !== clusterId) {
      st = { clusterId, counters: undefined, window: -1, md5: '', seriesId: undefined };
      this.runners.set(runnerId, st);
    }
    this.bufferSample(runnerId, clusterId, st, flat, this.o.clock.now().getTime());
  }

  /** Buffers the sample unless the runner has one in this window already. */
  private bufferSample(runnerId: string, clusterId: string, st: RunnerState, flat: Flat, nowMs: number): void {
    const windowMs = this.o.intervalS * 1000;
    const window = Math.floor(nowMs / windowMs);
    if (window === st.window) return;
    st.window = window;
    if (this.buffer.length >= MAX_BUFFERED) {
      this.buffer.shift();
      this.dropped++;
    }
    this.buffer.push({ runnerId, clusterId, flat, ts: new Date(window * windowMs) });
  }

  /** The runner's session ended here: its state goes (a runner that returns primes again). */
  forget(runnerId: string): void {
    this.runners.delete(runnerId);
  }

  /** Samples buffered and not yet written. */
  get buffered(): number {
    return this.buffer.length;
  }

  start(): void {
    const tick = () => {
      void this.flush()
        .catch((err: unknown) => this.o.log.warn({ err: (err as Error).message, buffered: this.buffer.length }, 'cannot write machine stats; keeping them for the next flush'))
        .finally(() => {
          this.timer = setTimeout(tick, this.o.intervalS * 1000);
          this.timer.unref();
        });
    };
    this.timer = setTimeout(tick, this.o.intervalS * 1000);
    this.timer.unref();
  }

  /** Stops the timer and writes what is buffered. */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush().catch((err: unknown) => this.o.log.warn({ err: (err as Error).message }, 'cannot write the last machine stats'));
  }

  /** Writes the buffer (one flush at a time); returns the samples written. On failure they stay buffered. */
  flush(): Promise<number> {
    if (this.flushing) return this.flushing.then(() => this.flush());
    this.flushing = this.write().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async write(): Promise<number> {
    if (this.dropped > 0) {
      this.o.log.warn({ dropped: this.dropped }, 'machine stats buffer full; oldest samples dropped');
      this.dropped = 0;
    }
    const batch = this.buffer;
    if (batch.length === 0) return 0;
    this.buffer = [];
    try {
      const samples: Sample[] = [];
      for (const p of batch) {
        const seriesId = await this.seriesOf(p);
        samples.push({ seriesId, ts: p.ts, busy: p.flat.busy, values: p.flat.values });
      }
      return await this.o.series.insert(samples);
    } catch (err) {
      this.buffer = batch.concat(this.buffer).slice(-MAX_BUFFERED);
      throw err;
    }
  }

  /** The sample's series: cached per runner while its layout stays the same. */
  private async seriesOf(p: Pending): Promise<number> {
    const st = this.runners.get(p.runnerId);
    if (st && st.clusterId === p.clusterId && st.md5 === p.flat.md5 && st.seriesId !== undefined) return st.seriesId;
    const layout: SeriesLayout = {
      runnerId: p.runnerId,
      clusterId: p.clusterId,
      md5: p.flat.md5,
      metrics: p.flat.metrics,
      variants: p.flat.variants,
    };
    const id = await this.o.series.resolve(layout);
    if (st && st.clusterId === p.clusterId) {
      st.md5 = p.flat.md5;
      st.seriesId = id;
    }
    return id;
  }
}

/** The runner's stats within the record's bounds: so many cores, disks, interfaces; names storable and short. */
function bounded(s: MachineStats): MachineStats {
  const name = (x: string) => storableText(x, MAX_VARIANT_BYTES) || '?';
  return {
    ...s,
    cpuPerCore: s.cpuPerCore.slice(0, MAX_CORES),
    disks: s.disks.slice(0, 16).map((d) => ({ ...d, mount: name(d.mount) })),
    interfaces: s.interfaces.slice(0, 16).map((i) => ({ ...i, name: name(i.name) })),
  };
}
