import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, GantryError } from './errors.ts';

/**
 * Secrets at rest (cloud credentials, registry auth): AES-256-GCM with node:crypto.
 *
 * Keys come as `keyid:base64-of-32-bytes`, comma separated (GANTRY_SECRET_KEYS, or the key
 * file of the embedded start). The first key encrypts; every key decrypts the values that
 * name it. Rotation: put a new key in front, run `gantry cluster reencrypt` (every value is
 * rewritten under the first key), then drop the old key.
 *
 * A sealed value is text, self-describing and versioned:
 *
 *     g1.<key id>.<nonce: 12 bytes base64url>.<tag: 16 bytes base64url>.<ciphertext base64url>
 *
 * The additional authenticated data is the header (`g1.<key id>`) plus a context the caller
 * gives (e.g. `cluster/<id>/docker_auth`): a value copied to another row or field, or whose
 * header was edited, fails authentication instead of decrypting into the wrong place.
 */

export const SECRETBOX_VERSION = 'g1';
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

export interface SecretKey {
  readonly id: string;
  readonly key: Buffer;
}

/** A sealed value cannot be opened: unknown key id, malformed, tampered, or another context. */
export class SecretDecryptError extends GantryError {
  constructor(message: string) {
    super('secret_undecryptable', message, { kind: 'misconfigured' });
  }
}

/**
 * Parses a key list (`id:base64,id2:base64`). Errors name the source and the entry's
 * position, never the key material.
 */
export function parseSecretKeys(spec: string, source = 'GANTRY_SECRET_KEYS'): SecretKey[] {
  const parts = spec
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (parts.length === 0) throw new ConfigError(`${source} must hold at least one key as keyid:base64-of-32-bytes`);
  const keys: SecretKey[] = [];
  parts.forEach((part, i) => {
    const at = part.indexOf(':');
    const id = at < 0 ? '' : part.slice(0, at);
    const b64 = at < 0 ? '' : part.slice(at + 1).trim();
    if (!KEY_ID.test(id)) {
      throw new ConfigError(`${source}: key ${i + 1} must look like keyid:base64, the id 1 to 32 letters, digits, '_' or '-'`);
    }
    if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(b64)) throw new ConfigError(`${source}: key ${id} is not base64`);
    const key = Buffer.from(b64.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (key.length !== 32) throw new ConfigError(`${source}: key ${id} must be 32 bytes (AES-256), got ${key.length}`);
    if (keys.some((k) => k.id === id)) throw new ConfigError(`${source}: key id ${id} appears twice`);
    keys.push({ id, key });
  });
  return keys;
}

/** A new key list entry with a random 32-byte key, e.g. for a rotation. */
export function generateSecretKey(id = `k${Date.now().toString(36)}`): string {
  if (!KEY_ID.test(id)) throw new ConfigError(`a key id must be 1 to 32 letters, digits, '_' or '-', got ${JSON.stringify(id)}`);
  return `${id}:${randomBytes(32).toString('base64')}`;
}

const b64u = (b: Buffer) => b.toString('base64url');

/** Encrypts with the first key; decrypts with whichever key a value names. */
export class SecretBox {
  readonly #keys: ReadonlyMap<string, Buffer>;
  /** The id of the key new values are sealed with. */
  readonly primaryKeyId: string;

  constructor(keys: readonly SecretKey[]) {
    if (keys.length === 0) throw new ConfigError('a SecretBox needs at least one key');
    this.#keys = new Map(keys.map((k) => [k.id, Buffer.from(k.key)]));
    this.primaryKeyId = keys[0]!.id;
  }

  static fromSpec(spec: string, source?: string): SecretBox {
    return new SecretBox(parseSecretKeys(spec, source));
  }

