import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';

const BIN = '/usr/lib/postgresql/15/bin';

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * A private PostgreSQL 15 server for one test (its own data directory and port), so a test
 * can stop and start it without disturbing the shared server. Runs as the `postgres` user
 * when started as root, since PostgreSQL refuses to run as root.
 */
export class PgInstance {
  private constructor(
    readonly dir: string,
    readonly port: number,
  ) {}

  static async create(t: Test): Promise<PgInstance> {
    if (!fs.existsSync(path.join(BIN, 'initdb'))) {
      throw new Error(`PostgreSQL 15 is required for this test: ${BIN}/initdb not found (scripts/services.sh installs it)`);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-pginst-'));
    fs.chmodSync(dir, 0o755);
    const inst = new PgInstance(dir, await freePort());
    inst.asPg('chown', [], true);
    inst.asPg(`${BIN}/initdb`, ['-D', inst.dataDir, '-U', 'gantry', '--auth=trust', '-E', 'UTF8', '--no-sync']);
    t.teardown(() => {
      try {
        inst.asPg(`${BIN}/pg_ctl`, ['-D', inst.dataDir, '-m', 'immediate', 'stop']);
      } catch {
        /* already stopped */
      }
      fs.rmSync(dir, { recursive: true, force: true });
    });
    inst.start();
    return inst;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get url(): string {
    return `postgres://gantry@127.0.0.1:${this.port}/postgres`;
  }

  private asPg(cmd: string, args: string[], chown = false): void {
    const root = process.getuid?.() === 0;
    if (chown) {
      if (root) execFileSync('chown', ['-R', 'postgres:postgres', this.dir]);
      return;
    }
    const full = root ? ['runuser', '-u', 'postgres', '--', cmd, ...args] : [cmd, ...args];
    execFileSync(full[0]!, full.slice(1), { stdio: 'pipe' });
  }

  /** Starts the server and waits until it accepts connections. */
  start(): void {
    this.asPg(`${BIN}/pg_ctl`, [
      '-D', this.dataDir, '-w', '-t', '60', '-l', path.join(this.dir, 'server.log'),
      '-o', `-p ${this.port} -c listen_addresses=127.0.0.1 -k ${this.dir} -c fsync=off`,
      'start',
    ]);
  }

  /** The server's processes: the postmaster and its children. */
  private pids(): number[] {
    const main = Number(fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    const kids = execFileSync('pgrep', ['-P', String(main)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
    return [main, ...kids];
  }

  /** Freezes every server process (SIGSTOP): connections stay open and nothing answers. */
  freeze(): void {
    for (const pid of this.pids()) process.kill(pid, 'SIGSTOP');
  }

  thaw(): void {
    for (const pid of this.pids()) process.kill(pid, 'SIGCONT');
  }

  /** Stops the server at once, dropping every connection (as a crash or failover would). */
  stop(): void {
    this.asPg(`${BIN}/pg_ctl`, ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop']);
  }
}
