/**
 * The command line's client of the public REST API (docs/openapi.json): JSON requests, a
 * multipart upload that reports its bytes as they go, and streamed replies for live logs.
 * Every failure leaves here as an ApiError (an error status, with the API's `msg`) or an
 * UnreachableError (no answer); nothing else translates fetch's errors.
 */
import { ApiError, UnreachableError } from './errors.ts';
import { apiBase, type ClientConfig } from './config.ts';

/** How long a request waits for its reply's headers (a follow's body may last much longer). */
const REPLY_TIMEOUT_MS = 30_000;

/** A 2xx reply with a JSON body. */
export interface ApiReply {
  status: number;
  /** The parsed JSON body. */
  body: any;
  /** The body as received (printed as is under --json). */
  text: string;
}

/** A request's body, query and extra headers. */
export interface RequestOptions {
  json?: unknown;
  query?: Record<string, string | number | boolean | undefined>;
  /** Extra headers (e.g. Accept). */
  headers?: Record<string, string>;
}

/** A client of one API (`{protocol}://{host}:{port}/2`) with one token and, for project paths, one project. */
export class ApiClient {
  readonly base: string;

  constructor(
    private readonly config: Pick<ClientConfig, 'protocol' | 'host' | 'port' | 'token' | 'projectId'>,
    private readonly userAgent: string,
  ) {
    this.base = apiBase(config);
  }

  /** `/projects/{projectId}` followed by `path`. */
  project(path: string): string {
    return `/projects/${encodeURIComponent(this.config.projectId ?? '')}${path}`;
  }

  /** A JSON request under /2; throws ApiError on any status but 2xx. */
  async request(method: string, path: string, o: RequestOptions = {}): Promise<ApiReply> {
    const headers: Record<string, string> = { Accept: 'application/json', ...o.headers };
    let body: string | undefined;
    if (o.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(o.json);
    }
    const res = await this.send(method, path, { headers, body, query: o.query });
    return this.parse(res);
  }

  /**
   * A multipart/form-data POST of `parts`, sent in chunks so `onProgress(sent, total)` can
   * follow its bytes (the parts are in memory: a code package is at most a few hundred MB).
   */
  async upload(path: string, parts: FormPart[], onProgress?: (sent: number, total: number) => void): Promise<ApiReply> {
    const boundary = `----gantry${Math.random().toString(16).slice(2)}${Date.now().toString(16)}`;
    const payload = multipart(boundary, parts);
    const total = payload.length;
    const CHUNK = 64 * 1024;
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= total) {
          controller.close();
          return;
        }
        const end = Math.min(sent + CHUNK, total);
        controller.enqueue(payload.subarray(sent, end));
        sent = end;
        onProgress?.(sent, total);
      },
    });
    const res = await this.send('POST', path, {
      headers: { Accept: 'application/json', 'Content-Type': `multipart/form-data; boundary=${boundary}`, 'Content-Length': String(total) },
      body,
    });
    return this.parse(res);
  }

  /** A request whose reply is read as it comes (live logs); an error status throws ApiError. */
  async stream(path: string, o: RequestOptions & { signal?: AbortSignal } = {}): Promise<Response> {
    const res = await this.send('GET', path, { headers: { ...o.headers }, query: o.query, signal: o.signal, noTimeout: true });
    if (res.status >= 400) await this.parse(res);
    return res;
  }

  private async send(
    method: string,
    path: string,
    o: { headers: Record<string, string>; body?: BodyInit; query?: RequestOptions['query']; signal?: AbortSignal; noTimeout?: boolean },
  ): Promise<Response> {
    const url = new URL(this.base + path);
    for (const [k, v] of Object.entries(o.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { 'User-Agent': this.userAgent, ...o.headers };
    if (this.config.token) headers.Authorization = `OAuth ${this.config.token}`;
    // The timeout covers the wait for the reply's headers only: a followed log may stay open for an hour.
    const timeout = new AbortController();
    const timer = o.noTimeout ? undefined : setTimeout(() => timeout.abort(), REPLY_TIMEOUT_MS);
    const signal = o.signal ? AbortSignal.any([o.signal, timeout.signal]) : timeout.signal;
    try {
      return await fetch(url, { method, headers, body: o.body ?? null, signal, duplex: 'half' } as RequestInit);
    } catch (err) {
      if (o.signal?.aborted) throw err;
      throw this.unreachable(err, timeout.signal.aborted);
    } finally {
      clearTimeout(timer);
    }
  }

  private unreachable(err: unknown, timedOut: boolean): UnreachableError {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why = timedOut ? `no reply within ${REPLY_TIMEOUT_MS / 1000} s` : (cause?.code ?? cause?.message ?? (err as Error).message);
    return new UnreachableError(`cannot reach the API at ${this.base}: ${why}`, {
      hint: 'is Gantry running there? check host, port and protocol (iron.json, IRON_HOST/IRON_PORT, or gantry login)',
      cause: err,
    });
  }

  private async parse(res: Response): Promise<ApiReply> {
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      throw this.unreachable(err, false);
    }
    let body: any;
    const json = /\bjson\b/i.test(res.headers.get('content-type') ?? '');
    if (json) {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
    }
    if (res.status >= 400) {
      const msg = typeof body?.msg === 'string' ? body.msg : `${res.statusText || 'error'}${text && !json ? `: ${text.slice(0, 200)}` : ''}`;
      const retry = res.headers.get('retry-after');
      throw new ApiError(res.status, msg, body, retry ? `retry in ${retry} s` : undefined);
    }
    if (body === undefined) {
      throw new ApiError(res.status, `the reply is not JSON (is ${this.base} a Gantry API?): ${text.slice(0, 200)}`, undefined, 'check host, port and protocol');
    }
    return { status: res.status, body, text };
  }
}

/** One part of a multipart body. */
export interface FormPart {
  name: string;
  data: Buffer | string;
  contentType?: string;
  fileName?: string;
}

function multipart(boundary: string, parts: FormPart[]): Buffer {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = `form-data; name="${p.name}"${p.fileName ? `; filename="${p.fileName.replace(/["\r\n]/g, '_')}"` : ''}`;
    const head = `--${boundary}\r\nContent-Disposition: ${disposition}\r\n${p.contentType ? `Content-Type: ${p.contentType}\r\n` : ''}\r\n`;
    chunks.push(Buffer.from(head), Buffer.isBuffer(p.data) ? p.data : Buffer.from(p.data), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}
