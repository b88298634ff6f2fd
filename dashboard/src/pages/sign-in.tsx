import { useState } from 'preact/hooks';
import { api, session, type Project } from '../api.ts';
import { message } from '../ui.tsx';

/** Sign in with an OAuth token: checked against GET /2/projects, then kept in sessionStorage. */
export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [err, setErr] = useState<string>();
  const [busy, setBusy] = useState(false);
  return (
    <main class="signin">
      <h1>Gantry</h1>
      <form
        id="sign-in"
        onSubmit={async (e) => {
          e.preventDefault();
          const token = ((e.currentTarget as HTMLFormElement).elements.namedItem('token') as HTMLInputElement).value.trim();
          if (!token) return;
          setBusy(true);
          setErr(undefined);
          session.signIn(token);
          try {
            const { projects } = await api<{ projects: Project[] }>('/2/projects');
            if (projects[0] && !projects.some((p) => p.id === session.project())) session.setProject(projects[0].id);
            onSignedIn();
          } catch (x) {
            sessionStorage.removeItem('gantry.oauth');
            setErr(message(x));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="token">OAuth token</label>
        <input id="token" name="token" type="password" autocomplete="off" required />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {err ? <p class="error" role="alert">{err}</p> : null}
        <p class="muted">The token is kept in this tab only (session storage) and sent in the Authorization header.</p>
      </form>
    </main>
  );
}
