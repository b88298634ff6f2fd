import { readFile } from 'node:fs/promises';
import os from 'node:os';
import si from 'systeminformation';
import type { DiskStats, MachineStats, NetStats, SlotTask } from '../proto/gen/gantry/runner/v1/runner.ts';

/** At most this many disks and interfaces go into a beat (a host with hundreds of veths sends its first ones). */
const MAX_DISKS = 16;
const MAX_INTERFACES = 16;
/** Filesystems that are not disks of the host. */
const VIRTUAL_FS = /^(tmpfs|devtmpfs|overlay|squashfs|proc|sysfs|cgroup2?|nsfs|autofs|fuse\..*)$/;

type Sampled = Omit<MachineStats, 'busySlots' | 'totalSlots' | 'runningContainers' | 'slotTasks'>;

/**
 * Machine stats for heartbeats (the fleet views and the recorded series), from
 * systeminformation and, for each block device's byte counters, /proc/diskstats. Sampling is
 * slow (it reads /proc, the disks and the interfaces), so it runs in the background and beats
 * read the cache.
 */
export class StatsSampler {
  private last: Sampled = {
    cpuPercent: 0,
    cpuPerCore: [],
    load1: 0,
    load5: 0,
    load15: 0,
    memTotalMb: Math.round(os.totalmem() / 1048576),
    memUsedMb: Math.round((os.totalmem() - os.freemem()) / 1048576),
    memCachedMb: 0,
    swapTotalMb: 0,
    swapUsedMb: 0,
    diskTotalMb: 0,
    diskUsedMb: 0,
    disks: [],
    interfaces: [],
  };
  private timer: NodeJS.Timeout | undefined;
  /** A sample has been taken (until then beats carry no stats, so no placeholder is recorded). */
  private sampled = false;

  constructor(private readonly workDir: string) {}

  start(everyMs = 5000): void {
    const tick = () => {
      void this.sample().finally(() => {
        this.timer = setTimeout(tick, everyMs);
        this.timer.unref();
      });
    };
    tick();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private async sample(): Promise<void> {
    try {
      const [load, mem, fsList, nets, io] = await Promise.all([
        si.currentLoad(),
        si.mem(),
        si.fsSize(),
        si.networkStats('*').catch(() => []),
        blockDeviceBytes(),
      ]);
      const local = fsList.filter((d) => d.size > 0 && !VIRTUAL_FS.test(d.type)).slice(0, MAX_DISKS);
      // The filesystem holding the work directory (longest matching mount point).
      const work = local
        .filter((d) => this.workDir.startsWith(d.mount))
        .sort((a, b) => b.mount.length - a.mount.length)[0];
      const disks: DiskStats[] = local.map((d) => {
        const dev = d.fs.replace(/^\/dev\//, '');
        const bytes = io.get(dev);
        return {
          mount: d.mount,
          device: dev,
          usedMb: Math.round(d.used / 1048576),
          totalMb: Math.round(d.size / 1048576),
          readBytes: bytes?.read ?? 0,
          writeBytes: bytes?.write ?? 0,
        };
      });
      const interfaces: NetStats[] = nets
        .filter((n) => n.iface !== 'lo')
        .slice(0, MAX_INTERFACES)
        .map((n) => ({ name: n.iface, rxBytes: Math.max(0, n.rx_bytes || 0), txBytes: Math.max(0, n.tx_bytes || 0) }));
      const [l1 = 0, l5 = 0, l15 = 0] = os.loadavg();
      this.last = {
        cpuPercent: round1(load.currentLoad),
        cpuPerCore: load.cpus.map((c) => round1(c.load)),
        load1: l1,
        load5: l5,
        load15: l15,
        memTotalMb: Math.round(mem.total / 1048576),
        memUsedMb: Math.round(mem.active / 1048576),
        memCachedMb: Math.round(mem.buffcache / 1048576),
        swapTotalMb: Math.round(mem.swaptotal / 1048576),
        swapUsedMb: Math.round(mem.swapused / 1048576),
        diskTotalMb: work ? Math.round(work.size / 1048576) : 0,
        diskUsedMb: work ? Math.round(work.used / 1048576) : 0,
        disks,
        interfaces,
      };
      this.sampled = true;
    } catch {
      /* keep the last sample */
    }
  }

  /**
   * The last sample with what the agent itself knows: containers it runs, its slots and what
   * each busy one runs. Undefined until the first sample is taken.
   */
  current(running: number, busySlots: number, totalSlots: number, slotTasks: SlotTask[] = []): MachineStats | undefined {
    if (!this.sampled) return undefined;
    return { ...this.last, runningContainers: running, busySlots, totalSlots, slotTasks };
  }

  /** Host memory in MB, for deriving slots. */
  static async totalMemoryMb(): Promise<number> {
    try {
      return Math.round((await si.mem()).total / 1048576);
    } catch {
      return Math.round(os.totalmem() / 1048576);
    }
  }
}

const round1 = (x: number) => Math.round((Number.isFinite(x) ? x : 0) * 10) / 10;

/** Bytes read and written per block device since boot (/proc/diskstats counts 512-byte sectors); empty off Linux. */
async function blockDeviceBytes(): Promise<Map<string, { read: number; write: number }>> {
  const out = new Map<string, { read: number; write: number }>();
  let text: string;
  try {
    text = await readFile('/proc/diskstats', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    out.set(f[2]!, { read: Number(f[5]) * 512, write: Number(f[9]) * 512 });
  }
  return out;
}
