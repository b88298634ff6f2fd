/**
 * The command line's commands, parsed by commander: the IronWorker verbs under
 * `gantry worker <verb>` (as `iron worker <verb>`), the same verbs at the top level where no
 * admin command has their name (`status` is the admin one there), `login`, and the lists.
 * `runCli` returns the exit status; main.ts is the only caller that touches the process.
 */
import { Command, CommanderError, Option } from 'commander';
import { ADMIN_HELP } from './admin-help.ts';
import type { ConfigPlaces } from './config.ts';
import { Context, type GlobalOptions, type Io } from './context.ts';
import { ApiError, CliError, EXIT } from './errors.ts';
import { fileText, int, keyValue, time } from './commands/args.ts';
import { codes, clusters, runners, schedules, tasks, TASK_STATUSES } from './commands/lists.ts';
import { login } from './commands/login.ts';
import { cancelSchedule, schedule } from './commands/schedule.ts';
import { cancel, log, queue, retry, status } from './commands/tasks.ts';
import { upload } from './commands/upload.ts';

/** Exit status for a failure that is none of the documented ones (a bug: the message says where). */
const EXIT_INTERNAL = 5;

const EXIT_HELP = `
Exit status: 0 ok; 1 the task failed (queue --wait: it ended error, timeout, killed or cancelled);
2 usage error; 3 the API refused the request (its msg is printed); 4 the server cannot be reached;
5 an unexpected failure of the command itself.

Configuration, per setting, from the first that has it: the flags, ./iron.json, IRON_WORKER_* and
IRON_* (TOKEN, PROJECT_ID, HOST, PORT, PROTOCOL), ~/.iron.json; default http://127.0.0.1:8080.
`;

type Action = (ctx: Context, ...args: any[]) => Promise<void>;

export interface CliEnvironment {
  io: Io;
  places: ConfigPlaces;
  version: string;
}

/** Parses `argv` (without node and the script), runs the command, and returns its exit status. */
export async function runCli(argv: string[], env: CliEnvironment): Promise<number> {
  const { io } = env;
  let jsonWanted = false;
  const program = new Command('gantry')
    .description('Gantry: the IronWorker v2 API on your own machines. The client commands talk to the API with a token.')
    .version(env.version, '-V, --version')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Usage errors look like every other error of the command: "gantry: ...".
      outputError: (s, write) => write(s.replace(/^error: /, 'gantry: ')),
    })
    .showHelpAfterError('(gantry --help lists the commands; gantry COMMAND --help its options)')
    .option('--token <token>', 'OAuth token')
    .option('--project-id <id>', 'project id')
    .option('--host <host>', 'API host')
    .option('--port <port>', 'API port')
    .addOption(new Option('--protocol <protocol>', 'http or https').choices(['http', 'https']))
    .option('--json', "print the API's JSON reply on stdout")
    .addHelpText('after', `${EXIT_HELP}${ADMIN_HELP}`);

  const run =
    (fn: Action) =>
    async (...args: unknown[]) => {
      const cmd = args[args.length - 1] as Command;
      const flags = cmd.optsWithGlobals<GlobalOptions>();
      jsonWanted = Boolean(flags.json);
      const ctx = new Context(io, env.places, flags, `gantry-cli/${env.version}`);
      await fn(ctx, ...args.slice(0, -1));
    };

  program
    .command('login')
    .description('check a token against the API and write it to ./iron.json (or ~/.iron.json); prompts on a terminal')
    .option('--global', 'write ~/.iron.json instead of ./iron.json')
    .action(run((ctx, o) => login(ctx, o)));

  addVerbs(program, run, { top: true });
  const worker = program.command('worker').description('the iron worker verbs: gantry worker <verb> works as iron worker <verb>');
  addVerbs(worker, run, { top: false });

  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version succeed; help shown because a command was missing (gantry worker) is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.ok;
      return err.code === 'commander.help' && err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof CliError) {
      if (jsonWanted && err instanceof ApiError && err.body !== undefined) io.stdout.write(`${JSON.stringify(err.body)}\n`);
      io.stderr.write(`gantry: ${err.message}\n${err.hint ? `  ${err.hint}\n` : ''}`);
      return err.exitCode;
    }
    io.stderr.write(`gantry: ${(err as Error)?.stack ?? String(err)}\n`);
    return EXIT_INTERNAL;
  }
}

