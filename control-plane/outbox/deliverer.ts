import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import { checkReceiverUrl } from '../../lib/egress.ts';
import type { DeliverySettings } from '../config.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';
import type { AttemptOutcome, DeliveriesStore, Delivery } from '../store/deliveries.ts';
import type { Task } from '../store/tasks.ts';
import { StoreUnavailableError } from '../errors.ts';
import { Mailer } from './mailer.ts';
import { sendWebhook, signingKey, webhookAgents, type SendResult } from './webhook-send.ts';

/** The channel migration 021's trigger announces new deliveries on (payload: the project). */
export const DELIVERY_CHANNEL = 'gantry_delivery';
/** The most of a receiver's answer a delivery reads; the rest is never taken off the socket. */
const MAX_RESPONSE_BYTES = 4096;
/**
 * Beyond an attempt's own limit (which covers connecting, sending and reading the answer),
 * how long its claim holds before another replica may send it again: a replica that died
 * mid-send is replaced this soon after the attempt would have ended.
 */
const CLAIM_MARGIN_MS = 5000;
/** How long stop() waits for sends in flight before it leaves them to their claims' lapse. */
const STOP_GRACE_MS = 2000;
/** Most results one statement records. */
const RECORD_BATCH = 200;
/** How long a result waits for others to be recorded with it (a busy receiver's come hundreds a second). */
const RECORD_WAIT_MS = 5;
/** How long a replica signs with the project secrets it read (a rotation takes this long to reach it). */
const SECRETS_TTL_MS = 5000;
/** Projects whose secrets are kept read at most. */
const SECRETS_CACHED = 10_000;

type Recorded = Parameters<DeliveriesStore['recordAttempts']>[0][number];

export interface DelivererDeps {
  store: Store;
  settings: DeliverySettings;
  clock: Clock;
  log: Logger;
  metrics?: ControlPlaneMetrics;
  /** The API's base URL, for the task's link in an e-mail. */
  baseUrl: () => string | undefined;
  /** The task as the API shows it (http/present.ts presentTask): the body's `data`. */
  present: (t: Task) => Record<string, unknown>;
}

/**
 * The outbox's sender, on every replica (it needs no leader: rows are claimed, so replicas
 * share them and one that dies leaves its claims to lapse). Woken by the trigger's NOTIFY
 * and by a poll; sends at most `inFlight` at once here and `perProjectInFlight` of one
 * project (the claim counts those of every replica), so a tenant whose receiver hangs
 * holds only its own share. Each attempt is recorded; a failure is retried with jittered
 * exponential back-off until `retryForS` after the outcome, then given up.
 *
 * At least once: a send whose result could not be recorded (the process died, the database
 * went away) is sent again under the same id, which the receiver may use to drop it.
 */
export class Deliverer {
  private readonly sends = new Set<Promise<void>>();
  /** This replica's sends in flight, by project. */
  private readonly sending = new Map<string, number>();
  /** Receivers' connections, kept open between their deliveries. */
  private readonly agents = webhookAgents();
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;
  private unlisten: (() => Promise<void>) | undefined;
  private readonly mailer: Mailer | undefined;
  private readonly unrecorded: { item: Recorded; done: () => void }[] = [];
  private flushing: Promise<void> | undefined;
  private readonly secrets = new Map<string, { keys: Buffer[]; until: number }>();

  constructor(private readonly d: DelivererDeps) {
    this.mailer = d.settings.smtp ? new Mailer(d.settings.smtp) : undefined;
  }

  async start(): Promise<void> {
    this.unlisten = await this.d.store.db.listen(DELIVERY_CHANNEL, () => this.wake(), () => this.wake());
    this.wake();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.unlisten?.().catch(() => undefined);
    const grace = new Promise((res) => setTimeout(res, STOP_GRACE_MS).unref());
    await Promise.race([Promise.allSettled([...this.sends]), grace]);
    this.agents.http.destroy();
    this.agents.https.destroy();
    this.mailer?.close();
  }

  /** Looks for due deliveries now (one round at a time; a wake during a round runs another). */
  wake(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    void this.round().finally(() => {
      this.running = false;
      if (this.again && !this.stopped) {
        this.again = false;
        this.wake();
      }
    });
  }

