import fc from 'fast-check';
import t from 'tap';
import { reconcile, type RecordedInstance, type ReconcileAction } from '../../../autoscaler/providers/reconcile.ts';
import { TAG_CLUSTER, TAG_INTENT, TAG_MANAGED, type InstanceState, type ProviderInstance } from '../../../autoscaler/providers/types.ts';

const T0 = Date.UTC(2026, 0, 1, 12);
const at = (sec: number) => new Date(T0 + sec * 1000);
const CL = 'c0ffee0000000000000000aa';

function cloud(id: string, state: InstanceState, launchedSec: number, extra: Partial<ProviderInstance> & { intent?: string; cluster?: string } = {}): ProviderInstance {
  const { intent, cluster, ...rest } = extra;
  const tags: Record<string, string> = { [TAG_CLUSTER]: cluster ?? CL, [TAG_MANAGED]: 'true' };
  if (intent) tags[TAG_INTENT] = intent;
  return { instanceId: id, state, launchedAt: at(launchedSec), tags, ...(intent ? { intentId: intent } : {}), ...rest };
}

function rec(id: string, type: RecordedInstance['type'], launchedSec: number, bootDeadlineSec: number | null = null, intentId: string | null = null): RecordedInstance {
  return { instanceId: id, type, launchedAt: at(launchedSec), bootDeadline: bootDeadlineSec === null ? null : at(bootDeadlineSec), intentId };
}

const run = (recorded: RecordedInstance[], instances: ProviderInstance[], opts: { nowSec?: number; asOfSec?: number; intents?: string[] } = {}) =>
  reconcile({
    clusterId: CL,
    recorded,
    listing: { instances, asOf: at(opts.asOfSec ?? opts.nowSec ?? 1000) },
    knownIntents: opts.intents ?? [],
    now: at(opts.nowSec ?? 1000),
  });

t.test('everything in agreement: no action', async (t) => {
  const actions = run(
    [rec('i-1', 'LIVE', 0), rec('i-2', 'ADD', 900, 1500), rec('i-3', 'KILL', 0), rec('i-4', 'TERMINATE', 0)],
    [cloud('i-1', 'running', 0), cloud('i-2', 'pending', 900), cloud('i-3', 'running', 0), cloud('i-4', 'terminated', 0)],
  );
  t.same(actions, []);
});

t.test('a lost launch reply is adopted by intent tag or by ClientToken', async (t) => {
  const byTag = cloud('i-a', 'pending', 990, { intent: `${CL}-k1-0` });
  const byToken = cloud('i-b', 'running', 990, { clientToken: `${CL}-k1-1.0123456789` });
  const plainToken = cloud('i-c', 'running', 990, { clientToken: `${CL}-k1-2` });
  const actions = run([], [byTag, byToken, plainToken], { intents: [`${CL}-k1-0`, `${CL}-k1-1`, `${CL}-k1-2`] });
  t.same(actions, [
    { kind: 'adopt', instanceId: 'i-a', intentId: `${CL}-k1-0`, instance: byTag },
    { kind: 'adopt', instanceId: 'i-b', intentId: `${CL}-k1-1`, instance: byToken },
    { kind: 'adopt', instanceId: 'i-c', intentId: `${CL}-k1-2`, instance: plainToken },
  ]);
});

t.test('unknown tagged instances are orphans, terminated only after the grace period', async (t) => {
  const young = cloud('i-young', 'running', 950, { intent: 'forgotten-intent' });
  const old = cloud('i-old', 'running', 100, { intent: 'forgotten-intent' });
  const stoppedOrphan = cloud('i-stopped', 'stopped', 100);
  const deadOrphan = cloud('i-dead', 'terminated', 100);
  t.same(run([], [young, old, stoppedOrphan, deadOrphan]), [
    { kind: 'terminate', instanceId: 'i-old', reason: 'orphan' },
    { kind: 'terminate', instanceId: 'i-stopped', reason: 'orphan' },
  ]);
});

t.test('instances of another cluster in the listing are never touched', async (t) => {
  t.same(run([], [cloud('i-x', 'running', 0, { cluster: 'another-cluster' })]), []);
});

t.test('ADD past its boot deadline is failed and terminated; within it, left alone', async (t) => {
  const recorded = [rec('i-late', 'ADD', 0, 600), rec('i-ok', 'ADD', 500, 1100), rec('i-live', 'LIVE', 0, 600)];
  const instances = [cloud('i-late', 'running', 0), cloud('i-ok', 'running', 500), cloud('i-live', 'running', 0)];
  t.same(run(recorded, instances, { nowSec: 601 }), [
    { kind: 'fail', instanceId: 'i-late', reason: 'boot_deadline' },
    { kind: 'terminate', instanceId: 'i-late', reason: 'boot_deadline' },
  ]);
  t.same(run(recorded, instances, { nowSec: 600 }), [], 'the deadline itself is still in time');
});

