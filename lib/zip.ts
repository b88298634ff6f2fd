/**
 * Zip code packages as both programs see them: the control plane checks an upload, the
 * runner checks a package before it unpacks it (and counts the bytes while it does, since
 * the sizes a zip declares can lie). Everything here reads the central directory only; no
 * entry is decompressed.
 */
import type { Readable } from 'node:stream';
import yauzl from 'yauzl';
import { GantryError } from './errors.ts';

/** What a package may hold. */
export interface ZipLimits {
  /** Entries (files and directories) in the central directory. */
  maxEntries: number;
  /** Bytes of all files once unpacked. */
  maxUnpackedBytes: number;
}

/** 10,000 entries, 1 GiB unpacked. */
export const DEFAULT_ZIP_LIMITS: Readonly<ZipLimits> = Object.freeze({ maxEntries: 10_000, maxUnpackedBytes: 1024 * 1024 * 1024 });

/**
 * The zip cannot be used as a code package: unreadable, over a limit, or with an entry name
 * that is not a relative path inside the package. The message names the limit or the entry;
 * it is the package's fault, never the reader's.
 */
export class ZipRejectedError extends GantryError {
  constructor(message: string, cause?: unknown) {
    super('zip_rejected', message, { cause, kind: 'invalid' });
  }
}

/** One entry of the central directory, its name checked. */
export interface ZipEntry {
  /** Relative path inside the package, `/`-separated, without a trailing `/`. */
  readonly path: string;
  readonly directory: boolean;
  /** Uncompressed size as the central directory declares it (a claim, not a fact). */
  readonly declaredBytes: number;
  /** Unix permission bits from the entry's external attributes (0 when the zip has none). */
  readonly mode: number;
  readonly raw: yauzl.Entry;
}

/**
 * The name of an entry, checked: relative, inside the package (no absolute path, no `..`
 * segment, no drive letter, no NUL, not empty). Backslashes count as separators, as the
 * tools that write such zips mean them.
 */
export function checkEntryName(name: string): string {
  const bad = () => new ZipRejectedError(`entry ${JSON.stringify(name)} is not a relative path inside the package`);
  if (name.length === 0 || name.includes('\0')) throw bad();
  const slashed = name.replace(/\\/g, '/');
  if (slashed.startsWith('/') || /^[A-Za-z]:/.test(slashed)) throw bad();
  const parts = slashed.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw bad();
  // Only a directory entry may name the package root itself ("./").
  if (parts.length === 0 && !slashed.endsWith('/')) throw bad();
  return parts.join('/');
}

/** Compression methods yauzl can decompress: stored and deflate. */
const METHODS = new Set([0, 8]);

/**
 * The central directory of a zip held in memory, read entry by entry. yauzl's own name
 * checks are off (`decodeStrings: false`) so that names are judged, and refusals worded, by
 * checkEntryName; its check that an entry yields exactly its declared size stays on.
 */
export class ZipReader {
  private waiting: { resolve: (e: yauzl.Entry | undefined) => void; reject: (err: Error) => void } | undefined;
  private failed: Error | undefined;
  private ended = false;

  private constructor(private readonly z: yauzl.ZipFile) {
    // Listeners for the reader's whole life: an 'error' with no listener would throw.
    z.on('entry', (e: yauzl.Entry) => this.settle(undefined, e));
    z.on('end', () => {
      this.ended = true;
      this.settle(undefined, undefined);
    });
    z.on('error', (err: Error) => {
      this.failed = err;
      this.settle(err, undefined);
    });
  }

  /** Opens `zip`; ZipRejectedError when its end-of-central-directory record cannot be read. */
  static open(zip: Buffer): Promise<ZipReader> {
    return new Promise((resolve, reject) => {
      try {
        yauzl.fromBuffer(zip, { lazyEntries: true, decodeStrings: false, validateEntrySizes: true }, (err, z) => {
          if (err || !z) return reject(new ZipRejectedError(`the zip's central directory cannot be read: ${err?.message ?? 'no zip file'}`, err));
          resolve(new ZipReader(z));
        });
      } catch (err) {
        reject(new ZipRejectedError(`the zip's central directory cannot be read: ${(err as Error).message}`, err));
      }
    });
  }