  private async round(): Promise<void> {
    clearTimeout(this.timer);
    let wait = this.d.settings.pollMs;
    try {
      const room = this.d.settings.inFlight - this.sends.size;
      let full = false;
      if (room > 0) {
        const claimed = await this.d.store.deliveries.claim(room, this.d.settings.perProjectInFlight, this.claimMs());
        full = claimed.length === room;
        if (claimed.length > 0) {
          const tasks = await this.d.store.deliveries.tasksOf(claimed.map((d) => d.taskId));
          for (const d of claimed) this.track(d.projectId, this.send(d, tasks.get(d.taskId)));
        }
      }
      // No room, or rows claimed: the next wake comes with the sends that end. A row due
      // already but not claimed waits for its project's sends to end (they wake a round), so
      // only a row due later, when nothing is in flight here, shortens the poll.
      const next = room > 0 && !full && this.sends.size === 0 ? await this.d.store.deliveries.nextDue() : null;
      const inMs = next ? next.getTime() - this.d.clock.now().getTime() : Infinity;
      if (inMs > 0) wait = Math.max(10, Math.min(wait, inMs));
    } catch (err) {
      if (err instanceof StoreUnavailableError) this.d.log.warn({ err: err.message }, 'deliveries paused: database unavailable');
      else this.d.log.error({ err }, 'delivery round failed');
    }
    if (!this.stopped) this.timer = setTimeout(() => this.wake(), wait);
  }

  private claimMs(): number {
    return Math.max(this.d.settings.timeoutMs, this.d.settings.smtp?.timeoutMs ?? 0) + CLAIM_MARGIN_MS;
  }

  /**
   * Keeps count of a send; when it ends, a round looks for more once its project has used at
   * most half its share here (or the replica half its room): a backlog is then claimed a
   * handful of rows a round rather than a row for each send that ends.
   */
  private track(projectId: string, p: Promise<void>): void {
    this.sends.add(p);
    this.sending.set(projectId, (this.sending.get(projectId) ?? 0) + 1);
    void p.finally(() => {
      this.sends.delete(p);
      const left = (this.sending.get(projectId) ?? 1) - 1;
      if (left > 0) this.sending.set(projectId, left);
      else this.sending.delete(projectId);
      const s = this.d.settings;
      if (left <= Math.floor(s.perProjectInFlight / 2) || this.sends.size <= Math.floor(s.inFlight / 2)) this.wake();
    });
  }

  /** One attempt of one claimed delivery; its result is recorded with others that end about then. */
  private async send(d: Delivery, task: Task | undefined): Promise<void> {
    const at = this.d.clock.now();
    let r: SendResult;
    try {
      r = await this.attempt(d, task, at);
    } catch (err) {
      // The store could not be read (the secrets): the claim lapses and it is tried again.
      this.d.log.warn({ delivery: d.id, err: (err as Error).message }, 'delivery not attempted');
      return;
    }
    const out = this.next(d, r);
    this.d.metrics?.deliveries.inc({ kind: d.kind, result: out.kind === 'retry' ? 'retried' : out.kind });
    this.d.metrics?.deliverySeconds.observe({ kind: d.kind }, r.latencyMs / 1000);
    const error = r.ok ? null : out.kind === 'failed' && !r.permanent ? `${r.error}; given up after ${d.attempts} attempt(s)` : (r.error ?? null);
    const line = { delivery: d.id, task: d.taskId, kind: d.kind, attempt: d.attempts, status: r.statusCode, error: error ?? undefined };
    if (out.kind === 'failed') this.d.log.warn(line, 'delivery given up');
    else if (out.kind === 'retry') this.d.log.info({ ...line, next: out.nextAt.toISOString() }, 'delivery failed; retrying');
    await this.record({
      delivery: d,
      attempt: { n: d.attempts, at, statusCode: r.statusCode ?? null, error, latencyMs: r.latencyMs, response: r.response ?? null },
      out,
    });
  }

  /**
   * Queues a result to be written with the others that end within RECORD_WAIT_MS, in one
   * statement; resolves once it is written, or could not be (then the claim lapses and the
   * delivery is sent again under its id).
   */
  private record(item: Recorded): Promise<void> {
    return new Promise((resolve) => {
      this.unrecorded.push({ item, done: resolve });
      this.flushing ??= new Promise<void>((res) => setTimeout(res, RECORD_WAIT_MS)).then(() => this.flush());
    });
  }

  private async flush(): Promise<void> {
    while (this.unrecorded.length > 0) {
      const batch = this.unrecorded.splice(0, RECORD_BATCH);
      try {
        const fenced = await this.d.store.deliveries.recordAttempts(batch.map((b) => b.item));
        for (const id of fenced) this.d.log.info({ delivery: id }, 'delivery attempt recorded after its claim lapsed');
      } catch (err) {
        this.d.log.warn({ deliveries: batch.length, err: (err as Error).message }, 'delivery attempts not recorded; they will be sent again');
      }
      for (const b of batch) b.done();
    }
    this.flushing = undefined;
  }

