import type { StoreCtx, Page } from './ctx.ts';
import { pageSql } from './ctx.ts';
import type { QuotasStore } from './quotas.ts';
import { GantryError } from '../../lib/errors.ts';
import { compactHooks, type HookLists, type Hooks } from './hooks.ts';

/** An upload that cannot make a revision (HTTP 400). */
export class CodeInputError extends GantryError {
  constructor(message: string) {
    super('invalid', message, { kind: 'invalid' });
  }
}

/** A hooks value as a jsonb parameter. */
export const hooksJson = (h: Hooks | null | undefined): string | null => (h ? JSON.stringify(h) : null);

/** Settings of a code package revision; `undefined` inherits the previous revision's value. */
export interface CodeSettings {
  /** Required on a package's first upload (CodeInputError otherwise). */
  image?: string;
  command?: string | null;
  config?: string | null;
  maxConcurrency?: number | null;
  retries?: number;
  retriesDelay?: number;
  defaultPriority?: number;
  envVars?: Record<string, string>;
  stack?: string | null;
  logStreams?: LogStreams;
  /** The queue services' job type category: a label of the operator's own; null clears it. */
  category?: string | null;
  /** Outcome hooks its tasks inherit (store/hooks.ts), each kind kept from the last revision unless given; `{}` clears it. */
  webhooks?: HookLists;
  notify?: HookLists;
}

/**
 * How a package's tasks hand their output over: `merged` joins stderr to stdout inside the
 * container, so the log keeps the order lines were written in; `separate` keeps the two
 * apart (the engine may then swap lines of the two written within milliseconds).
 */
export const LOG_STREAMS = ['merged', 'separate'] as const;
export type LogStreams = (typeof LOG_STREAMS)[number];

export interface CodeArchive {
  data: Buffer;
  fileName: string;
  checksum: string;
}

export interface CodeRevision {
  id: string;
  codeId: string;
  projectId: string;
  rev: number;
  image: string;
  command: string | null;
  config: string | null;
  maxConcurrency: number | null;
  retries: number;
  retriesDelay: number;
  defaultPriority: number;
  envVars: Record<string, string>;
  stack: string | null;
  logStreams: LogStreams;
  category: string | null;
  hooks: Hooks | null;
  fileName: string | null;
  checksum: string | null;
  codeSize: number | null;
  createdAt: Date;
}

/** A code package as the API shows it: the package plus its latest revision's settings. */
export interface Code extends Omit<CodeRevision, 'id' | 'codeId' | 'createdAt'> {
  id: string;
  name: string;
  latestRevisionId: string;
  paused: boolean;
  createdAt: Date;
  updatedAt: Date;
}

/** The columns a package shares with its latest revision, as both reads name them. */
interface SettingsRow {
  project_id: string;
  rev: number;
  image: string;
  command: string | null;
  config: string | null;
  max_concurrency: number | null;
  retries: number;
  retries_delay: number;
  default_priority: number;
  env_vars: Record<string, string>;
  stack: string | null;
  log_streams: LogStreams;
  category: string | null;
  hooks: Hooks | null;
  file_name: string | null;
  checksum: string | null;
  code_size: number | null;
}

/** A code_revisions row as SELECT * reads it. */
interface CodeRevisionRow extends SettingsRow {
  id: string;
  code_id: string;
  created_at: Date;
}

/** A package joined with its latest revision (CODE_COLUMNS). */
interface CodeRow extends SettingsRow {
  id: string;
  name: string;
  latest_revision_id: string;
  paused: boolean;
  created_at: Date;
  updated_at: Date;
}

function toSettings(r: SettingsRow): Omit<CodeRevision, 'id' | 'codeId' | 'createdAt'> {
  return {
    projectId: r.project_id,
    rev: r.rev,
    image: r.image,
    command: r.command,
    config: r.config,
    maxConcurrency: r.max_concurrency,
    retries: r.retries,
    retriesDelay: r.retries_delay,
    defaultPriority: r.default_priority,
    envVars: r.env_vars,
    stack: r.stack,
    logStreams: r.log_streams,
    category: r.category,
    hooks: r.hooks ?? null,
    fileName: r.file_name,
    checksum: r.checksum,
    codeSize: r.code_size,
  };
}

