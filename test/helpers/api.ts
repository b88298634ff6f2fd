import type { Test } from 'tap';
import { systemClock, type Clock } from '../../lib/clock.ts';
import { silentLogger } from '../../lib/logger.ts';
import { loadConfig } from '../../control-plane/config.ts';
import { startControlPlane, type ControlPlane } from '../../control-plane/start.ts';
import type { Store } from '../../control-plane/store/index.ts';
import { contractProblem } from './contract.ts';
import { freshStore, type Engine } from './db.ts';

export interface Reply {
  status: number;
  headers: Headers;
  /** Parsed JSON when the reply is JSON, else the text. */
  body: any;
  text: string;
}

export interface RequestOptions {
  /** Sent as JSON with Content-Type: application/json. */
  json?: unknown;
  /** Sent as is. */
  body?: string | Buffer | FormData | Uint8Array;
  headers?: Record<string, string>;
  query?: Record<string, string | number | boolean>;
  /** Authenticate with this token (default: the test user's); null sends none. */
  token?: string | null;
}

/** A user with a project and a token, and a client that talks to the API as them. */
export interface ApiUser {
  userId: string;
  projectId: string;
  token: string;
  /** Request under /2/projects/{projectId}; `path` starts with '/' (e.g. '/codes'). */
  project(method: string, path: string, o?: RequestOptions): Promise<Reply>;
}

export interface TestApi {
  cp: ControlPlane;
  store: Store;
  url: string;
  /** Any request; `path` is absolute (e.g. '/2/stacks'). */
  request(method: string, path: string, o?: RequestOptions & { token?: string | null }): Promise<Reply>;
  /** Creates another user with their own project and token. */
  newUser(email?: string): Promise<ApiUser>;
  /** The first user. */
  user: ApiUser;
}

let emails = 0;

/** Starts a control plane on a fresh database of `engine`, on a free port, stopped at teardown. */
export async function startTestApi(
  t: Test,
  engine: Engine,
  o: { clock?: Clock; env?: Record<string, string>; scheduler?: boolean } = {},
): Promise<TestApi> {
  const clock = o.clock ?? systemClock;
  const store = await freshStore(t, engine, clock);
  const config = loadConfig({ GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'silent', ...o.env });
  const cp = await startControlPlane(config, silentLogger(), { store, clock, scheduler: o.scheduler ?? false });
  t.teardown(() => cp.stop());

  async function request(method: string, path: string, ro: RequestOptions = {}, defaultToken?: string): Promise<Reply> {
    const url = new URL(cp.url + path);
    for (const [k, v] of Object.entries(ro.query ?? {})) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { Accept: 'application/json', ...ro.headers };
    const token = ro.token === undefined ? defaultToken : ro.token;
    if (token) headers.Authorization ??= `OAuth ${token}`;
    let body: BodyInit | undefined;
    if (ro.json !== undefined) {
      headers['Content-Type'] ??= 'application/json';
      body = JSON.stringify(ro.json);
    } else if (ro.body !== undefined) {
      body = ro.body as BodyInit;
    }
    const res = await fetch(url, { method, headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    const type = res.headers.get('content-type') ?? '';
    if (type.includes('json')) parsed = JSON.parse(text);
    const problem = contractProblem(method, url.pathname, res.status, type, parsed);
    if (problem) throw new Error(`the reply does not match the API document: ${problem}`);
    return { status: res.status, headers: res.headers, body: parsed, text };
  }

  async function newUser(email = `user${++emails}-${Date.now()}@example.com`): Promise<ApiUser> {
    const u = await store.accounts.createUser(email);
    const p = await store.accounts.createProject(u.id, 'test');
    const { token } = await store.accounts.createToken(u.id, 'test');
    return {
      userId: u.id,
      projectId: p.id,
      token,
      project: (method, path, ro = {}) => request(method, `/2/projects/${p.id}${path}`, ro, token),
    };
  }

  const user = await newUser();
  return { cp, store, url: cp.url, request: (m, p, ro = {}) => request(m, p, ro, user.token), newUser, user };
}

/** Uploads an image-only code package through the API; returns the reply body. */
export async function uploadCode(u: ApiUser, data: Record<string, unknown>, file?: { data: Buffer; name: string }) {
  const form = new FormData();
  form.append('data', JSON.stringify({ image: 'gantry-test/busybox:latest', ...data }));
  if (file) form.append('file', new Blob([new Uint8Array(file.data)]), file.name);
  return u.project('POST', '/codes', { body: form });
}
