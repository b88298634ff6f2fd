import t from 'tap';
import { deriveSlots } from '../../../runner/slots.ts';

t.test('derived slots are what both CPUs and memory allow', async (t) => {
  // The machine the issue was seen on: 2 CPUs, 24 GB, 512 MB tasks made 47 slots.
  t.same(deriveSlots({ cpus: 2, memoryMb: 24 * 1024, taskMemoryMb: 512, slotsPerCpu: 1 }), { slots: 2, limitedBy: 'cpus' });
  t.same(deriveSlots({ cpus: 2, memoryMb: 24 * 1024, taskMemoryMb: 512, slotsPerCpu: 4 }), { slots: 8, limitedBy: 'cpus' });
  t.same(deriveSlots({ cpus: 16, memoryMb: 8 * 1024, taskMemoryMb: 2048, slotsPerCpu: 1 }), { slots: 4, limitedBy: 'memory' });
  t.same(deriveSlots({ cpus: 4, memoryMb: 1000, taskMemoryMb: 4096, slotsPerCpu: 1 }), { slots: 1, limitedBy: 'memory' }, 'never fewer than one');
  t.same(deriveSlots({ cpus: 0, memoryMb: 0, taskMemoryMb: 0, slotsPerCpu: 1 }), { slots: 1, limitedBy: 'memory' }, 'nothing known: one');
});
