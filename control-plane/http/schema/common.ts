import { Type, type TSchema } from '@sinclair/typebox';
import { ErrorBody, Id, Int, List, Obj, Str } from './kit.ts';

/** Query parameters every list takes. */
export const Paging = {
  page: Int(0, 100, { description: 'page number, from 0' }),
  per_page: Int(1, 100, { description: 'items per page (default 30)' }),
};

/** `?oauth=` authenticates like `Authorization: OAuth <token>`. */
export const OAuthQuery = { oauth: Str(4096, { description: 'the OAuth token, when not sent in the Authorization header' }) };

export const PagingQuery = Obj({ ...Paging, ...OAuthQuery });
export const AuthQuery = Obj({ ...OAuthQuery });

export const ProjectParams = { projectId: Id('the project id') };

/** IronWorker's status filters come as `1` or `true`; any other value means no filter. */
export const Flag = (description: string) =>
  Type.Unsafe<string | string[]>({ type: ['string', 'array'], items: { type: 'string' }, description: `${description}: 1 or true` });

export const CLUSTER_NAME_PATTERN = '^[A-Za-z0-9_.-]{1,64}$';
/** A cluster by name (or id); '' or absent means `default`. */
export const ClusterRef = (nullable = true) =>
  Str<true>(64, { nullable: nullable as true, pattern: `^$|${CLUSTER_NAME_PATTERN}`, describe: "1 to 64 letters, digits, '.', '_' or '-'" });

/** A request's list of 1 to `max` items (`tasks`, `schedules`, `instance_ids`), with today's messages. */
export const Batch = <I extends TSchema>(item: I, max: number, noun: string, maxNoun = noun) =>
  List(item, {
    min: 1,
    max,
    message: {
      type: `{field} is required: an array of 1 to ${max} ${noun}`,
      minItems: `{field} is required: an array of 1 to ${max} ${noun}`,
      maxItems: `{field} must hold at most ${max} ${maxNoun}, got {count}`,
    },
    requiredHint: `an array of 1 to ${max} ${noun}`,
  });

/** The errors every project endpoint can answer: 400 (naming the field and the limit), 401, and a 404 naming what may be missing. */
export function projectErrors(missing: string) {
  return {
    400: { description: 'invalid input: the message names the field and the limit', schema: ErrorBody },
    401: { description: 'no valid OAuth token', schema: ErrorBody },
    404: { description: `no such ${missing}`, schema: ErrorBody },
  };
}
