/**
 * The import rules hold (docs/architecture.md, "8 Import rules"; stated in .dependency-cruiser.cjs):
 * dependency-cruiser reads every import of the repository, type-only ones included, and each
 * violation is listed by rule, importer and imported (or cycle). The same rules run over a
 * small tree holding one of each forbidden import, to show they catch them.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { cruise, type ICruiseResult, type IFlattenedRuleSet, type IViolation } from 'dependency-cruiser';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const config = createRequire(import.meta.url)(path.join(ROOT, '.dependency-cruiser.cjs')) as {
  forbidden: IFlattenedRuleSet['forbidden'];
  options: Record<string, unknown>;
};
/** Everything of ours with imports: the programs, the libraries, and the tests, benchmarks and scripts that use them. */
const TREES = ['autoscaler', 'bench', 'bin', 'cli', 'cloud-config', 'control-plane', 'dashboard', 'lib', 'proto', 'runner', 'scripts', 'test'];

async function violations(baseDir: string, trees: string[]): Promise<{ lines: string[]; modules: Set<string> }> {
  const r = await cruise(
    trees.filter((d) => fs.existsSync(path.join(baseDir, d))),
    { ...config.options, baseDir, validate: true, ruleSet: { forbidden: config.forbidden } },
  );
  const out = r.output as ICruiseResult;
  return { lines: out.summary.violations.map(describe).sort(), modules: new Set(out.modules.map((m) => m.source)) };
}

/** Our source files under `trees`, relative to ROOT. */
function sources(trees: string[]): string[] {
  return trees.flatMap((d) =>
    fs
      .readdirSync(path.join(ROOT, d), { recursive: true, encoding: 'utf8' })
      .filter((f) => /\.(ts|tsx|js|mjs|cjs)$/.test(f) && !f.split(path.sep).some((s) => s === 'node_modules' || s === 'dist'))
      .map((f) => path.posix.join(d, ...f.split(path.sep))),
  );
}

/** One line per violation: the rule, then the import or the cycle. */
function describe(v: IViolation): string {
  const what = v.cycle?.length ? [v.from, ...v.cycle.map((c) => c.name)].join(' → ') : `${v.from} → ${v.to}`;
  const types = v.dependencyTypes?.includes('type-only') ? ' (type-only)' : '';
  return `${v.rule.name}: ${what}${types}`;
}

t.test('the repository keeps the import rules', async (t) => {
  const { lines, modules } = await violations(ROOT, TREES);
  const unread = sources(TREES).filter((f) => !modules.has(f));
  t.same(unread, [], 'every source file was read');
  t.same(lines, [], lines.length ? `${lines.length} import(s) break the rules:\n${lines.join('\n')}` : 'no import breaks the rules');
});

t.test('the rules catch forbidden imports and cycles (a small tree with one of each)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-import-rules-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files: Record<string, string> = {
    'lib/a.ts': "import { b } from './b.ts';\nexport const a = () => b();\n",
    'lib/b.ts': "import { a } from './a.ts';\nimport type { Config } from '../control-plane/config.ts';\nexport const b = (c?: Config) => (c ? 0 : a());\n",
    'proto/gen/x.ts': "import { a } from '../../lib/a.ts';\nexport const x = a;\n",
    'cloud-config/render.ts': "import type { Loop } from '../autoscaler/loop.ts';\nexport type R = Loop;\n",
    'autoscaler/index.ts': "export { loop } from './loop.ts';\n",
    'autoscaler/ports.ts': 'export interface Port { n: number }\n',
    'autoscaler/loop.ts': "import type { Config } from '../control-plane/config.ts';\nexport type Loop = Config;\nexport const loop = 1;\n",
    'control-plane/config.ts': 'export interface Config { n: number }\n',
    'control-plane/server.ts':
      "import { loop } from '../autoscaler/index.ts';\nimport type { Port } from '../autoscaler/ports.ts';\nimport { x } from '../proto/gen/x.ts';\nimport { Runner } from '../runner/agent.ts';\nimport { step } from '../autoscaler/loop.ts';\nexport const s = (p: Port) => [loop, x, Runner, step, p];\n",
    'control-plane/dispatch/dispatcher.ts': "import type { Session } from '../grpc/session.ts';\nexport type D = Session;\n",
    'control-plane/grpc/session.ts': 'export interface Session { id: string }\n',
    'control-plane/grpc/gateway.ts': "import type { D } from '../dispatch/dispatcher.ts';\nexport type G = D;\n",
    'runner/agent.ts': "import { a } from '../lib/a.ts';\nimport type { Port } from '../autoscaler/ports.ts';\nexport class Runner { p?: Port; a = a; }\n",
    'runner/main.ts': "import { gone } from './missing.ts';\nexport const m = gone;\n",
    'cli/main.ts': "import { a } from '../lib/a.ts';\nimport type { Config } from '../control-plane/config.ts';\nexport const c = (x?: Config) => (x ? a : a);\n",
    'dashboard/src/main.ts': "import { a } from '../../lib/a.ts';\nimport { page } from './page.ts';\nexport const m = [a, page];\n",
    'dashboard/src/page.ts': "import type { Config } from '../../control-plane/config.ts';\nexport const page = (c?: Config) => c;\n",
  };
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), text);
  }
  const { lines } = await violations(dir, TREES);
  const want = [
    'lib-imports-nothing-of-ours: lib/b.ts → control-plane/config.ts (type-only)',
    'proto-imports-nothing-of-ours: proto/gen/x.ts → lib/a.ts',
    'cloud-config-is-a-library: cloud-config/render.ts → autoscaler/loop.ts (type-only)',
    'autoscaler-imports: autoscaler/loop.ts → control-plane/config.ts (type-only)',
    'control-plane-imports: control-plane/server.ts → runner/agent.ts',
    'control-plane-imports: control-plane/server.ts → autoscaler/loop.ts',
    'runner-imports: runner/agent.ts → autoscaler/ports.ts (type-only)',
    'resolvable: runner/main.ts → ./missing.ts',
    'cli-imports: cli/main.ts → control-plane/config.ts (type-only)',
    'dashboard-imports: dashboard/src/main.ts → lib/a.ts',
    'dashboard-imports: dashboard/src/page.ts → control-plane/config.ts (type-only)',
  ];
  for (const w of want) t.ok(lines.includes(w), `caught: ${w}`);
  t.ok(lines.some((l) => /^no-cycle: lib\/(a|b)\.ts → /.test(l)), 'caught: the module cycle lib/a.ts ↔ lib/b.ts');
  t.ok(
    lines.some((l) => l.startsWith('no-folder-cycle: control-plane/dispatch → control-plane/grpc')),
    'caught: the folder cycle control-plane/dispatch ↔ control-plane/grpc, made of type-only imports',
  );
  const allowed = ['control-plane/server.ts → autoscaler/index.ts', 'control-plane/server.ts → autoscaler/ports.ts', 'control-plane/server.ts → proto/gen/x.ts', 'runner/agent.ts → lib/a.ts', 'cli/main.ts → lib/a.ts', 'dashboard/src/main.ts → dashboard/src/page.ts'];
  for (const a of allowed) t.notOk(lines.some((l) => l.includes(`: ${a}`)), `allowed: ${a}`);
  t.ok(lines.length >= want.length + 2, `and found them all:\n${lines.join('\n')}`);
});
