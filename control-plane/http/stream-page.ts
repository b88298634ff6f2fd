import { createHash } from 'node:crypto';

/**
 * The stream page (`.../tasks/{id}/stream`, `.../executions/{n}/stream`): public HTML with no
 * task data in it, which reads the log as Server-Sent Events through `fetch` with the token
 * in the Authorization header. The token comes from the `#oauth=` fragment (never sent to a
 * server, removed from the address bar at once) or a form, and is kept in sessionStorage
 * (this tab only). Everything shown is set as text, never as HTML. The script and style are
 * inline and allowed by their hashes alone (Content-Security-Policy).
 */
const SCRIPT = `(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const logEl = $('log'), statusEl = $('status'), endEl = $('end'), form = $('auth');
  const KEY = 'gantry.oauth';
  const m = /^#oauth=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  const api = location.pathname.replace(/\\/stream\\/?$/, '/log');
  const task = location.pathname.replace(/\\/(executions\\/[^/]+\\/)?stream\\/?$/, '');
  let offset = 0, done = false, delay = 500;
  const setStatus = (s) => { statusEl.textContent = s; statusEl.dataset.status = s; };
  const append = (stream, text) => {
    const span = document.createElement('span');
    span.className = stream;
    span.textContent = text;
    logEl.appendChild(span);
    window.scrollTo(0, document.body.scrollHeight);
  };
  const note = (text) => { const d = document.createElement('div'); d.className = 'note'; d.textContent = text; logEl.appendChild(d); };
  const onEvent = (name, data, id) => {
    if (id !== undefined && /^[0-9]+$/.test(id)) offset = Number(id);
    const d = JSON.parse(data);
    if (name === 'start') setStatus(String(d.status));
    else if (name === 'log') { if (statusEl.dataset.status === 'queued') setStatus('running'); append(String(d.stream), String(d.text)); }
    else if (name === 'behind') note('(fell behind: reading the stored log)');
    else if (name === 'execution') note('--- execution ended; a new attempt runs ---');
    else if (name === 'end') {
      done = true;
      setStatus(String(d.status));
      endEl.textContent = 'Ended: ' + String(d.status) + ' (' + String(d.size) + ' bytes' + (d.log_complete ? '' : ', log not confirmed whole') + ')';
      endEl.hidden = false;
    }
  };
  const follow = async (token) => {
    while (!done) {
      try {
        const res = await fetch(api, { headers: { Accept: 'text/event-stream', Authorization: 'OAuth ' + token, 'Last-Event-ID': String(offset) }, cache: 'no-store' });
        if (res.status === 401 || res.status === 404) {
          sessionStorage.removeItem(KEY);
          setStatus(res.status === 401 ? 'token refused' : 'task not found');
          form.hidden = false;
          return;
        }
        if (!res.ok) throw new Error('HTTP ' + res.status);
        delay = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '', ev = { data: [] };
        for (;;) {
          const { value, done: eof } = await reader.read();
          if (eof) break;
          buf += value;
          let nl;
          while ((nl = buf.indexOf('\\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line === '') { if (ev.data.length) onEvent(ev.event || 'message', ev.data.join('\\n'), ev.id); ev = { data: [] }; continue; }
            const c = line.indexOf(':');
            const f = c < 0 ? line : line.slice(0, c), v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (f === 'data') ev.data.push(v); else if (f === 'id') ev.id = v; else if (f === 'event') ev.event = v;
          }
        }
      } catch (err) {
        statusEl.title = String(err && err.message);
      }
      if (!done) { await new Promise((r) => setTimeout(r, delay)); delay = Math.min(delay * 2, 5000); }
    }
  };
  $('task').textContent = task.replace(/^.*\\/tasks\\//, 'task ');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(KEY, t);
    form.hidden = true;
    follow(t);
  });
  const saved = sessionStorage.getItem(KEY);
  if (saved) follow(saved); else { form.hidden = false; setStatus('waiting for a token'); }
})();`;

const STYLE = `body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{position:sticky;top:0;background:#222;padding:8px 12px;display:flex;gap:16px;align-items:center}
#status{font-weight:bold;padding:2px 8px;border-radius:4px;background:#444}
#status[data-status=complete]{background:#1d6b2f}#status[data-status=error],#status[data-status=timeout],#status[data-status=killed],#status[data-status=cancelled]{background:#8a1f1f}
#log{font:13px/1.35 ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;margin:0;padding:12px}
.stderr{color:#ff8a80}.note{color:#9e9e9e;font-style:italic}
#end{margin:0 12px 16px;padding:8px;border:1px solid #666;border-radius:4px}`;

const sha = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;

/** The page's Content-Security-Policy: nothing but its own inline script and style and requests to this origin. */
export const STREAM_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha(SCRIPT)}`,
  `style-src ${sha(STYLE)}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The page itself: the same for every task (the script reads the task from its own address). */
export const STREAM_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Gantry: live log</title>
<style>${STYLE}</style></head>
<body><header><span id="task"></span><span id="status">connecting</span></header>
<form id="auth" hidden><label>OAuth token <input id="token" type="password" autocomplete="off"></label> <button>Follow</button></form>
<pre id="log"></pre><div id="end" hidden></div>
<script>${SCRIPT}</script></body></html>
`;
