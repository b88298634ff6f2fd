/**
 * Gantry's import rules (docs/architecture.md, "8 Import rules"), in dependency-cruiser's configuration
 * format. test/repo/import-rules.test.ts (also `npm run lint:imports`) applies them to the
 * repository through dependency-cruiser's API; its CLI refuses Node 20.
 *
 * - `lib/` and `proto/` import nothing of ours (each may import itself; `proto/gen/` is
 *   generated from `proto/gantry/`).
 * - `cloud-config/` is a library: it imports `lib/` and itself.
 * - A program (`control-plane/`, `runner/`, `autoscaler/`) imports its own folder, `lib/`,
 *   `proto/` and `cloud-config/`, never a sibling program. The one edge between programs: the
 *   control plane runs the autoscaler through the interface the autoscaler declares, so it
 *   imports `autoscaler/index.ts`, `ports.ts` and `types.ts` and nothing else of it.
 * - `cli/` is the command line, a client of the public REST API only: it imports itself and
 *   `lib/`, never a program (`control-plane/`, `runner/`, `autoscaler/`), so it loads quickly
 *   and cannot reach the database or a private endpoint.
 * - `dashboard/` is the web dashboard, browser code and a client of the public REST API only:
 *   it imports itself (and npm packages), nothing of the server's folders (not even `lib/`,
 *   which is Node code).
 * - No import cycle, between modules or between folders.
 *
 * Type-only imports count everywhere. A type-only edge between programs still makes one
 * program's code depend on the other's, which is what the rules exist to prevent; and a
 * type-only cycle still means neither side can be read or changed without the other (the
 * loops the house review found were of this kind), even though the compiled JavaScript
 * would load.
 */
const OURS = 'local';

/** A program may import these (and npm packages and Node's own modules). */
function program(name, allowed) {
  return {
    name: `${name}-imports`,
    comment: `${name}/ imports only ${allowed.description}`,
    severity: 'error',
    from: { path: `^${name}/` },
    to: { dependencyTypes: [OURS], pathNot: allowed.pattern },
  };
}

module.exports = {
  forbidden: [
    {
      name: 'lib-imports-nothing-of-ours',
      comment: 'lib/ holds the helpers every program needs: it imports only lib/',
      severity: 'error',
      from: { path: '^lib/' },
      to: { dependencyTypes: [OURS], pathNot: '^lib/' },
    },
    {
      name: 'proto-imports-nothing-of-ours',
      comment: 'proto/ is the runner protocol (proto/gen is generated): it imports only proto/',
      severity: 'error',
      from: { path: '^proto/' },
      to: { dependencyTypes: [OURS], pathNot: '^proto/' },
    },
    {
      name: 'cloud-config-is-a-library',
      comment: 'cloud-config/ is a library the programs use: it imports only lib/ and itself',
      severity: 'error',
      from: { path: '^cloud-config/' },
      to: { dependencyTypes: [OURS], pathNot: '^(cloud-config|lib)/' },
    },
    program('control-plane', {
      description: 'itself, lib/, proto/, cloud-config/ and the autoscaler\'s interface (autoscaler/index.ts, ports.ts, types.ts)',
      pattern: '^(control-plane|lib|proto|cloud-config)/|^autoscaler/(index|ports|types)\\.ts$',
    }),
    program('autoscaler', { description: 'itself, lib/, proto/ and cloud-config/', pattern: '^(autoscaler|lib|proto|cloud-config)/' }),
    program('runner', { description: 'itself, lib/, proto/ and cloud-config/', pattern: '^(runner|lib|proto|cloud-config)/' }),
    program('cli', { description: 'itself and lib/ (a client of the public API: no program, no proto/)', pattern: '^(cli|lib)/' }),
    program('dashboard', { description: 'itself (browser code, a client of the public API: nothing of the server)', pattern: '^dashboard/' }),
    {
      name: 'no-cycle',
      comment: 'modules that import each other, directly or through others (type-only imports count)',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'no-folder-cycle',
      comment: 'folders whose modules import each other, directly or through other folders (type-only imports count)',
      severity: 'error',
      scope: 'folder',
      from: {},
      to: { circular: true },
    },
    {
      name: 'resolvable',
      comment: 'an import that does not resolve would escape every rule above',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    // Type-only imports (`import type`, `export type … from`) are edges too: see above.
    tsPreCompilationDeps: true,
    doNotFollow: { path: '(^|/)node_modules/' },
    exclude: { path: '(^|/)node_modules/' },
    // Resolve packages as Node does (package.json "exports"), so `@bufbuild/protobuf/wire` resolves.
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
