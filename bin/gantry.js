#!/usr/bin/env node
// The `gantry` command: `gantry runner` is the runner agent (`runner list` and `runner drain`
// are admin commands); `gantry` alone, `start`,
// `migrate` and the admin commands are the control plane's command; everything else (login,
// the iron worker verbs, the lists, --help, and words neither knows) is the command line in
// cli/, which loads nothing of the control plane. In a built install (`npm run build`, the
// npm package, the Docker images) it runs the compiled JavaScript in dist/ with plain node;
// in a checkout without a build it runs the TypeScript through tsx's loader (a development
// dependency).
import fs from 'node:fs';

/** The first words of the control plane's own commands (control-plane/admin.ts); no word at all is `start`. */
const SERVER = new Set(['start', 'migrate', 'user', 'project', 'token', 'cluster', 'status']);

/** `gantry runner <word>`: the admin commands on runners (the agent itself takes no words). */
const RUNNER_ADMIN = new Set(['list', 'drain']);

const first = process.argv[2];
let entry = 'cli/main';
if (first === 'runner' && RUNNER_ADMIN.has(process.argv[3] ?? '')) {
  entry = 'control-plane/main';
} else if (first === 'runner') {
  process.argv.splice(2, 1);
  entry = 'runner/main';
} else if (first === undefined || SERVER.has(first)) {
  entry = 'control-plane/main';
} else if (first === 'help' && process.argv[3] === 'admin') {
  // The admin commands' full usage is the control plane's.
  process.argv.splice(2, 2, '--help');
  entry = 'control-plane/main';
}
const built = new URL(`../dist/${entry}.js`, import.meta.url);
if (fs.existsSync(built)) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL(`../${entry}.ts`, import.meta.url).href);
}
