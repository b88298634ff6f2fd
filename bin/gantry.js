#!/usr/bin/env node
// The `gantry` command: `gantry runner` is the runner agent, everything else the control
// plane's command. In a built install (`npm run build`, the npm package, the Docker images)
// it runs the compiled JavaScript in dist/ with plain node; in a checkout without a build it
// runs the TypeScript through tsx's loader (a development dependency).
import fs from 'node:fs';

const runner = process.argv[2] === 'runner';
if (runner) process.argv.splice(2, 1);
const entry = runner ? 'runner/main' : 'control-plane/main';
const built = new URL(`../dist/${entry}.js`, import.meta.url);
if (fs.existsSync(built)) {
  await import(built.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL(`../${entry}.ts`, import.meta.url).href);
}
