/**
 * A small zip writer for tests that need zips no ordinary tool writes: names that climb out
 * of the package, a central directory that lies about sizes, unknown compression methods.
 */
import { readdir } from 'node:fs/promises';
import zlib from 'node:zlib';
import { crc32 } from '../../lib/crc32.ts';

export interface ZipItem {
  /** As stored (no checks): "../x", "/etc/passwd", "a\0b" are all fine here. */
  name: string;
  /** File content (ignored for directories). */
  data?: Buffer;
  /** A directory entry (its name should end with "/"). */
  dir?: boolean;
  /** Unix permission bits (default 0644, directories 0755). */
  mode?: number;
  /** 0 stored, 8 deflate (default), or any other number to claim a method (data stored as is). */
  method?: number;
  /** The uncompressed size the headers claim, instead of the true one. */
  declaredSize?: number;
}

/** A zip of `items`, in order, with UTF-8 names. */
export function makeZip(items: ZipItem[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const it of items) {
    const name = Buffer.from(it.name, 'utf8');
    const raw = it.dir ? Buffer.alloc(0) : (it.data ?? Buffer.alloc(0));
    const method = it.dir ? 0 : (it.method ?? 8);
    const body = method === 8 ? zlib.deflateRawSync(raw) : raw;
    const crc = crc32(raw);
    const size = it.declaredSize ?? raw.length;
    const flags = 0x800; // names are UTF-8
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(0, 10); // time
    local.writeUInt16LE(0x21, 12); // date: 1980-01-01
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(0, 28);
    locals.push(local, name, body);

    const mode = it.mode ?? (it.dir ? 0o755 : 0o644);
    const type = it.dir ? 0o040000 : 0o100000;
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by: unix
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(flags, 8);
    central.writeUInt16LE(method, 10);
    central.writeUInt16LE(0, 12);
    central.writeUInt16LE(0x21, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(size, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt16LE(0, 30);
    central.writeUInt16LE(0, 32);
    central.writeUInt16LE(0, 34);
    central.writeUInt16LE(0, 36);
    central.writeUInt32LE((((type | mode) << 16) | (it.dir ? 0x10 : 0)) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);
    offset += local.length + name.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(0, 4);
  end.writeUInt16LE(0, 6);
  end.writeUInt16LE(items.length, 8);
  end.writeUInt16LE(items.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  end.writeUInt16LE(0, 20);
  return Buffer.concat([...locals, cd, end]);
}

/** Files (relative paths) and directories under `dir`, recursively; [] when it does not exist. */
export async function treeOf(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { recursive: true })).map(String).sort();
  } catch {
    return [];
  }
}
