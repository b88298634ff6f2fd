import fs from 'node:fs';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ZipReader, ZipRejectedError, inspectZip, type ZipLimits } from '../lib/zip.ts';

/** Marks a finished unpack; a directory without it is not used. */
const COMPLETE = '.complete';
/** Unpacks in progress (or left by a process that died during one) carry this in their name. */
const TMP = '.tmp-';

/**
 * Unpacks zip code packages into `<root>/<checksum>/`, once per checksum; tasks of the same
 * revision share the read-only copy. A package is checked against the limits before a byte
 * is written and counted while it is written; whatever a refused or failed unpack wrote is
 * removed. A refusal is a ZipRejectedError (the package's fault); any other error (the
 * disk is full, the work directory is unusable) is the runner's.
 */
export class CodeCache {
  private readonly inProgress = new Map<string, Promise<string>>();

  constructor(
    private readonly root: string,
    private readonly limits: ZipLimits,
  ) {
    // Unpacks cut short by a crash: nobody else uses this runner's work directory.
    let names: string[] = [];
    try {
      names = fs.readdirSync(root);
    } catch {
      return; // not made yet
    }
    for (const n of names) {
      if (!n.includes(TMP)) continue;
      try {
        fs.rmSync(path.join(root, n), { recursive: true, force: true });
      } catch {
        // Left for the next start: a leftover is only disk space, never used.
      }
    }
  }

  /** The unpacked directory of the package with this checksum, fetching it when absent. */
  async get(checksum: string, fetch: () => Promise<Buffer>): Promise<string> {
    if (!/^[0-9a-f]{32}$/.test(checksum)) throw new Error(`bad code checksum ${JSON.stringify(checksum)}`);
    const dir = path.join(this.root, checksum);
    if (fs.existsSync(path.join(dir, COMPLETE))) return dir;
    let p = this.inProgress.get(checksum);
    if (!p) {
      p = (async () => {
        const zip = await fetch();
        const tmp = `${dir}${TMP}${process.pid}-${Date.now()}`;
        try {
          await unzip(zip, tmp, this.limits);
          makeReadable(tmp);
          fs.writeFileSync(path.join(tmp, COMPLETE), '');
          fs.rmSync(dir, { recursive: true, force: true });
          fs.renameSync(tmp, dir);
        } catch (err) {
          try {
            fs.rmSync(tmp, { recursive: true, force: true });
          } catch {
            // The next start sweeps it (TMP); the unpack's own error is the one to report.
          }
          throw err;
        }
        return dir;
      })().finally(() => this.inProgress.delete(checksum));
      this.inProgress.set(checksum, p);
    }
    return p;
  }
}

/** Errors of writing an entry that come from the package's own tree (a file where a directory goes). */
const TREE_ERRORS = new Set(['ENOTDIR', 'EISDIR', 'EEXIST', 'ENAMETOOLONG', 'EINVAL']);

/**
 * Extracts a zip held in memory into `dest`: first checked with inspectZip (entries, declared
 * total, names), then unpacked with every byte counted against `limits.maxUnpackedBytes`,
 * aborting the moment the count passes it (declared sizes can lie). The caller removes
 * `dest` when this rejects.
 */
export async function unzip(zip: Buffer, dest: string, limits: ZipLimits): Promise<{ entries: number; bytes: number }> {
  await inspectZip(zip, limits);
  return extract(zip, dest, limits);
}

/**
 * The writing half of unzip, trusting nothing the zip declares: names are checked again and
 * every byte written is counted against `limits.maxUnpackedBytes`. Use unzip, which checks
 * the central directory first and so refuses most bad packages before writing anything.
 */
export async function extract(zip: Buffer, dest: string, limits: ZipLimits): Promise<{ entries: number; bytes: number }> {
  const root = path.resolve(dest);
  fs.mkdirSync(root, { recursive: true });
  const r = await ZipReader.open(zip);
  let bytes = 0;
  let entries = 0;
  try {
    for (let e = await r.next(); e; e = await r.next()) {
      entries++;
      const target = path.resolve(root, e.path);
      // checkEntryName already refused names that leave the package; this is the backstop.
      if (target !== root && !target.startsWith(root + path.sep)) {
        throw new ZipRejectedError(`entry ${JSON.stringify(e.path)} is not a relative path inside the package`);
      }
      try {
        if (e.directory) {
          fs.mkdirSync(target, { recursive: true });
          continue;
        }
        fs.mkdirSync(path.dirname(target), { recursive: true });
      } catch (err) {
        throw treeError(e.path, err);
      }
      const rs = await r.openStream(e);
      let readFailed: unknown;
      rs.on('error', (err) => (readFailed ??= err));
      const count = new Transform({
        transform(chunk: Buffer, _enc, cb: TransformCallback) {
          bytes += chunk.length;
          if (bytes > limits.maxUnpackedBytes) {
            return cb(new ZipRejectedError(`the zip unpacks to more than ${limits.maxUnpackedBytes} bytes; at most ${limits.maxUnpackedBytes} are allowed`));
          }
          cb(null, chunk);
        },
      });
      // Keep the executable bit from the zip's unix attributes, so scripts can run.
      const ws = fs.createWriteStream(target, { mode: e.mode & 0o111 ? 0o755 : 0o644 });
      try {
        await pipeline(rs, count, ws);
      } catch (err) {
        if (err instanceof ZipRejectedError) throw err;
        if (readFailed !== undefined && err === readFailed) {
          throw new ZipRejectedError(`entry ${JSON.stringify(e.path)} cannot be unpacked: ${(err as Error).message}`, err);
        }
        throw treeError(e.path, err);
      }
    }
  } finally {
    r.close();
  }
  return { entries, bytes };
}

/** A write error as the package's fault when its own tree caused it, else as it is (the runner's). */
function treeError(entry: string, err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && TREE_ERRORS.has(code)) {
    return new ZipRejectedError(`entry ${JSON.stringify(entry)} cannot be unpacked: ${(err as Error).message}`, err);
  }
  return err;
}

/**
 * Gives an unpacked package the modes its tasks need whatever the runner's umask: a task may
 * run as any user (the cluster's container.user), and without CAP_DAC_OVERRIDE even as root,
 * so everything must be readable and every directory searchable by all. Executable bits stay
 * as unpacked; nothing becomes writable; only directories and regular files are touched (a
 * chmod through a symlink would change its target).
 */
function makeReadable(dir: string): void {
  fs.chmodSync(dir, 0o755);
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) makeReadable(p);
    else if (e.isFile()) fs.chmodSync(p, fs.statSync(p).mode & 0o100 ? 0o755 : 0o644);
  }
}
