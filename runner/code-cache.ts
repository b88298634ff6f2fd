import fs from 'node:fs';
import path from 'node:path';
import yauzl from 'yauzl';

/**
 * Unpacks zip code packages into `<workDir>/code/<checksum>/`, once per checksum; tasks of
 * the same revision share the read-only copy.
 */
export class CodeCache {
  private readonly inProgress = new Map<string, Promise<string>>();

  constructor(private readonly root: string) {}

  /** The unpacked directory of the package with this checksum, fetching it when absent. */
  async get(checksum: string, fetch: () => Promise<Buffer>): Promise<string> {
    if (!/^[0-9a-f]{32}$/.test(checksum)) throw new Error(`bad code checksum ${JSON.stringify(checksum)}`);
    const dir = path.join(this.root, checksum);
    if (fs.existsSync(path.join(dir, '.complete'))) return dir;
    let p = this.inProgress.get(checksum);
    if (!p) {
      p = (async () => {
        const zip = await fetch();
        const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
        await unzip(zip, tmp);
        fs.writeFileSync(path.join(tmp, '.complete'), '');
        fs.rmSync(dir, { recursive: true, force: true });
        fs.renameSync(tmp, dir);
        return dir;
      })().finally(() => this.inProgress.delete(checksum));
      this.inProgress.set(checksum, p);
    }
    return p;
  }
}

/** Extracts a zip held in memory into `dest`, refusing entries that would escape it. */
export function unzip(zip: Buffer, dest: string): Promise<void> {
  fs.mkdirSync(dest, { recursive: true });
  return new Promise((resolve, reject) => {
    yauzl.fromBuffer(zip, { lazyEntries: true }, (err, z) => {
      if (err || !z) return reject(err ?? new Error('unreadable zip'));
      z.on('error', reject);
      z.on('end', () => resolve());
      z.on('entry', (entry: yauzl.Entry) => {
        const target = path.resolve(dest, entry.fileName);
        if (!target.startsWith(path.resolve(dest) + path.sep) && target !== path.resolve(dest)) {
          return reject(new Error(`zip entry ${entry.fileName} escapes the code directory`));
        }
        if (entry.fileName.endsWith('/')) {
          fs.mkdirSync(target, { recursive: true });
          return z.readEntry();
        }
        fs.mkdirSync(path.dirname(target), { recursive: true });
        z.openReadStream(entry, (e, rs) => {
          if (e || !rs) return reject(e ?? new Error('unreadable zip entry'));
          // Keep the executable bit from the zip's unix attributes, so scripts can run.
          const mode = (entry.externalFileAttributes >>> 16) & 0o777;
          const ws = fs.createWriteStream(target, { mode: mode & 0o111 ? 0o755 : 0o644 });
          rs.pipe(ws);
          ws.on('error', reject);
          ws.on('finish', () => z.readEntry());
        });
      });
      z.readEntry();
    });
  });
}