  /** What follows an attempt: delivered, given up (refused for good, or out of time), or another try with back-off. */
  private next(d: Delivery, r: SendResult): AttemptOutcome {
    if (r.ok) return { kind: 'delivered' };
    if (r.permanent) return { kind: 'failed' };
    const s = this.d.settings;
    const full = Math.min(s.retryMaxMs, s.retryBaseMs * 2 ** Math.min(30, d.attempts - 1));
    const delay = full / 2 + Math.random() * (full / 2);
    const nextAt = new Date(this.d.clock.now().getTime() + delay);
    if (nextAt.getTime() > d.retryFrom.getTime() + s.retryForS * 1000) return { kind: 'failed' };
    return { kind: 'retry', nextAt };
  }

  /** A project's signing keys, read at most once per SECRETS_TTL_MS (a rotation reaches every replica within it). */
  private async keys(projectId: string): Promise<Buffer[] | undefined> {
    const now = Date.now();
    const hit = this.secrets.get(projectId);
    if (hit && hit.until > now) return hit.keys;
    const s = await this.d.store.deliveries.signingSecrets(projectId);
    const keys = s?.secrets.map(signingKey);
    if (this.secrets.size >= SECRETS_CACHED) this.secrets.clear();
    if (keys) this.secrets.set(projectId, { keys, until: now + SECRETS_TTL_MS });
    return keys;
  }

  private async attempt(d: Delivery, task: Task | undefined, at: Date): Promise<SendResult> {
    if (!task) return { ok: false, permanent: true, error: 'the task is gone (deleted by retention)', latencyMs: 0 };
    const shown = this.d.present(task);
    if (d.kind === 'email') return this.mail(d, shown);
    const checked = checkReceiverUrl(d.target, this.d.settings.egress);
    if (!checked.ok) return { ok: false, permanent: true, error: `refused: ${checked.reason}`, latencyMs: 0 };
    const keys = await this.keys(d.projectId);
    if (!keys) return { ok: false, permanent: true, error: 'the project has no signing secret (POST /2/projects/{project_id}/webhook_secret makes one)', latencyMs: 0 };
    const body = JSON.stringify({
      type: `task.${d.status}`,
      timestamp: at.toISOString(),
      outcome: { status: d.status, events: d.events },
      data: shown,
    });
    return sendWebhook({
      url: d.target,
      id: d.id,
      event: `task.${d.status}`,
      body,
      keys,
      timestampS: Math.floor(at.getTime() / 1000),
      timeoutMs: this.d.settings.timeoutMs,
      agents: this.agents,
      maxResponseBytes: MAX_RESPONSE_BYTES,
      policy: this.d.settings.egress,
    });
  }

  private async mail(d: Delivery, shown: Record<string, unknown>): Promise<SendResult> {
    if (!this.mailer) return { ok: false, permanent: true, error: 'no SMTP server is configured (GANTRY_SMTP_HOST)', latencyMs: 0 };
    const base = this.d.baseUrl();
    const link = base ? `${base}/2/projects/${d.projectId}/tasks/${d.taskId}` : undefined;
    const lines = [
      `Task ${d.taskId} of code package "${String(shown.code_name)}" ended: ${d.status}.`,
      ...(shown.msg ? [`Message: ${String(shown.msg)}`] : []),
      ...(shown.start_time ? [`Started: ${String(shown.start_time)}`] : []),
      ...(shown.end_time ? [`Ended: ${String(shown.end_time)}`] : []),
      ...(link ? [`Details: ${link}`, `Log: ${link}/log`] : []),
      '',
      `You get this because this address is in the task's notify list${d.events.length > 1 ? 's' : ''} ${d.events.join(', ')}.`,
      '',
      // Without the payload: mail crosses relays and sits in mailboxes, and payloads carry what
      // the task needs (tokens among it); the webhook, signed and sent to the tenant's own
      // receiver, carries it.
      JSON.stringify({ ...shown, payload: undefined }, null, 2),
    ];
    return this.mailer.send({
      to: d.target,
      subject: `[Gantry] ${String(shown.code_name)}: task ${d.taskId} ${d.status}`,
      text: lines.join('\n'),
      messageId: `<${d.id}@gantry>`,
      headers: { 'X-Gantry-Task': d.taskId, 'X-Gantry-Status': d.status },
    });
  }
}