  /** Entries the end-of-central-directory record announces. */
  get entryCount(): number {
    return this.z.entryCount;
  }

  /** The next entry, or undefined after the last; ZipRejectedError for a bad one. */
  async next(): Promise<ZipEntry | undefined> {
    const raw = await this.nextRaw();
    if (!raw) return undefined;
    // Decoded as stored (strict: backslashes kept), so a refusal quotes the name as written.
    const name = yauzl.getFileNameLowLevel(raw.generalPurposeBitFlag, raw.fileNameRaw, raw.extraFields, true);
    const p = checkEntryName(name);
    const directory = name.endsWith('/') || name.endsWith('\\');
    if (!directory) {
      if (raw.isEncrypted()) throw new ZipRejectedError(`entry ${JSON.stringify(name)} is encrypted; code packages cannot be`);
      if (!METHODS.has(raw.compressionMethod)) {
        throw new ZipRejectedError(`entry ${JSON.stringify(name)} uses compression method ${raw.compressionMethod}; only stored (0) and deflate (8) can be unpacked`);
      }
    }
    return { path: p, directory, declaredBytes: directory ? 0 : raw.uncompressedSize, mode: (raw.externalFileAttributes >>> 16) & 0o777, raw };
  }

  /** The entry's uncompressed bytes; yauzl fails the stream when they exceed its declared size. */
  openStream(e: ZipEntry): Promise<Readable> {
    return new Promise((resolve, reject) => {
      try {
        this.z.openReadStream(e.raw, (err, rs) => {
          if (err || !rs) return reject(new ZipRejectedError(`entry ${JSON.stringify(e.path)} cannot be read: ${err?.message ?? 'no data'}`, err));
          resolve(rs);
        });
      } catch (err) {
        reject(new ZipRejectedError(`entry ${JSON.stringify(e.path)} cannot be read: ${(err as Error).message}`, err));
      }
    });
  }

  close(): void {
    try {
      this.z.close();
    } catch {
      /* a buffer needs no closing */
    }
  }

  private nextRaw(): Promise<yauzl.Entry | undefined> {
    if (this.failed) return Promise.reject(this.wrap(this.failed));
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject: (err) => reject(this.wrap(err)) };
      this.z.readEntry();
    });
  }

  private settle(err: Error | undefined, e: yauzl.Entry | undefined): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (!w) return;
    if (err) w.reject(err);
    else w.resolve(e);
  }

  private wrap(err: Error): Error {
    return err instanceof ZipRejectedError ? err : new ZipRejectedError(`the zip's central directory cannot be read: ${err.message}`, err);
  }
}

/**
 * Checks a zip against `limits` from its central directory alone: how many entries, the
 * declared unpacked total, and that every entry name is a relative path inside the package.
 * Resolves with the counts; rejects with ZipRejectedError naming what is wrong. Declared
 * sizes can lie: whoever unpacks must still count the bytes it writes.
 */
export async function inspectZip(zip: Buffer, limits: ZipLimits): Promise<{ entries: number; unpackedBytes: number }> {
  const r = await ZipReader.open(zip);
  try {
    if (r.entryCount > limits.maxEntries) {
      throw new ZipRejectedError(`the zip holds ${r.entryCount} entries; at most ${limits.maxEntries} are allowed`);
    }
    let entries = 0;
    let unpackedBytes = 0;
    for (let e = await r.next(); e; e = await r.next()) {
      entries++;
      unpackedBytes += e.declaredBytes;
    }
    if (unpackedBytes > limits.maxUnpackedBytes) {
      throw new ZipRejectedError(`the zip unpacks to ${unpackedBytes} bytes; at most ${limits.maxUnpackedBytes} are allowed`);
    }
    return { entries, unpackedBytes };
  } finally {
    r.close();
  }
}