function toRevision(r: CodeRevisionRow): CodeRevision {
  return { id: r.id, codeId: r.code_id, ...toSettings(r), createdAt: r.created_at };
}

function toCode(r: CodeRow): Code {
  return {
    id: r.id,
    name: r.name,
    latestRevisionId: r.latest_revision_id,
    paused: r.paused,
    ...toSettings(r),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

const CODE_COLUMNS = `c.id, c.project_id, c.name, c.rev, c.latest_revision_id, c.paused, c.created_at, c.updated_at,
  r.image, r.command, r.config, r.max_concurrency, r.retries, r.retries_delay, r.default_priority, r.env_vars,
  r.stack, r.log_streams, r.category, r.hooks, r.file_name, r.checksum, r.code_size`;

export const TASK_STATUSES = ['queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];

/** Code packages and their revisions. */
export class CodesStore {
  constructor(
    private readonly c: StoreCtx,
    private readonly quotas: QuotasStore,
  ) {}

  /**
   * Uploads a new revision of the code package `name`, creating the package on first
   * upload. Settings left undefined keep the previous revision's values; null clears them.
   * The zip archive is never inherited: a revision without one runs its image alone.
   * A new package counts against its owner's code-package quota (QuotaExceededError); a
   * new revision of a package does not.
   */
  async upload(projectId: string, name: string, s: CodeSettings, archive?: CodeArchive): Promise<Code> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const live = 'SELECT 1 FROM codes WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL';
      if ((await q.query(live, [projectId, name])).rows.length === 0) {
        const userId = await this.quotas.ownerOf(q, projectId);
        await this.quotas.lock(q, userId);
        // Looked for again under the lock: a concurrent first upload of the same name made
        // the package meanwhile, and this upload is then its next revision, not a new package.
        if ((await q.query(live, [projectId, name])).rows.length === 0) await this.quotas.check(q, userId, 'codes', 1);
      }
      await q.query(
        `INSERT INTO codes (id, project_id, name, rev, latest_revision_id, created_at, updated_at)
         VALUES ($1, $2, $3, 0, '', $4, $4)
         ON CONFLICT (project_id, name) WHERE deleted_at IS NULL DO NOTHING`,
        [this.c.ids(), projectId, name, now],
      );
      const code = (
        await q.query<{ id: string; rev: number; latest_revision_id: string }>(
          'SELECT id, rev, latest_revision_id FROM codes WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL FOR UPDATE',
          [projectId, name],
        )
      ).rows[0]!;
      const prevRow =
        code.rev > 0
          ? (await q.query<CodeRevisionRow>('SELECT * FROM code_revisions WHERE id = $1', [code.latest_revision_id])).rows[0]
          : undefined;
      // As a CodeRevision, whose field names are the settings' names (pick reads it by them).
      const prev = prevRow && toRevision(prevRow);
      const pick = <K extends keyof CodeSettings>(k: K, def: NonNullable<CodeSettings[K]> | null) =>
        s[k] !== undefined ? s[k] : prev ? (prev[k as keyof CodeRevision] as CodeSettings[K]) : def;
      const image = s.image ?? prev?.image;
      if (!image) throw new CodeInputError('image is required: the Docker image the code runs in (stacks are deprecated and not supported)');
      const revId = this.c.ids();
      const rev = code.rev + 1;
      await q.query(
        `INSERT INTO code_revisions (id, code_id, project_id, rev, image, command, config, max_concurrency, retries,
           retries_delay, default_priority, env_vars, stack, file_name, checksum, code_size, created_at, log_streams, category, hooks)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb,$13,$14,$15,$16,$17,$18,$19,$20::jsonb)`,
        [
          revId,
          code.id,
          projectId,
          rev,
          image,
          pick('command', null),
          pick('config', null),
          pick('maxConcurrency', null),
          pick('retries', 0) ?? 0,
          pick('retriesDelay', 0) ?? 0,
          pick('defaultPriority', 0) ?? 0,
          JSON.stringify(pick('envVars', {}) ?? {}),
          pick('stack', null),
          archive?.fileName ?? null,
          archive?.checksum ?? null,
          archive ? archive.data.length : null,
          now,
          pick('logStreams', 'merged'),
          pick('category', null),
          hooksJson(compactHooks({ webhooks: s.webhooks ?? prev?.hooks?.webhooks, notify: s.notify ?? prev?.hooks?.notify })),
        ],
      );
      if (archive) {
        await q.query('INSERT INTO code_archives (revision_id, data) VALUES ($1, $2)', [revId, archive.data]);
      }
      await q.query('UPDATE codes SET rev = $2, latest_revision_id = $3, updated_at = $4 WHERE id = $1', [
        code.id,
        rev,
        revId,
        now,
      ]);
      return toCode((await q.query<CodeRow>(`SELECT ${CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id WHERE c.id = $1`, [code.id])).rows[0]!);
    });
  }

  async list(projectId: string, p: Page): Promise<Code[]> {
    const { limit, offset } = pageSql(p);
    const r = await this.c.db.query<CodeRow>(
      `SELECT ${CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
       WHERE c.project_id = $1 AND c.deleted_at IS NULL ORDER BY c.name, c.id LIMIT $2 OFFSET $3`,
      [projectId, limit, offset],
    );
    return r.rows.map(toCode);
  }

  async get(projectId: string, codeId: string): Promise<Code | undefined> {
    const r = await this.c.db.query<CodeRow>(
      `SELECT ${CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
       WHERE c.project_id = $1 AND c.id = $2 AND c.deleted_at IS NULL`,
      [projectId, codeId],
    );
    return r.rows[0] && toCode(r.rows[0]);
  }

  async getByName(projectId: string, name: string): Promise<Code | undefined> {
    const r = await this.c.db.query<CodeRow>(
      `SELECT ${CODE_COLUMNS} FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
       WHERE c.project_id = $1 AND c.name = $2 AND c.deleted_at IS NULL`,
      [projectId, name],
    );
    return r.rows[0] && toCode(r.rows[0]);
  }

  /**
   * Deletes a code package: it disappears from the API and its name is free again. Its
   * revisions stay, so tasks already queued on them keep their code.
   */
  async delete(projectId: string, codeId: string): Promise<boolean> {
    const r = await this.c.db.query(
      'UPDATE codes SET deleted_at = $3 WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL',
      [projectId, codeId, this.c.clock.now()],
    );
    return r.rowCount > 0;
  }

  /** Pauses or resumes handing out the package's queued tasks. False if there is no such code. */
  async setPaused(projectId: string, codeId: string, paused: boolean): Promise<boolean> {
    const r = await this.c.db.query(
      'UPDATE codes SET paused = $3 WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL',
      [projectId, codeId, paused],
    );
    return r.rowCount > 0;
  }

  async revisions(codeId: string, p: Page): Promise<CodeRevision[]> {
    const { limit, offset } = pageSql(p);
    const r = await this.c.db.query<CodeRevisionRow>(
      'SELECT * FROM code_revisions WHERE code_id = $1 ORDER BY rev LIMIT $2 OFFSET $3',
      [codeId, limit, offset],
    );
    return r.rows.map(toRevision);
  }

  async revision(codeId: string, rev: number): Promise<CodeRevision | undefined> {
    const r = (await this.c.db.query<CodeRevisionRow>('SELECT * FROM code_revisions WHERE code_id = $1 AND rev = $2', [codeId, rev]))
      .rows[0];
    return r && toRevision(r);
  }

  /** The zip bundle of a revision, if it has one. */
  async archive(revisionId: string): Promise<Buffer | undefined> {
    const r = await this.c.db.query<{ data: Uint8Array }>('SELECT data FROM code_archives WHERE revision_id = $1', [
      revisionId,
    ]);
    const d = r.rows[0]?.data;
    return d === undefined ? undefined : Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  }

  /** Counts of the package's tasks per status among those last changed within [from, to). */
  async stats(codeId: string, from: Date, to: Date): Promise<Record<TaskStatus, number>> {
    const r = await this.c.db.query<{ status: TaskStatus; n: number }>(
      `SELECT status, count(*)::int AS n FROM tasks
       WHERE code_id = $1 AND updated_at >= $2 AND updated_at < $3 GROUP BY status`,
      [codeId, from, to],
    );
    const out = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as Record<TaskStatus, number>;
    for (const row of r.rows) out[row.status] = row.n;
    return out;
  }
}
