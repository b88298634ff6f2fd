import fs from 'node:fs';
import type { TSchema } from '@sinclair/typebox';
import { ErrorBody } from './kit.ts';
import type { Endpoint } from './endpoint.ts';
import { ENDPOINTS } from './index.ts';

/**
 * The OpenAPI 3.1 document of the API, made from the same endpoint declarations that
 * validate requests. Served at /2/openapi.json; docs/openapi.json is this document as of
 * the commit (`npm run openapi` writes it, and a test fails when it is stale).
 */

type Json = Record<string, unknown>;

/** A schema as plain JSON (TypeBox's symbol keys dropped). */
const plain = (s: TSchema): Json => JSON.parse(JSON.stringify(s)) as Json;

/** `/2/projects/:projectId/tasks` → `/2/projects/{projectId}/tasks`. */
export const openApiPath = (routerPath: string) => routerPath.replace(/:(\w+)/g, '{$1}');

function parameters(e: Endpoint): Json[] {
  const out: Json[] = [];
  for (const [name, schema] of Object.entries(e.params ?? {})) {
    out.push({ name, in: 'path', required: true, schema: plain(schema), description: (schema as Json).description ?? name });
  }
  const q = e.query as Json | undefined;
  const required = new Set((q?.required as string[] | undefined) ?? []);
  for (const [name, schema] of Object.entries((q?.properties ?? {}) as Record<string, TSchema>)) {
    if (name === 'oauth') continue; // a security scheme
    const s = plain(schema);
    out.push({ name, in: 'query', ...(required.has(name) ? { required: true } : {}), ...(s.description ? { description: s.description } : {}), schema: s });
  }
  return out;
}

function requestBody(e: Endpoint): Json | undefined {
  const b = e.body;
  if (!b) return undefined;
  if (b.kind === 'json') {
    return { required: b.required ?? false, content: { 'application/json': { schema: plain(b.schema) } } };
  }
  if (b.kind === 'multipart') {
    return {
      required: true,
      description: b.description,
      content: {
        'multipart/form-data': {
          schema: {
            type: 'object',
            required: ['data'],
            properties: { data: plain(b.data), file: { type: 'string', contentMediaType: 'application/zip', description: 'the zip archive' } },
          },
          encoding: { data: { contentType: 'application/json' } },
        },
      },
    };
  }
  return { required: false, description: b.description, content: { '*/*': { schema: { type: 'string' } } } };
}

function responses(e: Endpoint): Json {
  const out: Json = {};
  for (const [status, r] of Object.entries(e.responses)) {
    const content = r.schema
      ? { 'application/json': { schema: plain(r.schema) } }
      : r.text
        ? Object.fromEntries([r.text, ...(r.alsoText ?? [])].map((m) => [m, { schema: { type: 'string' } }]))
        : undefined;
    out[status] = { description: r.description, ...(content ? { content } : {}) };
  }
  out.default = {
    description: 'any other error (405, 413, 429, 503 with Retry-After when the database is unreachable, 500): always {"msg"}',
    content: { 'application/json': { schema: plain(ErrorBody) } },
  };
  return out;
}

const SECURITY = {
  none: [],
  user: [{ oauthHeader: [] }, { oauthQuery: [] }],
  project: [{ oauthHeader: [] }, { oauthQuery: [] }],
  runner: [{ runnerToken: [], clusterId: [] }],
};

const PACKAGE_VERSION = (JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** The document; its version is the package's. */
export function openApiDocument(version = PACKAGE_VERSION): Json {
  const paths: Record<string, Json> = {};
  for (const e of ENDPOINTS) {
    const op: Json = {
      operationId: e.id,
      summary: e.summary,
      ...(e.description ? { description: e.description } : {}),
      tags: [e.tag],
      security: SECURITY[e.auth],
    };
    const params = parameters(e);
    if (params.length > 0) op.parameters = params;
    const body = requestBody(e);
    if (body) op.requestBody = body;
    op.responses = responses(e);
    (paths[openApiPath(e.path)] ??= {})[e.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Gantry API',
      version,
      description:
        'The IronWorker v2 REST API as Gantry serves it, plus its own endpoints. Errors are always {"msg": "..."}; a client error (4xx) names the field and the limit and changes nothing.',
    },
    jsonSchemaDialect: 'https://spec.openapis.org/oas/3.1/dialect/base',
    servers: [{ url: '/' }],
    tags: [
      { name: 'projects', description: 'The projects a token can use' },
      { name: 'codes', description: 'Code packages: Docker images, optionally with a zip' },
      { name: 'tasks', description: 'Tasks: queue, inspect, cancel, retry' },
      { name: 'schedules', description: 'Schedules that queue tasks over time' },
      { name: 'queue', description: 'Queue services: the recorded queue load, the queue now, queueing and requeueing jobs (tasks)' },
      { name: 'clusters', description: 'Clusters of runners, with their autoscaling and container settings' },
      { name: 'workers', description: "The fleet: runners and third-party workers, their machine stats over time (ClearML's workers service)" },
      { name: 'operations', description: 'Health, readiness, metrics and this document' },
    ],
    components: {
      securitySchemes: {
        oauthHeader: { type: 'apiKey', in: 'header', name: 'Authorization', description: 'the value "OAuth <token>"' },
        oauthQuery: { type: 'apiKey', in: 'query', name: 'oauth' },
        runnerToken: { type: 'apiKey', in: 'header', name: 'Authorization', description: 'the value "Bearer <cluster runner token>" (a third-party worker reporting into its cluster)' },
        clusterId: { type: 'apiKey', in: 'header', name: 'X-Gantry-Cluster-Id', description: 'the id of the cluster whose runner token is sent' },
      },
    },
    paths,
  };
}
