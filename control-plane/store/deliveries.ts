import type { StoreCtx } from './ctx.ts';
import type { SecretBox } from '../../lib/secretbox.ts';
import { SecretsUnavailableError } from './clusters.ts';
import { toTask, type Task, type TaskRow } from './tasks.ts';

/**
 * The outbox of outcome webhooks and e-mails (migration 021): rows the tasks trigger writes
 * with a task's final status, claimed and sent by the delivery loop of any replica
 * (control-plane/outbox/deliverer.ts), every attempt kept. Also the projects' signing
 * secrets, sealed like the clusters' (lib/secretbox.ts).
 */

export type DeliveryKind = 'webhook' | 'email';
export type DeliveryState = 'pending' | 'delivered' | 'failed';

export interface Delivery {
  id: string;
  projectId: string;
  taskId: string;
  kind: DeliveryKind;
  target: string;
  /** The lists that named the receiver: succeeds, fails, finishes. */
  events: string[];
  /** The task's final status. */
  status: string;
  state: DeliveryState;
  inFlight: boolean;
  attempts: number;
  createdAt: Date;
  retryFrom: Date;
  nextAt: Date;
  deliveredAt: Date | null;
  lastError: string | null;
}

export interface DeliveryAttempt {
  n: number;
  at: Date;
  statusCode: number | null;
  error: string | null;
  latencyMs: number;
  response: string | null;
}

interface DeliveryRow {
  id: string;
  project_id: string;
  task_id: string;
  kind: DeliveryKind;
  target: string;
  events: string[];
  status: string;
  state: DeliveryState;
  in_flight: boolean;
  attempts: number;
  created_at: Date;
  retry_from: Date;
  next_at: Date;
  delivered_at: Date | null;
  last_error: string | null;
}

const toDelivery = (r: DeliveryRow): Delivery => ({
  id: r.id,
  projectId: r.project_id,
  taskId: r.task_id,
  kind: r.kind,
  target: r.target,
  events: r.events,
  status: r.status,
  state: r.state,
  inFlight: r.in_flight,
  attempts: r.attempts,
  createdAt: r.created_at,
  retryFrom: r.retry_from,
  nextAt: r.next_at,
  deliveredAt: r.delivered_at,
  lastError: r.last_error,
});

/** How one attempt ended, as the loop decided: delivered, tried again at `nextAt`, or given up. */
export type AttemptOutcome = { kind: 'delivered' } | { kind: 'retry'; nextAt: Date } | { kind: 'failed' };

/**
 * Due deliveries, fairly across projects: the projects with pending rows are walked one by
 * one (a skip scan of deliveries_due), and each gives at most its share of in-flight sends
 * less those it has in flight — so one tenant's backlog of a dead receiver is never in the
 * way of another's. Claimed rows are marked in flight until `$4` (the claim lapses then: a
 * replica that died mid-send leaves them to be sent again).
 * $1 now, $2 most rows, $3 in flight per project, $4 claimed until.
 */
const CLAIM = `
WITH RECURSIVE p(project_id) AS (
  (SELECT project_id FROM deliveries WHERE state = 'pending' ORDER BY project_id LIMIT 1)
  UNION ALL
  SELECT (SELECT d.project_id FROM deliveries d WHERE d.state = 'pending' AND d.project_id > p.project_id
          ORDER BY d.project_id LIMIT 1)
  FROM p WHERE p.project_id IS NOT NULL
),
due AS (
  SELECT c.id, c.next_at, i.n AS busy, row_number() OVER (PARTITION BY p.project_id ORDER BY c.next_at, c.id) AS rn
  FROM p
  CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM deliveries f
    WHERE f.project_id = p.project_id AND f.in_flight AND f.state = 'pending' AND f.next_at > $1
  ) i
  CROSS JOIN LATERAL (
    SELECT d.id, d.next_at FROM deliveries d
    WHERE d.project_id = p.project_id AND d.state = 'pending' AND d.next_at <= $1
    ORDER BY d.next_at LIMIT $3
  ) c
  WHERE p.project_id IS NOT NULL
),
pick AS (SELECT id FROM due WHERE rn + busy <= $3 ORDER BY next_at LIMIT $2)
UPDATE deliveries d SET in_flight = true, next_at = $4, attempts = d.attempts + 1
WHERE d.id = ANY (ARRAY(SELECT id FROM pick))
  AND CASE WHEN d.state = 'pending' THEN d.next_at <= $1 ELSE false END
RETURNING d.*`;

const secretContext = (projectId: string) => `project/${projectId}/signing_secret`;

/** A project's signing secrets now: the current one first, then the previous while its overlap lasts. */
export interface SigningSecrets {
  secrets: string[];
  rotatedAt: Date;
  previousUntil: Date | null;
}

export class DeliveriesStore {
  #box: SecretBox | undefined;

  constructor(private readonly c: StoreCtx) {}

