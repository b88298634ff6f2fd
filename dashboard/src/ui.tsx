import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { ApiError } from './api.ts';

/** A value loaded from the API: re-loaded when `deps` change, or on `reload()`. */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): { data?: T; error?: string; reload: () => void } {
  const [state, setState] = useState<{ data?: T; error?: string }>({});
  const [n, setN] = useState(0);
  useEffect(() => {
    const ac = new AbortController();
    load(ac.signal).then(
      (data) => !ac.signal.aborted && setState({ data }),
      (err: unknown) => !ac.signal.aborted && setState((s) => ({ ...s, error: message(err) })),
    );
    return () => ac.abort();
  }, [...deps, n]);
  return { ...state, reload: useCallback(() => setN((x) => x + 1), []) };
}

/** Re-runs `fn` every `ms` while mounted. */
export function useEvery(ms: number, fn: () => void): void {
  useEffect(() => {
    const t = setInterval(fn, ms);
    return () => clearInterval(t);
  }, [ms, fn]);
}

export function message(err: unknown): string {
  if (err instanceof ApiError) return `${err.message} (${err.status})`;
  if (err instanceof Error) return err.name === 'AbortError' ? 'cancelled' : err.message;
  return String(err);
}

/** Time as the browser's locale shows it, the ISO text in the title. */
export function Time({ at }: { at?: string | null }) {
  if (!at) return <span class="muted">–</span>;
  const d = new Date(at);
  return <time dateTime={at} title={at}>{d.toLocaleString()}</time>;
}

export function Status({ s }: { s: string }) {
  return <span class={`badge s-${s.replace(/[^a-z_]/g, '')}`}>{s}</span>;
}

export function Loading({ error }: { error?: string | undefined }) {
  return error ? <p class="error" role="alert">{error}</p> : <p class="muted">Loading…</p>;
}

export function Err({ error }: { error?: string | undefined }) {
  return error ? <p class="error" role="alert">{error}</p> : null;
}

/** A definition list of label → value, values shown as text. */
export function Fields({ rows }: { rows: [string, ComponentChildren][] }) {
  return (
    <dl class="fields">
      {rows.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v === undefined || v === null || v === '' ? <span class="muted">–</span> : v}</dd>
        </div>
      ))}
    </dl>
  );
}

/** Previous/next page links: the API has no totals, so "next" shows while a page is full. */
export function Pager({ page, full, to }: { page: number; full: boolean; to: (page: number) => string }) {
  return (
    <nav class="pager" aria-label="pages">
      {page > 0 ? <a href={to(page - 1)}>← newer</a> : <span class="muted">← newer</span>}
      <span>page {page + 1}</span>
      {full ? <a href={to(page + 1)} rel="next">older →</a> : <span class="muted">older →</span>}
    </nav>
  );
}

/** A button that runs an action, disabled while it runs, its error shown beside it. */
export function Action({ label, run, done, confirm: ask, cls }: { label: string; run: () => Promise<unknown>; done?: () => void; confirm?: string; cls?: string }) {
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string>();
  return (
    <span class="action">
      <button
        type="button"
        class={cls}
        disabled={busy}
        onClick={async () => {
          if (ask && !window.confirm(ask)) return;
          setBusy(true);
          setErr(undefined);
          try {
            await run();
            done?.();
          } catch (e) {
            setErr(message(e));
          } finally {
            setBusy(false);
          }
        }}
      >
        {label}
      </button>
      {err ? <span class="error">{err}</span> : null}
    </span>
  );
}

export function duration(ms?: number): string {
  if (ms === undefined || ms === null) return '–';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function bytes(n?: number): string {
  if (n === undefined || n === null) return '–';
  if (n < 1024) return `${n} B`;
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${u[i]}`;
}
