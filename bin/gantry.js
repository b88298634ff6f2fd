#!/usr/bin/env node
// Runs the TypeScript entry points through tsx's loader, so `gantry` works from a checkout:
// `gantry runner` is the runner agent, everything else the control plane's command.
import { register } from 'tsx/esm/api';
register();
if (process.argv[2] === 'runner') {
  process.argv.splice(2, 1);
  await import('../runner/main.ts');
} else {
  await import('../control-plane/main.ts');
}
