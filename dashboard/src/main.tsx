/**
 * The Gantry dashboard: a client of the public REST API only (src/api.ts), routed by the URL's
 * hash (`#/tasks/ID`) so the server serves one page and no path collides with the API's.
 * Everything the API returns is rendered as JSX text, never as HTML.
 */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, session, type Project } from './api.ts';
import { useRoute, type Route } from './router.ts';
import { Loading, useLoad } from './ui.tsx';
import { SignIn } from './pages/sign-in.tsx';
import { Home } from './pages/home.tsx';
import { CodeDetail, Codes } from './pages/codes.tsx';
import { Tasks } from './pages/tasks.tsx';
import { TaskDetail } from './pages/task.tsx';
import { ScheduleDetail, Schedules } from './pages/schedules.tsx';
import { ClusterDetail, Clusters } from './pages/clusters.tsx';
import { RunnerDetail, Runners } from './pages/runners.tsx';
import { Queue } from './pages/queue.tsx';
import './style.css';

const NAV: [string, string][] = [
  ['', 'Farm'],
  ['codes', 'Codes'],
  ['tasks', 'Tasks'],
  ['schedules', 'Schedules'],
  ['clusters', 'Clusters'],
  ['runners', 'Runners'],
  ['queue', 'Queue'],
];

/** Sections that show one project's things (the rest show the user's farm, clusters and runners). */
const PROJECT_SECTIONS = new Set(['codes', 'tasks', 'schedules', 'queue']);

function Page({ route, project }: { route: Route; project: boolean }) {
  const [section = '', id] = route.path;
  if (!project && PROJECT_SECTIONS.has(section)) {
    return (
      <p class="error" id="no-project">
        This user has no project yet: an operator makes one with <code>gantry project create --user EMAIL --name NAME</code>. The farm,
        clusters and runners need none.
      </p>
    );
  }
  switch (section) {
    case '':
      return <Home />;
    case 'codes':
      return id ? <CodeDetail id={id} /> : <Codes />;
    case 'tasks':
      return id ? <TaskDetail id={id} /> : <Tasks query={route.query} />;
    case 'schedules':
      return id ? <ScheduleDetail id={id} query={route.query} /> : <Schedules query={route.query} />;
    case 'clusters':
      return id ? <ClusterDetail id={id} /> : <Clusters />;
    case 'runners':
      return id ? <RunnerDetail id={id} /> : <Runners />;
    case 'queue':
      return <Queue />;
    default:
      return <p class="error">No such page.</p>;
  }
}

function Shell({ onProject }: { onProject: () => void }) {
  const route = useRoute();
  const projects = useLoad((signal) => api<{ projects: Project[] }>('/2/projects', { signal }), []);
  const list = projects.data?.projects;
  const current = session.project();
  useEffect(() => {
    if (list && list.length > 0 && !list.some((p) => p.id === current)) {
      session.setProject(list[0]!.id);
      onProject();
    }
  }, [list, current, onProject]);
  // A user with no project (an operator, say) still sees the farm, clusters and runners.
  const none = list?.length === 0;
  if (!list || (!none && !list.some((p) => p.id === current))) return <Loading error={projects.error} />;
  const section = route.path[0] ?? '';
  return (
    <>
      <header class="top">
        <a class="brand" href="#/">Gantry</a>
        <nav class="main">
          {NAV.map(([path, label]) => (
            <a key={path} href={`#/${path}`} class={section === path ? 'on' : ''}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who">
          {none ? (
            <span id="project" class="muted">
              no project
            </span>
          ) : (
            <label>
              <span class="sr">Project</span>
              <select
                id="project"
                value={current ?? ''}
                onChange={(e) => {
                  session.setProject((e.target as HTMLSelectElement).value);
                  onProject();
                  if (route.path.length > 1) location.hash = `#/${section}`;
                }}
              >
                {list.map((p) => (
                  <option key={p.id} value={p.id}>
                    {p.name} ({p.id.slice(-6)})
                  </option>
                ))}
              </select>
            </label>
          )}
          <button type="button" id="sign-out" onClick={() => session.signOut()}>
            Sign out
          </button>
        </span>
      </header>
      <main key={current}>
        <Page route={route} project={!none} />
      </main>
    </>
  );
}

function App() {
  const [, setN] = useState(0);
  const bump = () => setN((n) => n + 1);
  useEffect(() => {
    window.addEventListener('gantry:session', bump);
    return () => window.removeEventListener('gantry:session', bump);
  }, []);
  if (!session.token()) return <SignIn onSignedIn={bump} />;
  return <Shell onProject={bump} />;
}

// A token handed over in the fragment (`#oauth=...`, never sent to a server) is kept and
// removed from the address bar before anything renders.
const m = /^#oauth=([^&]+)/.exec(location.hash);
if (m) {
  session.signIn(decodeURIComponent(m[1]!));
  history.replaceState(null, '', location.pathname + location.search + '#/');
}
render(<App />, document.getElementById('app')!);
