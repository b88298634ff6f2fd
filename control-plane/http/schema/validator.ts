import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import type { TSchema } from '@sinclair/typebox';
import { badRequest } from '../../errors.ts';
import { putOwn } from '../../../lib/record.ts';

/**
 * Request validation from the API's schemas (schema/kit.ts), with Ajv: one compiled
 * validator per schema, the first failure turned into a message that names the field as
 * the client wrote it (`tasks[2].priority`), the limit and the value.
 */

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** An Ajv instance that knows Gantry's keywords; `strict` refuses unknown ones (so a typo in a schema fails). */
export function newAjv(): Ajv2020 {
  const ajv = new Ajv2020({ allErrors: false, verbose: true, strict: true, allowUnionTypes: true, validateFormats: true });
  ajv.addKeyword({
    keyword: 'x-max-bytes',
    type: 'string',
    schemaType: 'number',
    validate: (max: number, data: string) => Buffer.byteLength(data, 'utf8') <= max,
  });
  for (const keyword of ['x-describe', 'x-message', 'x-required', 'x-what']) ajv.addKeyword({ keyword });
  ajv.addFormat('date-time', RFC3339);
  return ajv;
}

const ajv = newAjv();
const compiled = new WeakMap<object, ValidateFunction>();

function compile(schema: TSchema): ValidateFunction {
  let v = compiled.get(schema);
  if (!v) {
    v = ajv.compile(schema);
    compiled.set(schema, v);
  }
  return v;
}

type Schema = Record<string, unknown>;

const typesOf = (s: Schema): string[] => (Array.isArray(s.type) ? (s.type as string[]) : typeof s.type === 'string' ? [s.type] : []);

/**
 * Reads digit strings as integers where the schema wants an integer (query parameters are
 * strings; IronWorker clients send either in bodies). Returns a copy; nothing else changes.
 */
export function normalize(schema: Schema, data: unknown): unknown {
  if (typeof data === 'string') {
    return typesOf(schema).includes('integer') && /^\s*-?\d{1,16}\s*$/.test(data) ? Number(data.trim()) : data;
  }
  if (Array.isArray(data)) {
    const items = schema.items as Schema | undefined;
    return items ? data.map((x) => normalize(items, x)) : data;
  }
  if (typeof data === 'object' && data !== null) {
    const props = (schema.properties ?? {}) as Record<string, Schema>;
    const extra = typeof schema.additionalProperties === 'object' ? (schema.additionalProperties as Schema) : undefined;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(data)) {
      const s = Object.hasOwn(props, k) ? props[k] : extra;
      putOwn(out, k, s ? normalize(s, v) : v);
    }
    return out;
  }
  return data;
}

/** `/tasks/0/priority` → `tasks[0].priority` (with `root` before it, if any). */
export function fieldName(pointer: string, root = ''): string {
  let out = root;
  for (const raw of pointer.split('/').slice(1)) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(key)) out += `[${key}]`;
    else if (/^[A-Za-z_][\w-]*$/.test(key)) out += out === '' ? key : `.${key}`;
    else out += `[${JSON.stringify(key)}]`;
  }
  return out;
}

const shown = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v) : JSON.stringify(v));

function fill(template: string, vars: Record<string, unknown>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => (k in vars ? String(vars[k]) : m));
}