  /** Installs the keys signing secrets are sealed with (Store.useSecrets). */
  useSecrets(box: SecretBox): void {
    this.#box = box;
  }

  #boxOrThrow(): SecretBox {
    if (!this.#box) throw new SecretsUnavailableError();
    return this.#box;
  }

  /** Claims up to `max` due deliveries (see CLAIM), in flight for `claimMs`. */
  async claim(max: number, perProject: number, claimMs: number): Promise<Delivery[]> {
    const now = this.c.clock.now();
    const r = await this.c.db.query<DeliveryRow>(CLAIM, [now, max, perProject, new Date(now.getTime() + claimMs)]);
    return r.rows.map(toDelivery);
  }

  /**
   * Records attempts (each the `attempts`-th of its delivery) and what follows each, in one
   * transaction. Fenced by the attempt: a sender whose claim lapsed (and whose delivery
   * another replica took) records its attempt but changes nothing else. Returns the ids of
   * the deliveries fenced out.
   */
  async recordAttempts(items: readonly { delivery: Pick<Delivery, 'id' | 'attempts'>; attempt: DeliveryAttempt; out: AttemptOutcome }[]): Promise<string[]> {
    if (items.length === 0) return [];
    const col = <T>(f: (x: (typeof items)[number]) => T) => items.map(f);
    // One statement (atomic, one round trip): the attempts, and the deliveries they move on.
    // `d.id = ANY($1)` lets the update find its rows by key however stale the table's
    // statistics are (a fresh outbox has none).
    const r = await this.c.db.query<{ id: string }>(
      `WITH attempts AS (
         INSERT INTO delivery_attempts (delivery_id, n, at, status_code, error, latency_ms, response)
         SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::int[], $5::text[], $6::int[], $7::text[])
         ON CONFLICT (delivery_id, n) DO NOTHING
       )
       UPDATE deliveries d SET in_flight = false, state = u.state,
         delivered_at = CASE WHEN u.state = 'delivered' THEN u.at ELSE d.delivered_at END,
         next_at = coalesce(u.next_at, d.next_at), last_error = u.error
       FROM unnest($1::text[], $10::int[], $8::text[], $3::timestamptz[], $9::timestamptz[], $5::text[]) AS u(id, attempts, state, at, next_at, error)
       WHERE d.id = ANY ($1::text[]) AND d.id = u.id AND d.attempts = u.attempts AND d.state = 'pending'
       RETURNING d.id`,
      [
        col((x) => x.delivery.id),
        col((x) => x.attempt.n),
        col((x) => x.attempt.at),
        col((x) => x.attempt.statusCode),
        col((x) => x.attempt.error),
        col((x) => Math.round(x.attempt.latencyMs)),
        col((x) => x.attempt.response),
        col((x) => (x.out.kind === 'retry' ? 'pending' : x.out.kind)),
        col((x) => (x.out.kind === 'retry' ? x.out.nextAt : null)),
        col((x) => x.delivery.attempts),
      ],
    );
    const kept = new Set(r.rows.map((x) => x.id));
    return items.filter((x) => !kept.has(x.delivery.id)).map((x) => x.delivery.id);
  }

  /** Tasks by id, for a round's claimed deliveries (one read for all of them). */
  async tasksOf(ids: readonly string[]): Promise<Map<string, Task>> {
    if (ids.length === 0) return new Map();
    const r = await this.c.db.query<TaskRow>('SELECT * FROM tasks WHERE id = ANY($1::text[])', [[...new Set(ids)]]);
    return new Map(r.rows.map((x) => [x.id, toTask(x)]));
  }

  /** When the next pending delivery falls due (now for one due already), or null for none. */
  async nextDue(): Promise<Date | null> {
    const r = await this.c.db.query<{ at: Date | null }>(`SELECT next_at AS at FROM deliveries WHERE state = 'pending' ORDER BY next_at LIMIT 1`);
    return r.rows[0]?.at ?? null;
  }

  /** A task's deliveries, each with its attempts, oldest first. */
  async forTask(projectId: string, taskId: string): Promise<(Delivery & { history: DeliveryAttempt[] })[]> {
    const ds = (
      await this.c.db.query<DeliveryRow>(`SELECT * FROM deliveries WHERE project_id = $1 AND task_id = $2 ORDER BY created_at, kind, target`, [
        projectId,
        taskId,
      ])
    ).rows.map(toDelivery);
    if (ds.length === 0) return [];
    const as = await this.c.db.query<{
      delivery_id: string; n: number; at: Date; status_code: number | null; error: string | null; latency_ms: number; response: string | null;
    }>(`SELECT * FROM delivery_attempts WHERE delivery_id = ANY($1::text[]) ORDER BY delivery_id, n`, [ds.map((d) => d.id)]);
    const by = new Map<string, DeliveryAttempt[]>();
    for (const a of as.rows) {
      const l = by.get(a.delivery_id) ?? [];
      l.push({ n: a.n, at: a.at, statusCode: a.status_code, error: a.error, latencyMs: a.latency_ms, response: a.response });
      by.set(a.delivery_id, l);
    }
    return ds.map((d) => ({ ...d, history: by.get(d.id) ?? [] }));
  }

