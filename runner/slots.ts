/**
 * How many tasks a runner runs at once when the operator did not say (GANTRY_RUNNER_SLOTS
 * 0): as many as both its CPUs and its memory allow. Memory alone overcommits a small
 * machine with much RAM (a 2-CPU host with 24 GB made 47 slots of 512 MB); CPUs alone
 * overcommit memory when tasks are large.
 */
/** Memory of one task until the control plane names the cluster's (and for offers that name none). */
export const DEFAULT_TASK_MEMORY_MB = 512;

export interface SlotBasis {
  cpus: number;
  memoryMb: number;
  /** Memory of one task: the cluster's, as the control plane says in Welcome, unless configured. */
  taskMemoryMb: number;
  slotsPerCpu: number;
}

export function deriveSlots(b: SlotBasis): { slots: number; limitedBy: 'cpus' | 'memory' } {
  const byCpu = Math.max(1, Math.floor(b.cpus)) * b.slotsPerCpu;
  const byMemory = Math.floor(b.memoryMb / Math.max(1, b.taskMemoryMb));
  return byMemory < byCpu ? { slots: Math.max(1, byMemory), limitedBy: 'memory' } : { slots: byCpu, limitedBy: 'cpus' };
}
