import { Type } from '@sinclair/typebox';
import { AuthQuery } from './common.ts';
import { endpoint } from './endpoint.ts';
import { ErrorBody } from './kit.ts';

/** Health, readiness, metrics, stacks and this document itself. */
export const systemEndpoints = [
  endpoint({
    id: 'healthz',
    method: 'GET',
    path: '/healthz',
    tag: 'operations',
    summary: 'Liveness: the process serves HTTP',
    auth: 'none',
    responses: { 200: { description: 'alive', schema: Type.Object({ status: Type.Literal('ok') }, { additionalProperties: false }) } },
  }),
  endpoint({
    id: 'readyz',
    method: 'GET',
    path: '/readyz',
    tag: 'operations',
    summary: 'Readiness: PostgreSQL reachable, the coordinator healthy with a known leader, not draining',
    auth: 'none',
    responses: Object.fromEntries(
      [200, 503].map((status) => [
        status,
        {
          description: status === 200 ? 'ready' : 'not ready: the body says which part failed',
          schema: Type.Object(
            {
              ready: Type.Boolean(),
              database: Type.Union([Type.Literal('ok'), Type.Literal('unreachable')]),
              coordinator: Type.Optional(
                Type.Object(
                  { kind: Type.String(), status: Type.Union([Type.Literal('ok'), Type.Literal('unreachable')]) },
                  { additionalProperties: false },
                ),
              ),
              leader: Type.Optional(Type.Union([Type.String(), Type.Null()])),
              is_leader: Type.Optional(Type.Boolean()),
              draining: Type.Optional(Type.Literal(true)),
            },
            { additionalProperties: false },
          ),
        },
      ]),
    ),
  }),
  endpoint({
    id: 'metrics',
    method: 'GET',
    path: '/metrics',
    tag: 'operations',
    summary: 'Prometheus metrics (text exposition format)',
    auth: 'none',
    responses: { 200: { description: 'the metrics', text: 'text/plain' }, 404: { description: 'metrics are not enabled', schema: ErrorBody } },
  }),
  endpoint({
    id: 'openapi',
    method: 'GET',
    path: '/2/openapi.json',
    tag: 'operations',
    summary: 'This document (OpenAPI 3.1)',
    auth: 'none',
    responses: { 200: { description: 'the OpenAPI document', schema: Type.Object({ openapi: Type.String() }) } },
  }),
  endpoint({
    id: 'listStacks',
    method: 'GET',
    path: '/2/stacks',
    tag: 'codes',
    summary: 'Stacks are deprecated: Gantry runs Docker images, so the list is empty',
    auth: 'user',
    query: AuthQuery,
    responses: {
      200: { description: 'an empty list', schema: Type.Array(Type.String(), { maxItems: 0 }) },
      401: { description: 'no valid OAuth token', schema: ErrorBody },
    },
  }),
];
