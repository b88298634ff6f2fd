import http from 'node:http';
import type { Test } from 'tap';
import type { ApiUser, Reply } from './api.ts';
import { uploadCode } from './api.ts';

/** Asserts an API error: the status, a JSON body that is exactly {"msg": ...}, and its text. */
export function isError(t: Test, r: Reply, status: number, msg?: RegExp | string, what = ''): void {
  t.equal(r.status, status, `${what} status ${status} (${r.text})`);
  t.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what} error is JSON`);
  t.same(Object.keys(typeof r.body === 'object' && r.body !== null ? r.body : {}), ['msg'], `${what} body is exactly {msg}`);
  t.type(r.body?.msg, 'string', `${what} msg is a string`);
  t.ok((r.body?.msg ?? '').length > 0, `${what} msg is not empty`);
  if (typeof msg === 'string') t.equal(r.body?.msg, msg, `${what} msg`);
  else if (msg) t.match(r.body?.msg, msg, `${what} msg names the problem`);
}

/** Uploads an image-only code package and asserts it worked; returns the reply body. */
export async function codeOk(t: Test, u: ApiUser, name: string, extra: Record<string, unknown> = {}) {
  const r = await uploadCode(u, { name, ...extra });
  t.equal(r.status, 200, r.text);
  return r.body as { id: string; latest_history_id: string; rev: number };
}

/** A request whose body goes out chunked, without Content-Length (node:http, not fetch). */
export function sendChunked(url: string, method: string, path: string, headers: Record<string, string>, body: Buffer) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }>((resolve, reject) => {
    let answered = false;
    const req = http.request(new URL(path, url), { method, headers }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    // The server may answer (413) before it has read everything; that is not a failure.
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    for (let i = 0; i < body.length; i += 8192) req.write(body.subarray(i, i + 8192));
    req.end();
  });
}
