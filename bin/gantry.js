#!/usr/bin/env node
// Runs the TypeScript entry point through tsx's loader, so `gantry` works from a checkout.
import { register } from 'tsx/esm/api';
register();
await import('../control-plane/main.ts');