  /**
   * Sends a delivery of the project's task again, now, under the same id (its idempotency
   * key: a receiver that handled it already may drop it), with a new retry window. Undefined
   * for none such; unchanged while a send of it is in flight.
   */
  async redeliver(projectId: string, taskId: string, id: string): Promise<Delivery | undefined> {
    const now = this.c.clock.now();
    const r = await this.c.db.query<DeliveryRow>(
      `UPDATE deliveries SET state = 'pending', next_at = $4, retry_from = $4, delivered_at = NULL
       WHERE project_id = $1 AND task_id = $2 AND id = $3 AND NOT (state = 'pending' AND in_flight AND next_at > $4)
       RETURNING *`,
      [projectId, taskId, id, now],
    );
    if (r.rows[0]) {
      // Every replica's loop hears of it (as of the trigger's new rows), not only at its next poll.
      await this.c.db.query(`SELECT pg_notify('gantry_delivery', $1)`, [projectId]);
      return toDelivery(r.rows[0]);
    }
    const cur = await this.c.db.query<DeliveryRow>(`SELECT * FROM deliveries WHERE project_id = $1 AND task_id = $2 AND id = $3`, [projectId, taskId, id]);
    return cur.rows[0] && toDelivery(cur.rows[0]);
  }

  /** The project's signing secrets (opened), or undefined before the first one was made. */
  async signingSecrets(projectId: string): Promise<SigningSecrets | undefined> {
    const r = (
      await this.c.db.query<{ secret: string; previous: string | null; previous_until: Date | null; rotated_at: Date }>(
        'SELECT secret, previous, previous_until, rotated_at FROM project_signing_secrets WHERE project_id = $1',
        [projectId],
      )
    ).rows[0];
    if (!r) return undefined;
    const box = this.#boxOrThrow();
    const now = this.c.clock.now();
    const secrets = [box.open(r.secret, secretContext(projectId))];
    const overlap = r.previous && r.previous_until && r.previous_until > now;
    if (overlap) secrets.push(box.open(r.previous!, secretContext(projectId)));
    return { secrets, rotatedAt: r.rotated_at, previousUntil: overlap ? r.previous_until : null };
  }

  /** Whether the project has a signing secret (webhooks need one). */
  async hasSigningSecret(projectId: string): Promise<boolean> {
    const r = await this.c.db.query('SELECT 1 FROM project_signing_secrets WHERE project_id = $1', [projectId]);
    return r.rows.length > 0;
  }

  /**
   * Makes `secret` the project's signing secret; the one before keeps signing for
   * `overlapS` seconds, so receivers can move to the new one without refusing deliveries.
   */
  async rotateSigningSecret(projectId: string, secret: string, overlapS: number): Promise<SigningSecrets> {
    const box = this.#boxOrThrow();
    const now = this.c.clock.now();
    const until = new Date(now.getTime() + overlapS * 1000);
    await this.c.db.query(
      `INSERT INTO project_signing_secrets AS s (project_id, secret, previous, previous_until, rotated_at)
       VALUES ($1, $2, NULL, NULL, $3)
       ON CONFLICT (project_id) DO UPDATE SET previous = s.secret, previous_until = $4, secret = excluded.secret, rotated_at = $3`,
      [projectId, box.seal(secret, secretContext(projectId)), now, overlapS > 0 ? until : now],
    );
    return (await this.signingSecrets(projectId))!;
  }

  /** Key rotation (`gantry cluster reencrypt`): rewrites the sealed signing secrets not under the primary key, each by compare-and-set. */
  async reencryptSecrets(): Promise<{ rewritten: number; current: number; failed: { projectId: string; field: string; error: string }[] }> {
    const box = this.#boxOrThrow();
    const out = { rewritten: 0, current: 0, failed: [] as { projectId: string; field: string; error: string }[] };
    const rows = await this.c.db.query<{ project_id: string; secret: string; previous: string | null }>(
      'SELECT project_id, secret, previous FROM project_signing_secrets ORDER BY project_id',
    );
    for (const row of rows.rows) {
      for (const col of ['secret', 'previous'] as const) {
        const sealed = row[col];
        if (!sealed) continue;
        try {
          const fresh = box.resealed(sealed, secretContext(row.project_id));
          if (fresh === undefined) {
            out.current++;
            continue;
          }
          const r = await this.c.db.query(`UPDATE project_signing_secrets SET ${col} = $3 WHERE project_id = $1 AND ${col} = $2`, [row.project_id, sealed, fresh]);
          if ((r.rowCount ?? 0) > 0) out.rewritten++;
          else out.current++;
        } catch (err) {
          out.failed.push({ projectId: row.project_id, field: col === 'secret' ? 'current' : 'previous', error: (err as Error).message });
        }
      }
    }
    return out;
  }
}