/** The IronWorker verbs and the lists, under `parent`; `status` only under `worker` (the top-level one is the admin command). */
function addVerbs(parent: Command, run: (fn: Action) => (...args: unknown[]) => Promise<void>, o: { top: boolean }): void {
  const priority = () => new Option('--priority <n>', '0, 1 or 2 (default: the code package\'s)').argParser(int(0, 2));
  const payloads = (c: Command) =>
    c.option('--payload <text>', 'given to the task as the file PAYLOAD_FILE').option('--payload-file <file>', 'the payload from a file', fileText);
  const taskOptions = (c: Command) =>
    payloads(c)
      .addOption(priority())
      .option('--timeout <seconds>', 'seconds before the task is stopped (default 3600)', int(1, 2147483647))
      .option('--delay <seconds>', 'seconds before the task may run', int(0, 604800))
      .option('--cluster <name>', 'the cluster to run on')
      .option('--label <text>', 'a label of your own (e.g. KEY=VALUE)');

  parent
    .command('upload')
    .description('upload a code package: an image and a command, with a directory (zipped for you) or a zip file')
    .argument('[path]', 'a directory or a .zip file')
    .option('--name <name>', 'the code package (default: the directory or zip file name)')
    .option('--image <image>', 'the Docker image it runs in (required on a first upload)')
    .option('--command <command>', 'the command run in the image')
    .option('--config-file <file>', 'a file given to every task as CONFIG_FILE', fileText)
    .option('--max-concurrency <n>', 'the most tasks running at once (0 or -1: no limit)', int(-1, 100000))
    .option('--retries <n>', 'times a failed task is retried', int(0, 10))
    .option('--retries-delay <seconds>', 'seconds before a retry', int(0, 604800))
    .addOption(priority())
    .option('--env <KEY=VALUE>', 'an environment variable of every task (repeatable)', keyValue)
    .addHelpText('after', '\nExamples:\n  gantry upload --name hello --image busybox --command "cat $PAYLOAD_FILE"\n  gantry upload ./hello --image node:20 --command "node main.js"')
    .action(run((ctx, path, opts) => upload(ctx, path, opts)));

  taskOptions(parent.command('queue').description('queue a task of a code package').argument('<code>', 'the code package\'s name'))
    .option('--wait', 'follow the task\'s log to stdout until it ends; exit 1 unless it completes')
    .action(run((ctx, code, opts) => queue(ctx, code, opts)));

  taskOptions(parent.command('schedule').description('schedule tasks of a code package: once, every N seconds, or by cron').argument('<code>', 'the code package\'s name'))
    .option('--start-at <time>', 'the first run (RFC 3339 or epoch seconds; default now)', time)
    .option('--end-at <time>', 'no run after this time', time)
    .option('--run-every <seconds>', 'seconds between runs (at least 60)', int(1, 315360000))
    .option('--run-times <n>', 'the most runs', int(1, 2147483647))
    .option('--cron <expr>', 'instead of --run-every: a five-field cron expression, e.g. "0 3 * * *"')
    .option('--timezone <zone>', 'the IANA zone --cron is read in (default UTC)')
    .action(run((ctx, code, opts) => schedule(ctx, code, opts)));

  if (!o.top) {
    parent
      .command('status')
      .description('a task\'s status')
      .argument('<task-id>')
      .action(run((ctx, id) => status(ctx, id)));
  }

  parent
    .command('log')
    .description('a task\'s log; -f follows it live until the task ends')
    .argument('<task-id>')
    .option('-f, --follow', 'follow the log as it is written')
    .action(run((ctx, id, opts) => log(ctx, id, opts)));

  parent.command('cancel').description('cancel a queued or running task').argument('<task-id>').action(run((ctx, id) => cancel(ctx, id)));
  parent
    .command('retry')
    .description('queue a finished task again, as a new task (prints its id)')
    .argument('<task-id>')
    .option('--delay <seconds>', 'seconds before it may run', int(0, 604800))
    .action(run((ctx, id, opts) => retry(ctx, id, opts)));
  parent.command('unschedule').description('cancel a schedule').argument('<schedule-id>').action(run((ctx, id) => cancelSchedule(ctx, id)));

  const paged = (c: Command) => c.option('--page <n>', 'page, from 0', int(0, 100)).option('--per-page <n>', 'items per page (default 30)', int(1, 100));
  paged(parent.command('codes').description('list code packages')).action(run((ctx, opts) => codes(ctx, opts)));
  const t = paged(parent.command('tasks').description('list tasks, newest first'));
  for (const s of TASK_STATUSES) t.option(`--${s}`, `${s} tasks (with other status flags: any of them)`);
  t.option('--code <name>', 'tasks of this code package')
    .option('--from <time>', 'created at or after (RFC 3339 or epoch seconds)', time)
    .option('--to <time>', 'created before', time)
    .action(run((ctx, opts) => tasks(ctx, opts)));
  paged(parent.command('schedules').description('list schedules')).action(run((ctx, opts) => schedules(ctx, opts)));
  parent.command('clusters').description('list your clusters and those shared with you').action(run((ctx) => clusters(ctx)));
  parent
    .command('runners')
    .description('list the runners of your clusters (POST /2/workers.get_all)')
    .option('--last-seen <seconds>', 'only runners seen in this many seconds (default 3600; 0: all)', int(0, 315360000))
    .action(run((ctx, opts) => runners(ctx, opts)));
}
