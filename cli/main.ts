/**
 * The `gantry` client commands (bin/gantry.js sends them here): the only module of the
 * command line that touches `process` (argv, the environment, the streams, the exit status).
 * It loads nothing of the control plane, so `gantry --help` and the verbs start quickly.
 */
import fs from 'node:fs';
import os from 'node:os';
import readline from 'node:readline/promises';
import { Writable } from 'node:stream';
import { runCli } from './program.ts';

const version = (JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// A reader that went away (`gantry tasks | head -1`) has what it wanted: stop quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

// One reader of stdin for every prompt: lines typed (or pasted) ahead of a question wait for it.
let lines: AsyncIterator<string> | undefined;
let rl: readline.Interface | undefined;
let muted = false;

const code = await runCli(process.argv.slice(2), {
  version,
  places: { env: process.env, cwd: process.cwd(), home: process.env.HOME || os.homedir() },
  io: {
    stdout: process.stdout,
    stderr: process.stderr,
    stdinIsTTY: Boolean(process.stdin.isTTY),
    async ask(question, o = {}) {
      // A secret is read without echo: readline echoes what is typed to its output, which
      // passes nothing on while muted but the end of the line.
      if (!rl) {
        rl = readline.createInterface({
          input: process.stdin,
          output: new Writable({
            write(chunk: Buffer, _enc, done) {
              if (!muted || /^\r?\n$/.test(chunk.toString())) process.stderr.write(chunk);
              done();
            },
          }),
          terminal: true,
        });
        // Ctrl-C at a prompt (the terminal is raw while readline reads it) stops the command as it would anywhere else.
        rl.on('SIGINT', () => {
          process.stderr.write('\n');
          process.exit(130);
        });
      }
      lines ??= rl[Symbol.asyncIterator]();
      process.stderr.write(question);
      muted = Boolean(o.secret);
      try {
        const next = await lines.next();
        return next.done ? '' : next.value;
      } finally {
        muted = false;
      }
    },
  },
});
rl?.close();
// Exit once stdout has drained (a pipe may still hold the end of a log); nothing else is left to wait for.
process.exitCode = code;
process.stdout.write('', () => process.exit(code));
