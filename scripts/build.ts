/**
 * The production build: `npm run build [-- --out DIR]` (default dist/). Compiles the programs
 * with tsc (tsconfig.build.json: `.ts` imports rewritten to `.js`) and copies beside the
 * output the files they read at run time: the SQL statement files and migrations
 * (control-plane/store/sql/, control-plane/store/migrations/), the default cloud-config
 * template, and a package.json that says the output is ES modules and carries the version
 * (control-plane/http/schema/openapi.ts reads `../../../package.json`). The web dashboard is
 * built (vite build dashboard, always: no stamp as in scripts/dashboard.sh) and its files copied to
 * `dashboard/dist/` in the output, where control-plane/http/dashboard.ts looks for them
 * (skipped where the sources are absent: the runner's image does not copy them).
 * bin/gantry.js runs the output with plain node when it exists.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const at = process.argv.indexOf('--out');
const out = path.resolve(root, at >= 0 ? process.argv[at + 1] ?? '' : 'dist');
if (out === root || !path.basename(out)) throw new Error(`refusing to build into ${out}`);

/** Read at run time by the compiled code (fs.readFileSync next to the module). */
const ASSETS: readonly { dir: string; ext: string }[] = [
  { dir: 'control-plane/store/sql', ext: '.sql' },
  { dir: 'control-plane/store/migrations', ext: '.sql' },
  { dir: 'cloud-config', ext: '.yaml' },
];

fs.rmSync(out, { recursive: true, force: true });
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json'), '--outDir', out], { stdio: 'inherit' });

let copied = 0;
for (const { dir, ext } of ASSETS) {
  fs.mkdirSync(path.join(out, dir), { recursive: true });
  for (const f of fs.readdirSync(path.join(root, dir))) {
    if (!f.endsWith(ext)) continue;
    fs.copyFileSync(path.join(root, dir, f), path.join(out, dir, f));
    copied++;
  }
}
// A build context without the dashboard's sources (the runner's image) builds without it.
const dashboard = fs.existsSync(path.join(root, 'dashboard', 'index.html'));
if (dashboard) {
  // Vite itself, through node (an image's build stage may have no bash for scripts/dashboard.sh).
  execFileSync(process.execPath, [path.join(root, 'node_modules', 'vite', 'bin', 'vite.js'), 'build', path.join(root, 'dashboard')], { stdio: 'inherit' });
  fs.cpSync(path.join(root, 'dashboard', 'dist'), path.join(out, 'dashboard', 'dist'), {
    recursive: true,
    filter: (src) => path.basename(src) !== '.source-hash',
  });
}
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { name: string; version: string };
fs.writeFileSync(path.join(out, 'package.json'), `${JSON.stringify({ name: `${pkg.name}-dist`, version: pkg.version, private: true, type: 'module' }, null, 2)}\n`);
console.log(`[build] ${path.relative(root, out) || out}: compiled, ${copied} run-time files copied${dashboard ? ', the dashboard built' : ', no dashboard/ here'}`);
