// Smoke of every simulator scenario under our policy and both baselines: the invariants are
// 0 for ours, and ours wins where it is meant to (autoscaler/README.md, "How to read it").
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SCENARIOS } from '../../../autoscaler/sim/scenarios.ts';
import { markdownTable, runScenario } from '../../../autoscaler/sim/report.ts';
import { chartSvg } from '../../../autoscaler/sim/svg.ts';
import { ewmaPolicy } from '../../../autoscaler/sim/baselines.ts';
import { simulate } from '../../../autoscaler/sim/engine.ts';
import { main } from '../../../autoscaler/sim/main.ts';
import type { SimResult } from '../../../autoscaler/sim/engine.ts';

const run = promisify(execFile);
const results = new Map(SCENARIOS.map((s) => [s.name, runScenario(s)] as const));
const get = (scenario: string): { ours: SimResult; fixed: SimResult; reactive: SimResult } => {
  const [ours, fixed, reactive] = results.get(scenario)!;
  return { ours: ours!, fixed: fixed!, reactive: reactive! };
};

t.test('every scenario: our invariants are 0 and every task ran', async (t) => {
  t.same(
    [...results.keys()],
    ['cold-start', 'diurnal', 'flutter', 'fanout-10k', 'hourly-spikes'],
    'the catalogue of the issue: cold start, diurnal with lunch dip, flutter, 10k fan-out, hourly spikes',
  );
  for (const [name] of results) {
    const { ours } = get(name);
    t.equal(ours.metrics.busyKills, 0, `${name}: busy-kills`);
    t.equal(ours.metrics.capViolations, 0, `${name}: cap violations`);
    t.equal(ours.metrics.orphans, 0, `${name}: orphans`);
    t.equal(ours.metrics.unfinished, 0, `${name}: unfinished tasks`);
  }
});

t.test('ours against the fixed fleet: far shorter waits wherever load varies', async (t) => {
  for (const name of ['cold-start', 'diurnal', 'fanout-10k', 'hourly-spikes']) {
    const { ours, fixed } = get(name);
    t.ok(ours.metrics.waitP95 * 5 < fixed.metrics.waitP95, `${name}: p95 wait ${ours.metrics.waitP95.toFixed(0)} s vs ${fixed.metrics.waitP95.toFixed(0)} s`);
  }
  const { ours, fixed } = get('flutter');
  t.ok(ours.metrics.idleRunnerHours * 3 < fixed.metrics.idleRunnerHours, `flutter: idle ${ours.metrics.idleRunnerHours.toFixed(0)} vs ${fixed.metrics.idleRunnerHours.toFixed(0)} runner-h`);
  t.ok(ours.metrics.instanceHours < fixed.metrics.instanceHours, 'flutter: cheaper too');
});

t.test('ours against the reactive policy: far fewer reversals and wasted boots', async (t) => {
  for (const name of ['diurnal', 'flutter', 'hourly-spikes']) {
    const { ours, reactive } = get(name);
    t.ok(ours.metrics.reversals * 5 < reactive.metrics.reversals, `${name}: ${ours.metrics.reversals} vs ${reactive.metrics.reversals} reversals`);
  }
  const d = get('diurnal');
  t.ok(d.ours.metrics.wastedBoots * 5 < d.reactive.metrics.wastedBoots, `diurnal: ${d.ours.metrics.wastedBoots} vs ${d.reactive.metrics.wastedBoots} wasted boots`);
  t.ok(d.ours.metrics.scaleActions * 3 < d.reactive.metrics.scaleActions, 'diurnal: a fraction of the scale actions');
  t.ok(d.ours.metrics.waitP99 <= d.reactive.metrics.waitP99, 'diurnal: and no worse on p99 wait');
  const c = get('cold-start');
  t.ok(c.ours.metrics.launched < c.reactive.metrics.launched, 'cold-start with a failover: no duplicate launch, unlike a policy without intents');
});

t.test('runs are deterministic', async (t) => {
  const s = SCENARIOS.find((x) => x.name === 'cold-start')!;
  t.same(simulate(s, ewmaPolicy).metrics, get('cold-start').ours.metrics);
});

t.test('table and chart render', async (t) => {
  const all = [...results.values()].flat();
  const table = markdownTable(all).split('\n');
  t.equal(table.length, 2 + all.length, 'one row per scenario and policy');
  t.match(table[0], /wait p50 s \| p95 s \| p99 s \| first runner from idle s \| idle runner-h \| billed instance-h \| scale actions \| reversals \| wasted boots \| busy-kills \| cap violations \| orphans/);
  const svg = chartSvg('flutter', results.get('flutter')!, SCENARIOS[2]!.horizonMs);
  t.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  t.equal(svg.match(/<path /g)?.length, 12, 'four series per policy panel');
  t.notMatch(svg, /NaN|undefined/);
});

t.test('the command without --write or --out prints the table and writes no file', async (t) => {
  const cwd = await mkdtemp(join(tmpdir(), 'gantry-sim-'));
  t.teardown(() => rm(cwd, { recursive: true, force: true }));
  const lines: string[] = [];
  const r = main(['--scenario', 'flutter'], { cwd, out: (l) => lines.push(l), err: (l) => lines.push(l) });
  t.equal(r.exitCode, 0);
  t.same(r.written, [], 'nothing written');
  t.same(await readdir(cwd), [], 'not even docs/autoscaler/ under the working directory');
  t.match(lines.join('\n'), /\| flutter \| ewma \(ours\) \|/, 'the table on stdout');
});

t.test('--write writes the charts and results.md into docs/autoscaler/ of the working directory', async (t) => {
  const cwd = await mkdtemp(join(tmpdir(), 'gantry-sim-'));
  t.teardown(() => rm(cwd, { recursive: true, force: true }));
  const r = main(['--scenario', 'flutter', '--write'], { cwd, out: () => undefined, err: () => undefined });
  t.equal(r.exitCode, 0);
  t.same((await readdir(join(cwd, 'docs', 'autoscaler'))).sort(), ['flutter.svg', 'results.md']);
  t.equal(r.written.length, 2);
});

t.test('the command with --out writes a table, a chart per scenario and results.md', async (t) => {
  const out = await mkdtemp(join(tmpdir(), 'gantry-sim-'));
  t.teardown(() => rm(out, { recursive: true, force: true }));
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'autoscaler/sim/main.ts', '--scenario', 'flutter', '--out', out], { cwd: new URL('../../..', import.meta.url).pathname });
  t.match(stdout, /\| flutter \| ewma \(ours\) \|/);
  t.same((await readdir(out)).sort(), ['flutter.svg', 'results.md']);
  t.match(await readFile(join(out, 'results.md'), 'utf8'), /\| flutter \| reactive \|/);
});
