import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface GantryProcess {
  proc: ChildProcess;
  url: string;
  projectId: string | undefined;
  token: string | undefined;
  /** Everything the process printed on stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  exited: Promise<number | string>;
}

/** How the process is started: the sources through tsx unless a test names another command. */
export interface GantryCommand {
  file: string;
  args: readonly string[];
  cwd: string;
}
const FROM_SOURCE: GantryCommand = { file: process.execPath, args: ['--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), 'start'], cwd: ROOT };

/**
 * Starts `gantry start` as a real child process with `env`, and resolves once it printed
 * its API base URL (with the project id and token of its first start). Killed at teardown.
 */
export async function startGantryProcess(
  t: Test,
  env: Record<string, string>,
  timeoutMs = 60000,
  onOutput?: (all: string) => void,
  command: GantryCommand = FROM_SOURCE,
): Promise<GantryProcess> {
  const proc = spawn(command.file, command.args, {
    cwd: command.cwd,
    env: { PATH: process.env.PATH ?? '', GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? sig ?? -1)));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
  });
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gantry did not start within ${timeoutMs} ms:\n${out}`)), timeoutMs);
    // The banner comes on stderr, the log lines on stdout: both are kept, in arrival order.
    const onData = (d: Buffer) => {
      out += d.toString();
      onOutput?.(out);
      if (/Press Ctrl-C to stop/.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`gantry exited (${code}) before it was ready:\n${out}`));
    });
  });
  await ready;
  const url = /API base URL: (\S+)\/2\//.exec(out)![1]!;
  return {
    proc,
    url,
    projectId: /project id:\s+([0-9a-f]{24})/.exec(out)?.[1],
    token: /token:\s+([0-9a-f]+)/.exec(out)?.[1],
    output: () => out,
    exited,
  };
}

/** Sends SIGKILL and waits until the process is gone. */
export async function kill9(g: GantryProcess): Promise<void> {
  g.proc.kill('SIGKILL');
  await g.exited;
}

/** A request to `g`'s API under its first project, as `token`; the reply's status and JSON body. */
export async function projectCall(g: GantryProcess, token: string, method: string, path: string, json?: unknown) {
  const res = await fetch(`${g.url}/2/projects/${g.projectId}${path}`, {
    method,
    headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
    body: json ? JSON.stringify(json) : undefined,
  });
  return { status: res.status, body: (await res.json()) as any };
}
