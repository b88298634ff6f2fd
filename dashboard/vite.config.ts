// The dashboard's build: Preact through @preact/preset-vite, into dashboard/dist (served by the
// control plane at `/`, see control-plane/http/dashboard.ts). No inline script or style is
// emitted, so the page runs under a CSP of 'self' only.
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

export default defineConfig({
  root: import.meta.dirname,
  base: '/',
  plugins: [preact()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsInlineLimit: 0,
    // Vite's module-preload polyfill is a script of its own in the entry: harmless, but not needed by the browsers a dashboard targets.
    modulePreload: { polyfill: false },
    target: 'es2022',
  },
  logLevel: 'warn',
});