t.test('spot reclaim and console termination: recorded instances gone from the cloud', async (t) => {
  const recorded = [rec('i-reclaimed', 'LIVE', 0), rec('i-shutting', 'KILL', 0), rec('i-vanished', 'LIVE', 0), rec('i-stopped', 'LIVE', 0)];
  const instances = [cloud('i-reclaimed', 'terminated', 0), cloud('i-shutting', 'shutting-down', 0), cloud('i-stopped', 'stopped', 0)];
  t.same(run(recorded, instances), [
    { kind: 'gone', instanceId: 'i-reclaimed', cloudState: 'terminated' },
    { kind: 'gone', instanceId: 'i-shutting', cloudState: 'shutting-down' },
    { kind: 'gone', instanceId: 'i-stopped', cloudState: 'stopped' },
    { kind: 'terminate', instanceId: 'i-stopped', reason: 'stopped' },
    { kind: 'gone', instanceId: 'i-vanished', cloudState: 'missing' },
  ]);
});

t.test('missing from a listing is not gone while the listing may predate the launch', async (t) => {
  const recorded = [rec('i-new', 'ADD', 990, 1600)];
  t.same(run(recorded, [], { nowSec: 1000, asOfSec: 1000 }), [], 'launched 10 s before the listing: eventual consistency');
  t.same(run(recorded, [], { nowSec: 2000, asOfSec: 995 }), [], 'a cached listing older than the launch proves nothing');
  t.same(run(recorded, [], { nowSec: 2000, asOfSec: 1200 }), [{ kind: 'gone', instanceId: 'i-new', cloudState: 'missing' }]);
});

t.test('TERMINATE recorded but still alive: terminate again', async (t) => {
  t.same(run([rec('i-1', 'TERMINATE', 0), rec('i-2', 'TERMINATE', 0)], [cloud('i-1', 'running', 0), cloud('i-2', 'shutting-down', 0)]), [
    { kind: 'terminate', instanceId: 'i-1', reason: 'terminate_incomplete' },
  ]);
});

// Properties over random records and listings.
const states: InstanceState[] = ['pending', 'running', 'shutting-down', 'terminated', 'stopping', 'stopped'];
const types: RecordedInstance['type'][] = ['ADD', 'LIVE', 'KILL', 'TERMINATE'];
const world = fc
  .array(
    fc.record({
      recorded: fc.option(fc.record({ type: fc.constantFrom(...types), launched: fc.integer({ min: 0, max: 2000 }), deadline: fc.option(fc.integer({ min: 0, max: 2500 })) })),
      cloud: fc.option(fc.record({ state: fc.constantFrom(...states), launched: fc.integer({ min: 0, max: 2000 }), intent: fc.option(fc.constantFrom('in-1', 'in-2', 'in-3')), foreign: fc.boolean() })),
    }),
    { maxLength: 20 },
  )
  .map((xs) => {
    const recorded: RecordedInstance[] = [];
    const instances: ProviderInstance[] = [];
    xs.forEach((x, k) => {
      const id = `i-${k.toString().padStart(3, '0')}`;
      if (x.recorded) recorded.push(rec(id, x.recorded.type, x.recorded.launched, x.recorded.deadline, null));
      if (x.cloud) instances.push(cloud(id, x.cloud.state, x.cloud.launched, { ...(x.cloud.intent ? { intent: x.cloud.intent } : {}), ...(x.cloud.foreign ? { cluster: 'other' } : {}) }));
    });
    return { recorded, instances };
  });

t.test('properties: never act on foreign instances, never terminate a live recorded instance within its deadline, repeatable', async (t) => {
  fc.assert(
    fc.property(world, fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 0, max: 3000 }), ({ recorded, instances }, nowSec, asOfSec) => {
      const input = { clusterId: CL, recorded, listing: { instances, asOf: at(Math.min(nowSec, asOfSec)) }, knownIntents: ['in-1', 'in-2'], now: at(nowSec) };
      const a = reconcile(input);
      const b = reconcile(input);
      if (JSON.stringify(a) !== JSON.stringify(b)) return false; // deterministic
      const rec = new Map(recorded.map((r) => [r.instanceId, r]));
      const cl = new Map(instances.map((i) => [i.instanceId, i]));
      for (const x of a as ReconcileAction[]) {
        const c = cl.get(x.instanceId);
        const r = rec.get(x.instanceId);
        if (c && c.tags[TAG_CLUSTER] !== CL && x.kind !== 'gone') return false; // foreign: at most our own record is closed
        if (x.kind === 'terminate') {
          if (!c || c.tags[TAG_CLUSTER] !== CL) return false; // only what the listing shows as ours
          if (r && (r.type === 'LIVE' || r.type === 'KILL') && (c.state === 'running' || c.state === 'pending')) return false; // decide() drains those
          if (r?.type === 'ADD' && (c.state === 'running' || c.state === 'pending') && !(r.bootDeadline && nowSec * 1000 + T0 > r.bootDeadline.getTime())) return false;
        }
        if (x.kind === 'adopt' && (r || !['in-1', 'in-2'].includes(x.intentId))) return false;
        if (x.kind === 'gone' && (!r || r.type === 'TERMINATE')) return false;
      }
      return true;
    }),
    { numRuns: 500, seed: 5 },
  );
  t.pass('500 random worlds');
});
