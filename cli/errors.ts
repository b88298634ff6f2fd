/**
 * The command line's failures, each with the exit status it ends the command with (see
 * README.md, "The command line"): 1 a task waited for did not complete, 2 a usage error,
 * 3 the API refused the request, 4 the server could not be reached. main.ts turns them into
 * a message on stderr and that status; nothing else decides an exit status.
 */

/** Exit statuses, documented in README.md. */
export const EXIT = Object.freeze({ ok: 0, taskFailed: 1, usage: 2, api: 3, unreachable: 4 });

export abstract class CliError extends Error {
  abstract readonly exitCode: number;
  /** What to do next, printed under the message. */
  readonly hint: string | undefined;

  constructor(message: string, o: { hint?: string; cause?: unknown } = {}) {
    super(message, { cause: o.cause });
    this.name = new.target.name;
    this.hint = o.hint;
  }
}

/** Arguments or configuration the command cannot work with. */
export class CliUsageError extends CliError {
  readonly exitCode = EXIT.usage;
}

/** The API answered with an error status: its `msg`, the status, and a hint by status. */
export class ApiError extends CliError {
  readonly exitCode = EXIT.api;

  constructor(
    readonly status: number,
    readonly msg: string,
    /** The reply's JSON body, when it had one (printed as is under --json). */
    readonly body: unknown,
    hint?: string,
  ) {
    super(`${msg} (HTTP ${status})`, { hint: hint ?? hintFor(status) });
  }
}

/** No answer from the server: refused, unknown host, reset, or no reply in time. */
export class UnreachableError extends CliError {
  readonly exitCode = EXIT.unreachable;
}

/** A task the command waited for ended otherwise than complete. */
export class TaskFailedError extends CliError {
  readonly exitCode = EXIT.taskFailed;

  constructor(
    readonly taskId: string,
    readonly status: string,
    msg: string | undefined,
  ) {
    super(`task ${taskId} ended ${status}${msg ? `: ${msg}` : ''}`, { hint: `its log: gantry log ${taskId}; run it again: gantry retry ${taskId}` });
  }
}

/** What to do after an error status, by status. */
function hintFor(status: number): string | undefined {
  switch (status) {
    case 400:
      return 'fix the value the message names (see the command\'s --help)';
    case 401:
      return 'check your token: gantry login';
    case 403:
      return 'the resource is another user\'s or a quota is reached (ask your operator: gantry user quota)';
    case 404:
      return 'check the id or name (gantry codes, gantry tasks, gantry schedules) and the project id (gantry login)';
    case 409:
      return 'the task is not in a state that allows it: see gantry worker status TASK_ID';
    case 413:
      return 'the request is too large: make the payload or the code package smaller';
    case 429:
    case 503:
      return 'the server is busy or its database unreachable: retry later';
    default:
      return status >= 500 ? 'a server error: retry, and tell the operator if it persists' : undefined;
  }
}