/** The message of one Ajv error, in the API's wording. */
export function describeError(e: ErrorObject, root = ''): string {
  const s = (e.parentSchema ?? {}) as Schema;
  const field = fieldName(e.instancePath, root);
  const name = field || 'the request body';
  const custom = (s['x-message'] as Record<string, string> | undefined)?.[e.keyword];
  const describe = s['x-describe'] as string | undefined;
  const vars = { field: name, value: shown(e.data), limit: '', count: Array.isArray(e.data) ? e.data.length : typeof e.data === 'object' && e.data !== null ? Object.keys(e.data).length : '' };
  // A failed `propertyNames` reports the key's own failure first, with the key beside it.
  const key = (e as ErrorObject & { propertyName?: string }).propertyName;
  if (key !== undefined) return `${name}: ${JSON.stringify(key)} is not ${describe ?? 'an allowed name'}`;
  switch (e.keyword) {
    case 'required': {
      const p = (e.params as { missingProperty: string }).missingProperty;
      const child = fieldName(`${e.instancePath}/${p.replace(/~/g, '~0').replace(/\//g, '~1')}`, root);
      const hint = ((s.properties as Record<string, Schema> | undefined)?.[p]?.['x-required'] as string | undefined) ?? '';
      return `${child} is required${hint ? `: ${hint}` : ''}`;
    }
    case 'additionalProperties': {
      const p = (e.params as { additionalProperty: string }).additionalProperty;
      const known = Object.entries((s.properties ?? {}) as Record<string, Schema>)
        .filter(([, v]) => v.readOnly !== true)
        .map(([k]) => k);
      const what = (s['x-what'] as string | undefined) ?? 'known';
      return `${field ? `${field}.` : ''}${p} is not a ${what} field (known: ${known.join(', ')})`;
    }
    case 'propertyNames': {
      const p = (e.params as { propertyName: string }).propertyName;
      const d = ((s.propertyNames as Schema | undefined)?.['x-describe'] as string | undefined) ?? 'an allowed name';
      return `${name}: ${JSON.stringify(p)} is not ${d}`;
    }
  }
  if (custom) return fill(custom, { ...vars, limit: (e.params as { limit?: unknown }).limit ?? '' });
  switch (e.keyword) {
    case 'type': {
      const types = typesOf(s).filter((t) => t !== 'null');
      const what = types.length === 1 && types[0] === 'string' ? 'a string' : (describe ?? `of type ${types.join(' or ')}`);
      return `${name} must be ${what}`;
    }
    case 'minimum':
    case 'maximum':
      return `${name} must be ${describe ?? `a number ${e.message}`}, got ${shown(e.data)}`;
    case 'x-max-bytes':
      return `${name} must be at most ${s['x-max-bytes']} bytes, got ${Buffer.byteLength(String(e.data), 'utf8')}`;
    case 'maxLength':
      // Beside x-max-bytes, maxLength only documents; the limit is in bytes.
      if (typeof s['x-max-bytes'] === 'number' && Buffer.byteLength(String(e.data), 'utf8') > (s['x-max-bytes'] as number)) {
        return `${name} must be at most ${s['x-max-bytes']} bytes, got ${Buffer.byteLength(String(e.data), 'utf8')}`;
      }
      return `${name} must be at most ${s.maxLength} characters, got ${[...String(e.data)].length}`;
    case 'minLength':
      return s.minLength === 1 ? `${name} is required` : `${name} must be at least ${s.minLength} characters`;
    case 'maxItems':
      return `${name} must hold at most ${s.maxItems} entries, got ${vars.count}`;
    case 'minItems':
      return `${name} must hold at least ${s.minItems} entries`;
    case 'maxProperties':
      return `${name} must hold at most ${s.maxProperties} entries, got ${Object.keys(e.data as object).length}`;
    case 'pattern':
    case 'format':
    case 'enum':
    case 'const':
      return `${name} must be ${describe ?? e.message}, got ${shown(e.data)}`;
    default:
      return `${name} ${e.message ?? 'is not valid'}`;
  }
}

/**
 * Validates `data` (normalized first) against `schema`: returns the normalized value, or
 * throws a 400 naming the first problem. `root` names where the value sits (e.g. `data`).
 */
export function check<T = unknown>(schema: TSchema, data: unknown, root = ''): T {
  const value = normalize(schema as Schema, data);
  const v = compile(schema);
  if (!v(value)) throw badRequest(describeError(v.errors![0]!, root));
  return value as T;
}
