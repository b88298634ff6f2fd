import { createHash, randomBytes } from 'node:crypto';
import type { StoreCtx } from './ctx.ts';

export interface User {
  id: string;
  email: string;
  createdAt: Date;
}
export interface Project {
  id: string;
  userId: string;
  name: string;
  createdAt: Date;
  /** Most tasks of the project running at once, across all replicas; null: no limit. */
  maxRunning: number | null;
}

/** A users row as SELECT * reads it. */
interface UserRow {
  id: string;
  email: string;
  created_at: Date;
}
/** A projects row as SELECT * reads it. */
interface ProjectRow {
  id: string;
  user_id: string;
  name: string;
  created_at: Date;
  max_running: number | null;
}

function toUser(r: UserRow): User {
  return { id: r.id, email: r.email, createdAt: r.created_at };
}

function toProject(r: ProjectRow): Project {
  return { id: r.id, userId: r.user_id, name: r.name, createdAt: r.created_at, maxRunning: r.max_running };
}

/** Tokens are stored as their SHA-256; the plain token is shown once, when created. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Users, their OAuth tokens and their projects. */
export class AccountsStore {
  constructor(private readonly c: StoreCtx) {}

  async createUser(email: string): Promise<User> {
    const r = await this.c.db.query<UserRow>(
      'INSERT INTO users (id, email, created_at) VALUES ($1, $2, $3) RETURNING *',
      [this.c.ids(), email, this.c.clock.now()],
    );
    return toUser(r.rows[0]!);
  }

  async findUser(idOrEmail: string): Promise<User | undefined> {
    const r = await this.c.db.query<UserRow>('SELECT * FROM users WHERE id = $1 OR email = $1', [idOrEmail]);
    return r.rows[0] && toUser(r.rows[0]);
  }

  async listUsers(): Promise<User[]> {
    return (await this.c.db.query<UserRow>('SELECT * FROM users ORDER BY id')).rows.map(toUser);
  }

  /** Creates a token for a user and returns it in plain text; only its hash is kept. */
  async createToken(userId: string, name = ''): Promise<{ id: string; token: string }> {
    const token = randomBytes(20).toString('hex');
    const id = this.c.ids();
    await this.c.db.query(
      'INSERT INTO tokens (id, user_id, token_hash, name, created_at) VALUES ($1, $2, $3, $4, $5)',
      [id, userId, hashToken(token), name, this.c.clock.now()],
    );
    return { id, token };
  }

  /** Tokens that work (not revoked), newest first, of one user or all: never the token, only its id. */
  async listTokens(userId?: string): Promise<{ id: string; userId: string; email: string; name: string; createdAt: Date }[]> {
    const r = await this.c.db.query<{ id: string; user_id: string; email: string; name: string; created_at: Date }>(
      `SELECT t.id, t.user_id, u.email, t.name, t.created_at FROM tokens t JOIN users u ON u.id = t.user_id
       WHERE t.revoked_at IS NULL AND ($1::text IS NULL OR t.user_id = $1) ORDER BY t.created_at DESC, t.id DESC`,
      [userId ?? null],
    );
    return r.rows.map((x) => ({ id: x.id, userId: x.user_id, email: x.email, name: x.name, createdAt: x.created_at }));
  }

  async revokeToken(tokenId: string): Promise<boolean> {
    const r = await this.c.db.query('UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL', [
      tokenId,
      this.c.clock.now(),
    ]);
    return r.rowCount > 0;
  }

  /** The user a token belongs to, or undefined for an unknown or revoked token. */
  async authenticate(token: string): Promise<string | undefined> {
    const r = await this.c.db.query<{ user_id: string }>(
      'SELECT user_id FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL',
      [hashToken(token)],
    );
    return r.rows[0]?.user_id;
  }

  async createProject(userId: string, name: string): Promise<Project> {
    const r = await this.c.db.query<ProjectRow>(
      'INSERT INTO projects (id, user_id, name, created_at) VALUES ($1, $2, $3, $4) RETURNING *',
      [this.c.ids(), userId, name, this.c.clock.now()],
    );
    return toProject(r.rows[0]!);
  }

  /** A project, only if it belongs to the user: another user's project does not exist for them. */
  async projectOfUser(projectId: string, userId: string): Promise<Project | undefined> {
    const r = await this.c.db.query<ProjectRow>('SELECT * FROM projects WHERE id = $1 AND user_id = $2', [projectId, userId]);
    return r.rows[0] && toProject(r.rows[0]);
  }

  /** Sets (or, with null, removes) the limit on the project's running tasks; false if no such project. */
  async setProjectLimit(projectId: string, maxRunning: number | null): Promise<boolean> {
    const r = await this.c.db.query('UPDATE projects SET max_running = $2 WHERE id = $1', [projectId, maxRunning]);
    return r.rowCount > 0;
  }

  async listProjects(userId?: string): Promise<Project[]> {
    const r = userId
      ? await this.c.db.query<ProjectRow>('SELECT * FROM projects WHERE user_id = $1 ORDER BY id', [userId])
      : await this.c.db.query<ProjectRow>('SELECT * FROM projects ORDER BY id');
    return r.rows.map(toProject);
  }
}
