import { useEffect, useRef, useState } from 'preact/hooks';
import { request } from './api.ts';

interface Chunk {
  stream: string;
  text: string;
}

/** Text of the log per stream, merged so a long log is a few text nodes, not one per event. */
function add(chunks: Chunk[], stream: string, text: string): Chunk[] {
  const last = chunks[chunks.length - 1];
  if (last && last.stream === stream) return [...chunks.slice(0, -1), { stream, text: last.text + text }];
  return [...chunks, { stream, text }];
}

/**
 * A log followed live as Server-Sent Events (`GET <path>` with Accept: text/event-stream,
 * read through fetch so the token stays in the Authorization header), resumed from the byte
 * offset after a dropped connection. Shown as text spans, stderr marked apart.
 */
export function LiveLog({ path, onEnd }: { path: string; onEnd?: (status: string) => void }) {
  const [chunks, setChunks] = useState<Chunk[]>([]);
  const [state, setState] = useState('connecting');
  const box = useRef<HTMLPreElement>(null);
  const endRef = useRef(onEnd);
  endRef.current = onEnd;

  useEffect(() => {
    const ac = new AbortController();
    let offset = 0;
    let done = false;
    let delay = 500;
    const onEvent = (name: string, data: string, id?: string) => {
      if (id !== undefined && /^[0-9]+$/.test(id)) offset = Number(id);
      const d = JSON.parse(data) as Record<string, unknown>;
      if (name === 'start') setState(String(d.status));
      else if (name === 'log') setChunks((c) => add(c, String(d.stream), String(d.text)));
      else if (name === 'execution') setChunks((c) => add(c, 'note', '\n--- a new attempt runs ---\n'));
      else if (name === 'end') {
        done = true;
        setState(`ended: ${String(d.status)}`);
        endRef.current?.(String(d.status));
      }
    };
    (async () => {
      while (!done && !ac.signal.aborted) {
        try {
          const res = await request(path, { accept: 'text/event-stream', headers: { 'Last-Event-ID': String(offset) }, signal: ac.signal });
          delay = 500;
          const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
          let buf = '';
          let ev: { data: string[]; id?: string; event?: string } = { data: [] };
          for (;;) {
            const { value, done: eof } = await reader.read();
            if (eof) break;
            buf += value;
            let nl: number;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl);
              buf = buf.slice(nl + 1);
              if (line === '') {
                if (ev.data.length) onEvent(ev.event ?? 'message', ev.data.join('\n'), ev.id);
                ev = { data: [] };
                continue;
              }
              const c = line.indexOf(':');
              const f = c < 0 ? line : line.slice(0, c);
              const v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
              if (f === 'data') ev.data.push(v);
              else if (f === 'id') ev.id = v;
              else if (f === 'event') ev.event = v;
            }
          }
        } catch (err) {
          if (ac.signal.aborted) return;
          const status = (err as { status?: number }).status;
          if (status === 404 || status === 401) {
            setState('not found');
            return;
          }
        }
        if (!done && !ac.signal.aborted) {
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 5000);
        }
      }
    })();
    return () => ac.abort();
  }, [path]);

  useEffect(() => {
    const el = box.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [chunks]);

  return (
    <div class="live-log">
      <p class="muted">
        Live log: <span id="log-state">{state}</span>
      </p>
      <pre id="log" ref={box} class="log">
        {chunks.map((c, i) => (
          <span key={i} class={c.stream}>
            {c.text}
          </span>
        ))}
      </pre>
    </div>
  );
}
