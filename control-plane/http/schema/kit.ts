import { Type, type Static, type TSchema } from '@sinclair/typebox';

/**
 * Building blocks of the API's schemas. Each is plain JSON Schema (2020-12, as OpenAPI 3.1
 * uses), so one definition validates requests (schema/validator.ts) and documents them
 * (schema/openapi.ts). Besides standard keywords they carry Gantry's own, all `x-` so the
 * document stays valid OpenAPI:
 * - `x-max-bytes`: a string's limit in UTF-8 bytes (what the store bounds); `maxLength`
 *   beside it states the same number as an upper bound in characters;
 * - `x-describe`: how a valid value reads in an error message ("an integer from 0 to 2");
 * - `x-required`: what a missing required field's message adds ("the Docker image ...");
 * - `x-message`: a message per failing keyword, with `{field}`, `{limit}`, `{value}` and
 *   `{count}` filled in, where the generic wording would say less than today's API did.
 */

export interface Hints {
  description?: string;
  /** Overrides the generic wording of a failed keyword (see above). */
  message?: Record<string, string>;
  /** Appended to "{field} is required" when this field is required and missing. */
  requiredHint?: string;
}

function hints(h: Hints = {}): Record<string, unknown> {
  return {
    ...(h.description ? { description: h.description } : {}),
    ...(h.message ? { 'x-message': h.message } : {}),
    ...(h.requiredHint ? { 'x-required': h.requiredHint } : {}),
  };
}

type Nullable<T, N extends boolean | undefined> = N extends true ? T | null : T;

/**
 * An integer from `min` to `max`. Digit strings are read as integers (IronWorker clients
 * send either; query parameters are always strings).
 */
export function Int<N extends boolean | undefined = undefined>(min: number, max: number, o: Hints & { nullable?: N; default?: number; multipleOf?: number } = {}) {
  return Type.Unsafe<Nullable<number, N>>({
    type: o.nullable ? ['integer', 'null'] : 'integer',
    minimum: min,
    maximum: max,
    ...(o.multipleOf !== undefined ? { multipleOf: o.multipleOf } : {}),
    ...(o.default !== undefined ? { default: o.default } : {}),
    'x-describe': `an integer from ${min} to ${max}`,
    ...hints(o),
  });
}

/** A string of at most `maxBytes` UTF-8 bytes, optionally matching `pattern` (described by `describe`). */
export function Str<N extends boolean | undefined = undefined>(
  maxBytes: number,
  o: Hints & { nullable?: N; pattern?: string; describe?: string; minLength?: number; format?: string } = {},
) {
  return Type.Unsafe<Nullable<string, N>>({
    type: o.nullable ? ['string', 'null'] : 'string',
    maxLength: maxBytes,
    'x-max-bytes': maxBytes,
    ...(o.minLength !== undefined ? { minLength: o.minLength } : {}),
    ...(o.pattern ? { pattern: o.pattern } : {}),
    ...(o.format ? { format: o.format } : {}),
    'x-describe': o.describe ?? 'a string',
    ...hints(o),
  });
}

/** A number (not only an integer) from `min` to `max`. */
export function Num(min: number, max: number, o: Hints = {}) {
  return Type.Unsafe<number>({ type: 'number', minimum: min, maximum: max, 'x-describe': `a number from ${min} to ${max}`, ...hints(o) });
}

export function Bool<N extends boolean | undefined = undefined>(o: Hints & { nullable?: N } = {}) {
  return Type.Unsafe<Nullable<boolean, N>>({ type: o.nullable ? ['boolean', 'null'] : 'boolean', 'x-describe': 'true or false', ...hints(o) });
}

const RFC3339_OR_SECONDS = '^$|^\\d+$|^\\d{4}-\\d{2}-\\d{2}([Tt ]\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?([Zz]|[+-]\\d{2}:?\\d{2})?)?$';

