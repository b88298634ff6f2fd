import type { ValidateFunction } from 'ajv/dist/2020.js';
import { openApiDocument } from '../../control-plane/http/schema/openapi.ts';
import { newAjv } from '../../control-plane/http/schema/validator.ts';

/**
 * Holds every reply the test client receives against the OpenAPI document the control
 * plane serves, so the document cannot drift from the code: an undeclared status, a field
 * the document does not list, a missing one, or a wrong type fails the test that got it.
 */

type Json = Record<string, any>;

const doc = openApiDocument() as Json;
const ajv = newAjv();
const validators = new Map<object, ValidateFunction>();

interface Route {
  re: RegExp;
  params: number;
  path: string;
  ops: Json;
}

// Literal segments win over parameters (`/tasks/webhook` before `/tasks/{taskId}`).
const routes: Route[] = Object.entries(doc.paths as Json)
  .map(([path, ops]) => ({
    path,
    ops: ops as Json,
    params: (path.match(/\{/g) ?? []).length,
    re: new RegExp(`^${path.replace(/[.]/g, '\\.').replace(/\{\w+\}/g, '[^/]+')}$`),
  }))
  .sort((a, b) => a.params - b.params);

function validatorFor(schema: object): ValidateFunction {
  let v = validators.get(schema);
  if (!v) {
    v = ajv.compile(schema);
    validators.set(schema, v);
  }
  return v;
}

/**
 * What is wrong with a reply by the document, or undefined when it conforms. `body` is
 * the parsed JSON when the reply is JSON.
 */
export function contractProblem(method: string, pathname: string, status: number, contentType: string, body: unknown): string | undefined {
  const where = `${method} ${pathname} → ${status}`;
  // OPTIONS is answered for every route from its Allow list (HTTP's own, no body), and the
  // router matches a path with one trailing slash like the path without it.
  if (method === 'OPTIONS') return status === 200 || status === 404 ? undefined : `${where}: OPTIONS answers 200 with Allow, or 404`;
  const path = pathname.length > 1 && pathname.endsWith('/') ? pathname.slice(0, -1) : pathname;
  const route = routes.find((r) => r.re.test(path));
  const op = route?.ops[method.toLowerCase()] as Json | undefined;
  const declared = op ? (op.responses as Json)[String(status)] : undefined;
  if (!op && status < 400) return `${where}: no such operation in the document, yet it succeeded`;
  if (op && !declared && status < 400) return `${where}: status ${status} is not declared for ${op.operationId}`;
  const response = (declared ?? (op?.responses as Json | undefined)?.default ?? doc.paths['/healthz'].get.responses.default) as Json;
  const content = response.content as Json | undefined;
  if (!content) return undefined;
  if (content['application/json']) {
    if (!/json/.test(contentType)) return `${where}: declared JSON, got ${contentType || 'no content type'}`;
    const v = validatorFor(content['application/json'].schema);
    if (!v(body)) return `${where}: ${ajv.errorsText(v.errors)} in ${JSON.stringify(body).slice(0, 300)}`;
    return undefined;
  }
  const medias = Object.keys(content);
  if (medias.length > 0 && !medias.some((m) => m === '*/*' || contentType.startsWith(m))) return `${where}: declared ${medias.join(' or ')}, got ${contentType}`;
  return undefined;
}
