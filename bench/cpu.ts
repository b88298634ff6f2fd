import fs from 'node:fs';

/** Clock ticks a second in /proc/<pid>/stat (USER_HZ: 100 on every Linux build Node runs on). */
const TICKS = 100;

/** utime + stime of one process, in seconds; 0 once it is gone (or off Linux). */
function processSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name, field 2, is in parentheses and may hold spaces: count from after it.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return 0;
  }
}

/** The PostgreSQL server's processes on this host (its postmaster, backends and workers). */
function postgresPids(): number[] {
  let dirs: string[];
  try {
    dirs = fs.readdirSync('/proc');
  } catch {
    return [];
  }
  return dirs.filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('postgres');
    } catch {
      return false;
    }
  });
}

/**
 * CPU seconds used so far, by role: each role's processes, and `postgres` for the database
 * server's. Two readings' difference is what a stage cost; a backend that exits between them
 * takes its share along (the control plane's pool keeps its connections open).
 */
export function cpuSeconds(roles: Record<string, () => readonly number[]>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [role, pids] of Object.entries(roles)) out[role] = pids().reduce((s, pid) => s + processSeconds(pid), 0);
  out.postgres = postgresPids().reduce((s, pid) => s + processSeconds(pid), 0);
  return out;
}

/** b − a per role, rounded to a hundredth of a second. */
export function cpuSpent(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(b)) out[k] = Math.round(((b[k] ?? 0) - (a[k] ?? 0)) * 100) / 100;
  return out;
}
