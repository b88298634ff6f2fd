import os from 'node:os';
import si from 'systeminformation';
import type { MachineStats } from '../proto/gen/gantry/runner/v1/runner.ts';

/**
 * Machine stats for heartbeats (the fleet views), from systeminformation. Sampling is slow
 * (it reads /proc and the disks), so it runs in the background and beats read the cache.
 */
export class StatsSampler {
  private last: Omit<MachineStats, 'busySlots' | 'totalSlots' | 'runningContainers'> = {
    cpuPercent: 0,
    load1: 0,
    memTotalMb: Math.round(os.totalmem() / 1048576),
    memUsedMb: Math.round((os.totalmem() - os.freemem()) / 1048576),
    diskTotalMb: 0,
    diskUsedMb: 0,
  };
  private timer: NodeJS.Timeout | undefined;

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
      const [load, mem, disks] = await Promise.all([si.currentLoad(), si.mem(), si.fsSize()]);
      // The filesystem holding the work directory (longest matching mount point).
      const disk = disks
        .filter((d) => this.workDir.startsWith(d.mount))
        .sort((a, b) => b.mount.length - a.mount.length)[0];
      this.last = {
        cpuPercent: Math.round(load.currentLoad * 10) / 10,
        load1: os.loadavg()[0] ?? 0,
        memTotalMb: Math.round(mem.total / 1048576),
        memUsedMb: Math.round(mem.active / 1048576),
        diskTotalMb: disk ? Math.round(disk.size / 1048576) : 0,
        diskUsedMb: disk ? Math.round(disk.used / 1048576) : 0,
      };
    } catch {
      /* keep the last sample */
    }
  }

  current(running: number, busySlots: number, totalSlots: number): MachineStats {
    return { ...this.last, runningContainers: running, busySlots, totalSlots };
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
