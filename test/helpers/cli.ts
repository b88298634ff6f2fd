/**
 * Runs the real `gantry` binary (node bin/gantry.js) as a child process, as a user would:
 * in a directory of the test's own, with HOME set to another (so no iron.json of the
 * machine's is read), and only the environment the test gives it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { tempDir } from './db.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const GANTRY_BIN = path.join(ROOT, 'bin/gantry.js');

export interface CliResult {
  code: number | string;
  out: string;
  err: string;
}

export interface CliPlace {
  /** The working directory (where ./iron.json is read). */
  cwd: string;
  /** HOME (where ~/.iron.json is read). */
  home: string;
  /** The environment beside PATH and HOME. */
  env: Record<string, string>;
}

/** A fresh working directory and home for the CLI, removed at teardown. */
export function cliPlace(t: Test, env: Record<string, string> = {}): CliPlace {
  return { cwd: tempDir(t, 'gantry-cli-cwd-'), home: tempDir(t, 'gantry-cli-home-'), env };
}

export interface RunningCli {
  proc: ChildProcess;
  /** Writes to its stdin (on a terminal: typed at it). */
  input(text: string): void;
  out(): string;
  err(): string;
  /** Resolves once stdout holds text matching `re` (fails when the process ends first). */
  waitForOutput(re: RegExp, timeoutMs?: number): Promise<string>;
  done: Promise<CliResult>;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Starts `gantry ...args`; killed at teardown if still running. With `terminal`, it runs on a
 * pseudo-terminal (util-linux `script`): its stdin, stdout and stderr are that terminal, and
 * what it prints to either comes out on `out()`, in order.
 */
export function startCli(t: Test, place: CliPlace, args: string[], extraEnv: Record<string, string> = {}, o: { terminal?: boolean } = {}): RunningCli {
  const command = [process.execPath, GANTRY_BIN, ...args];
  const [file, argv] = o.terminal ? ['script', ['-q', '-e', '-c', command.map(quote).join(' '), '/dev/null']] : [command[0]!, command.slice(1)];
  const proc = spawn(file, argv, {
    cwd: place.cwd,
    env: { PATH: process.env.PATH ?? '', HOME: place.home, TERM: 'xterm', ...place.env, ...extraEnv },
    stdio: [o.terminal ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of waiters) w();
  });
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<CliResult>((resolve) => proc.on('close', (code, sig) => resolve({ code: code ?? sig ?? -1, out, err })));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await done;
    }
  });
  const waitForOutput = (re: RegExp, timeoutMs = 60_000) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        if (re.test(out)) {
          cleanup();
          resolve(out);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`gantry ${args.join(' ')}: no output matching ${re} within ${timeoutMs} ms; stdout: ${out}; stderr: ${err}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      void done.then(() => {
        if (!re.test(out)) {
          cleanup();
          reject(new Error(`gantry ${args.join(' ')} ended before printing ${re}; stdout: ${out}; stderr: ${err}`));
        }
      });
      check();
    });
  return { proc, input: (text) => proc.stdin!.write(text), out: () => out, err: () => err, waitForOutput, done };
}

/** Runs `gantry ...args` to its end. */
export function runCli(t: Test, place: CliPlace, args: string[], extraEnv: Record<string, string> = {}): Promise<CliResult> {
  return startCli(t, place, args, extraEnv).done;
}

/** The flags that point the CLI at a test API as its user. */
export function apiFlags(url: string, user: { token: string; projectId: string }): string[] {
  const u = new URL(url);
  return ['--host', u.hostname, '--port', u.port, '--protocol', 'http', '--token', user.token, '--project-id', user.projectId];
}
