/**
 * Writes docs/openapi.json, the API's OpenAPI 3.1 document as the code declares it
 * (control-plane/http/schema/). With --check, fails when the file differs (the test does
 * the same), so the committed document is always the served one.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openApiDocument } from '../control-plane/http/schema/openapi.ts';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const file = path.join(root, 'docs', 'openapi.json');
const text = `${JSON.stringify(openApiDocument(), null, 2)}\n`;
if (process.argv.includes('--check')) {
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== text) {
    console.error('docs/openapi.json is stale: run npm run openapi and commit the result');
    process.exit(1);
  }
  console.log('[openapi] docs/openapi.json is up to date');
} else {
  fs.writeFileSync(file, text);
  console.log(`[openapi] wrote ${path.relative(root, file)} (${Object.keys(openApiDocument().paths as object).length} paths)`);
}
