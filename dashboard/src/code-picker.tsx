import type { ComponentChildren } from 'preact';
import { api, pp, type Code } from './api.ts';
import { Loading, useLoad } from './ui.tsx';

/** A form that names a code package: shown once the project's packages (the first 100) are loaded, and only if there is one. */
export function WithCodes({ children }: { children: (codes: Code[]) => ComponentChildren }) {
  const codes = useLoad((signal) => api<{ codes: Code[] }>(pp('/codes'), { signal, query: { per_page: 100 } }), []);
  if (!codes.data) return <Loading error={codes.error} />;
  if (codes.data.codes.length === 0) return <p class="muted">Upload a code package first.</p>;
  return <>{children(codes.data.codes)}</>;
}

/** The form field `code_name`: a choice among `codes`, `preset` chosen first. */
export function CodeSelect({ codes, preset }: { codes: Code[]; preset?: string | undefined }) {
  return (
    <label>
      Code
      <select name="code_name">
        {codes.map((c) => (
          // `selected` (not the select's value) so a re-render never undoes the user's choice.
          <option key={c.id} value={c.name} selected={c.name === preset}>
            {c.name}
          </option>
        ))}
      </select>
    </label>
  );
}
