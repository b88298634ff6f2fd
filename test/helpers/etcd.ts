import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { Etcd3 } from 'etcd3';
import { freePort } from './pg-instance.ts';
import { RUN_ID, etcdEndpoint } from './services.ts';

let prefixes = 0;

/** A key prefix of its own for one test on the shared etcd; its keys are deleted at teardown. */
export function etcdPrefix(t: Test, endpoint = etcdEndpoint()): string {
  const prefix = `/gantry-test/${RUN_ID}-${++prefixes}/`;
  t.teardown(async () => {
    const c = new Etcd3({ hosts: endpoint });
    await c.delete().prefix(prefix).exec().catch(() => undefined);
    c.close();
  });
  return prefix;
}

/**
 * A private etcd 3.4 server for one test (own data directory and ports), so a test can
 * stop it and start it again without disturbing the shared one. Stopped at teardown.
 */
export class EtcdInstance {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private log = '';

  private constructor(
    readonly dir: string,
    readonly clientPort: number,
    readonly peerPort: number,
  ) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  static async create(t: Test): Promise<EtcdInstance> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-etcd-'));
    const inst = new EtcdInstance(dir, await freePort(), await freePort());
    t.teardown(async () => {
      await inst.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    await inst.start();
    return inst;
  }

  async start(): Promise<void> {
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const proc = spawn(
      'etcd',
      [
        '--name', 'gantry-test',
        '--data-dir', path.join(this.dir, 'data'),
        '--listen-client-urls', this.endpoint,
        '--advertise-client-urls', this.endpoint,
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `gantry-test=${peer}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.proc = proc;
    proc.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.exited = new Promise((resolve) => proc.on('exit', () => resolve()));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`etcd exited at start:\n${this.log.slice(-2000)}`);
      try {
        const r = await fetch(`${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.ok && ((await r.json()) as { health?: string }).health === 'true') return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`etcd did not become healthy within 20 s:\n${this.log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Freezes the server (SIGSTOP): connections stay open and nothing is answered, as with a hung host. */
  freeze(): void {
    this.proc?.kill('SIGSTOP');
  }

  /** Lets a frozen server run again. */
  thaw(): void {
    this.proc?.kill('SIGCONT');
  }

  /** Kills the server (SIGKILL: no goodbye to clients) and waits until it is gone. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill('SIGCONT');
    p.kill('SIGKILL');
    await this.exited;
  }
}