/** A time as RFC 3339 text or as seconds since the epoch (number or digits); '' or null is absent. */
export function Time(o: Hints = {}) {
  return Type.Unsafe<string | number | null>({
    type: ['string', 'number', 'null'],
    pattern: RFC3339_OR_SECONDS,
    maxLength: 64,
    'x-describe': 'an RFC 3339 time (e.g. 2026-01-02T15:04:05Z) or seconds since the epoch',
    ...hints(o),
  });
}

/** A JSON object with these properties; `additional`: whether unknown keys are accepted (and ignored). */
export function Obj<P extends Record<string, TSchema>>(
  props: P,
  o: Hints & { required?: (keyof P & string)[]; additional?: boolean; what?: string; nullable?: boolean } = {},
) {
  return Type.Unsafe<{ [K in keyof P]?: Static<P[K]> }>({
    type: o.nullable ? ['object', 'null'] : 'object',
    properties: props,
    ...(o.required?.length ? { required: o.required } : {}),
    additionalProperties: o.additional ?? true,
    'x-describe': 'an object',
    ...(o.what ? { 'x-what': o.what } : {}),
    ...hints(o),
  });
}

/** A JSON object of string keys matching `keyPattern` and values of one schema. */
export function Dict<V extends TSchema>(value: V, o: Hints & { maxProperties?: number; keyPattern?: string; keyDescribe?: string; nullable?: boolean } = {}) {
  return Type.Unsafe<Record<string, Static<V>> | null>({
    type: o.nullable ? ['object', 'null'] : 'object',
    additionalProperties: value,
    ...(o.maxProperties !== undefined ? { maxProperties: o.maxProperties } : {}),
    ...(o.keyPattern ? { propertyNames: { pattern: o.keyPattern, ...(o.keyDescribe ? { 'x-describe': o.keyDescribe } : {}) } } : {}),
    'x-describe': 'an object',
    ...hints(o),
  });
}

/** An array of `min` to `max` items of one schema. */
export function List<I extends TSchema>(item: I, o: Hints & { min?: number; max?: number; nullable?: boolean; describe?: string } = {}) {
  return Type.Unsafe<Static<I>[] | null>({
    type: o.nullable ? ['array', 'null'] : 'array',
    items: item,
    ...(o.min !== undefined ? { minItems: o.min } : {}),
    ...(o.max !== undefined ? { maxItems: o.max } : {}),
    'x-describe': o.describe ?? 'an array',
    ...hints(o),
  });
}

/** One of fixed strings. */
export function OneOf<const V extends string>(values: readonly V[], o: Hints & { describe?: string } = {}) {
  return Type.Unsafe<V>({ type: 'string', enum: values, 'x-describe': o.describe ?? `one of ${values.join(', ')}`, ...hints(o) });
}


// ---------------------------------------------------------------------------- shared pieces

/** Gantry's ids: 24 hex characters. */
export const ID_PATTERN = '^[0-9a-f]{24}$';
export const Id = (description = 'an id (24 hex characters)') => Type.Unsafe<string>({ type: 'string', pattern: ID_PATTERN, description });
/** RFC 3339 time as the API writes it. */
export const DateTime = (description?: string) => Type.Unsafe<string>({ type: 'string', format: 'date-time', ...(description ? { description } : {}) });
/** Every error reply: `{"msg": "..."}`, exactly. */
export const ErrorBody = Type.Object({ msg: Type.String({ minLength: 1 }) }, { additionalProperties: false, title: 'Error' });
/** Replies that only confirm: `{"msg": "..."}` (IronWorker's style). */
export const MsgBody = Type.Object({ msg: Type.String() }, { additionalProperties: false });

/** A reply schema that requires `props` and allows nothing else (so the document lists every field the API writes). */
export function Reply<P extends Record<string, TSchema>>(props: P, optional: (keyof P & string)[] = [], o: { title?: string; description?: string } = {}) {
  const shaped: Record<string, TSchema> = {};
  for (const [k, v] of Object.entries(props)) shaped[k] = optional.includes(k) ? Type.Optional(v) : v;
  return Type.Object(shaped, { additionalProperties: false, ...o });
}
