import { checkReceiverUrl } from '../../lib/egress.ts';
import { badRequest } from '../errors.ts';
import { checkEmailAddress } from '../outbox/mailer.ts';
import { HOOK_EVENTS, type HookEvent, type HookLists, type Hooks } from '../store/hooks.ts';
import type { ApiDeps } from './state.ts';

/** A kind's lists as the schema (schema/hooks.ts) lets them through: strings, at most MAX_RECEIVERS each. */
type ListsInput = Partial<Record<HookEvent, (string | null)[] | null>>;
/** The two fields of a code package, a task or a schedule. */
export interface HooksInput {
  webhooks?: ListsInput | null;
  notify?: ListsInput | null;
}

/**
 * Checks what the schema cannot know of a request's `webhooks` and `notify`, once per request
 * however many tasks it queues: each URL against the egress policy (http or https only; no
 * loopback, private, link-local or metadata address unless the operator allowed it; DNS
 * names are judged again at every send), each address's form, an SMTP server for e-mails,
 * a signing secret for webhooks. A 400 names the field. Duplicates are dropped.
 */
export class HooksChecker {
  private secret: boolean | undefined;

  constructor(
    private readonly deps: ApiDeps,
    private readonly projectId: string,
  ) {}

  /** The kinds given (null and absent: not given, so inherited). */
  async accept(input: HooksInput, prefix: string): Promise<Hooks> {
    const out: Hooks = {};
    const { egress, smtp } = this.deps.config.deliveries;
    if (input.webhooks) {
      out.webhooks = this.lists(input.webhooks, `${prefix}webhooks`, (url) => {
        const c = checkReceiverUrl(url, egress);
        return c.ok ? undefined : c.reason;
      });
      if (HOOK_EVENTS.some((e) => out.webhooks![e]?.length) && !(await this.hasSecret())) {
        throw badRequest(
          `${prefix}webhooks: the project has no signing secret yet, so receivers could not verify deliveries; POST /2/projects/${this.projectId}/webhook_secret makes one (shown once)`,
        );
      }
    }
    if (input.notify) {
      out.notify = this.lists(input.notify, `${prefix}notify`, checkEmailAddress);
      if (HOOK_EVENTS.some((e) => out.notify![e]?.length) && !smtp) {
        throw badRequest(`${prefix}notify: e-mail notifications need an SMTP server, and this installation has none (the operator sets GANTRY_SMTP_HOST); use webhooks instead`);
      }
    }
    return out;
  }

  private lists(l: ListsInput, field: string, problem: (s: string) => string | undefined): HookLists {
    const out: HookLists = {};
    for (const e of HOOK_EVENTS) {
      const items = l[e];
      if (!items) continue;
      items.forEach((s, i) => {
        const p = typeof s === 'string' ? problem(s) : 'must be a string';
        if (p) throw badRequest(`${field}.${e}[${i}]: ${p}`);
      });
      out[e] = [...new Set(items as string[])];
    }
    return out;
  }

  private async hasSecret(): Promise<boolean> {
    return (this.secret ??= await this.deps.store.deliveries.hasSigningSecret(this.projectId));
  }
}
