import { Type } from '@sinclair/typebox';
import { List, Obj, Str } from './kit.ts';

/** Receivers one list (a kind's succeeds, fails or finishes) may name. */
export const MAX_RECEIVERS = 10;
export const MAX_URL = 2048;
export const MAX_ADDRESS = 254;

const lists = (item: ReturnType<typeof Str>, what: string, description: string) =>
  Obj(
    {
      succeeds: List(item, { max: MAX_RECEIVERS, description: `${what} told when the task completes` }),
      fails: List(item, { max: MAX_RECEIVERS, description: `${what} told when it ends in error, timeout or killed` }),
      finishes: List(item, { max: MAX_RECEIVERS, description: `${what} told whatever its final status, cancelled too` }),
    },
    { additional: false, nullable: true, description },
  );

/**
 * `webhooks` and `notify` of a code package, a task or a schedule (store/hooks.ts). Absent
 * or null: inherited (a task's and a schedule's from the package, a package's from its last
 * upload); `{}` sends none.
 */
export const HookFields = {
  webhooks: lists(
    Str(MAX_URL, { minLength: 1, describe: `an http or https URL of at most ${MAX_URL} characters` }),
    'URLs',
    'outcome webhooks: a signed POST of the task (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature) to each URL, retried until it answers 2xx',
  ),
  notify: lists(
    Str(MAX_ADDRESS, { minLength: 3, describe: `an e-mail address of at most ${MAX_ADDRESS} characters` }),
    'addresses',
    "outcome e-mails to each address, through the operator's SMTP server (GANTRY_SMTP_HOST); refused when none is configured",
  ),
};

const shown = (what: string) =>
  Type.Object(
    { succeeds: Type.Array(Type.String()), fails: Type.Array(Type.String()), finishes: Type.Array(Type.String()) },
    { additionalProperties: false, description: what },
  );
/** The two as replies show them, all three lists each, when set. */
export const HookReplyProps = {
  webhooks: shown('the URLs told of the outcome'),
  notify: shown('the addresses e-mailed the outcome'),
};