  /** The ids of all keys, the primary first. */
  get keyIds(): string[] {
    return [...this.#keys.keys()];
  }

  /** Seals `plaintext`, bound to `context` (which must be given again to open it). */
  seal(plaintext: string, context: string): string {
    const key = this.#keys.get(this.primaryKeyId)!;
    const header = `${SECRETBOX_VERSION}.${this.primaryKeyId}`;
    const nonce = randomBytes(NONCE_BYTES);
    const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
    c.setAAD(Buffer.from(`${header}|${context}`, 'utf8'));
    const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final()]);
    return `${header}.${b64u(nonce)}.${b64u(c.getAuthTag())}.${b64u(ct)}`;
  }

  /** Opens a sealed value; throws SecretDecryptError (naming no secret) when it cannot. */
  open(sealed: string, context: string): string {
    const { keyId, nonce, tag, ct } = parseSealed(sealed);
    const key = this.#keys.get(keyId);
    if (!key) {
      throw new SecretDecryptError(
        `a secret was sealed with key id ${keyId}, which is not among the configured keys (${this.keyIds.join(', ')}); add it to GANTRY_SECRET_KEYS`,
      );
    }
    try {
      const d = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
      d.setAAD(Buffer.from(`${SECRETBOX_VERSION}.${keyId}|${context}`, 'utf8'));
      d.setAuthTag(tag);
      return Buffer.concat([d.update(ct), d.final()]).toString('utf8');
    } catch {
      throw new SecretDecryptError(
        `a secret sealed with key id ${keyId} failed authentication: the key is wrong, or the value was altered or moved from another field`,
      );
    }
  }

  /** True when `sealed` is not under the primary key (a re-encryption would rewrite it). */
  isStale(sealed: string): boolean {
    return parseSealed(sealed).keyId !== this.primaryKeyId;
  }

  /**
   * Key rotation of one value: `sealed` sealed again under the primary key, or undefined
   * when it is under it already. Throws as open() does.
   */
  resealed(sealed: string, context: string): string | undefined {
    return this.isStale(sealed) ? this.seal(this.open(sealed, context), context) : undefined;
  }
}

/** The key id a sealed value names (no key needed). */
export function sealedKeyId(sealed: string): string {
  return parseSealed(sealed).keyId;
}

function parseSealed(sealed: string) {
  const parts = sealed.split('.');
  if (parts.length !== 5 || parts[0] !== SECRETBOX_VERSION || !KEY_ID.test(parts[1]!)) {
    throw new SecretDecryptError(`a stored secret is not in the ${SECRETBOX_VERSION} format (g1.<key id>.<nonce>.<tag>.<ciphertext>)`);
  }
  const nonce = Buffer.from(parts[2]!, 'base64url');
  const tag = Buffer.from(parts[3]!, 'base64url');
  if (nonce.length !== NONCE_BYTES || tag.length !== TAG_BYTES) {
    throw new SecretDecryptError(`a stored secret sealed with key id ${parts[1]} has a malformed nonce or tag`);
  }
  return { keyId: parts[1]!, nonce, tag, ct: Buffer.from(parts[4]!, 'base64url') };
}

/** The key file of the embedded start, in the data directory. */
export const SECRET_KEY_FILE = 'secret-keys';

/**
 * The embedded default: when no keys are configured, a key list kept in
 * `<dataDir>/secret-keys` (mode 0600, the same `id:base64` format, so a rotation edits the
 * file the way it edits GANTRY_SECRET_KEYS). Created with a random key on first use; the
 * create is exclusive, so two processes starting at once agree on one key.
 */
export function ensureSecretKeyFile(dataDir: string): { file: string; spec: string; created: boolean } {
  const file = path.join(dataDir, SECRET_KEY_FILE);
  fs.mkdirSync(dataDir, { recursive: true });
  let created = false;
  try {
    fs.writeFileSync(file, generateSecretKey(`local-${randomBytes(4).toString('hex')}`) + '\n', { mode: 0o600, flag: 'wx' });
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  return { file, spec: fs.readFileSync(file, 'utf8').trim(), created };
}

/**
 * The SecretBox a process uses: the configured key list (GANTRY_SECRET_KEYS) when given,
 * else the data directory's key file. `warn` hears about a key file that others can read
 * and about a key file used beside PostgreSQL (every replica needs the same keys).
 */
export function loadSecretBox(o: {
  keys: string | undefined;
  dataDir: string;
  /** True with DATABASE_URL: several replicas may share the database. */
  shared?: boolean;
  warn?: (msg: string, fields: Record<string, unknown>) => void;
}): SecretBox {
  if (o.keys !== undefined && o.keys.trim() !== '') return SecretBox.fromSpec(o.keys, 'GANTRY_SECRET_KEYS');
  const { file, spec, created } = ensureSecretKeyFile(o.dataDir);
  if ((fs.statSync(file).mode & 0o077) !== 0) o.warn?.('the secret key file is readable by other users; chmod 600 it', { file });
  if (o.shared) {
    o.warn?.('GANTRY_SECRET_KEYS is not set: secrets are sealed with a key from this replica\'s data directory; every replica needs the same keys', {
      file,
      created,
    });
  }
  return SecretBox.fromSpec(spec, file);
}
