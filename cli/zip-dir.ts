/**
 * Zips a directory into a code package with yazl, keeping each file's Unix mode (an
 * executable script stays executable when the runner unpacks it). Symbolic links and other
 * non-files are left out: a link could name a file outside the directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import yazl from 'yazl';
import { CliUsageError } from './errors.ts';

interface Item {
  name: string;
  abs: string;
  dir: boolean;
  mode: number;
}

/** The files and directories under `dir`, relative and `/`-separated, sorted. */
function walk(dir: string, rel = ''): Item[] {
  const out: Item[] = [];
  for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const name = rel ? `${rel}/${entry.name}` : entry.name;
    const abs = path.join(dir, name);
    if (entry.isDirectory()) {
      out.push({ name, abs, dir: true, mode: fs.statSync(abs).mode });
      out.push(...walk(dir, name));
    } else if (entry.isFile()) {
      out.push({ name, abs, dir: false, mode: fs.statSync(abs).mode });
    }
  }
  return out;
}

/** A zip of everything under `dir`, and how many entries it holds. */
export async function zipDirectory(dir: string): Promise<{ zip: Buffer; entries: number }> {
  const items = walk(dir);
  if (items.length === 0) throw new CliUsageError(`${dir} is empty: there is nothing to upload`);
  const zip = new yazl.ZipFile();
  // One fixed time: the package's content, not its files' times, is what it is.
  const mtime = new Date('1980-01-01T00:00:00Z');
  for (const it of items) {
    if (it.dir) zip.addEmptyDirectory(it.name, { mtime, mode: it.mode });
    else zip.addFile(it.abs, it.name, { mtime, mode: it.mode });
  }
  zip.end();
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    zip.outputStream.on('data', (c: Buffer) => chunks.push(c));
    zip.outputStream.on('end', resolve);
    zip.outputStream.on('error', reject);
    zip.on('error', reject);
  });
  return { zip: Buffer.concat(chunks), entries: items.length };
}
