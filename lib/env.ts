import { ConfigError } from './errors.ts';

/**
 * Typed readers over an environment map, used only by each program's config.ts. Every
 * error names the variable and what it expects.
 */
export class EnvReader {
  constructor(private readonly env: Record<string, string | undefined>) {}

  str(name: string, def: string): string;
  str(name: string): string | undefined;
  str(name: string, def?: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v === '' ? def : v;
  }

  int(name: string, def: number, opts: { min?: number; max?: number } = {}): number {
    const raw = this.str(name);
    if (raw === undefined) return def;
    if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(`${name} must be an integer, got ${JSON.stringify(raw)}`);
    const n = Number(raw);
    if (opts.min !== undefined && n < opts.min) throw new ConfigError(`${name} must be at least ${opts.min}, got ${n}`);
    if (opts.max !== undefined && n > opts.max) throw new ConfigError(`${name} must be at most ${opts.max}, got ${n}`);
    return n;
  }

  bool(name: string, def: boolean): boolean {
    const raw = this.str(name);
    if (raw === undefined) return def;
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(raw)}`);
  }

  oneOf<T extends string>(name: string, def: T, allowed: readonly T[]): T {
    const raw = this.str(name);
    if (raw === undefined) return def;
    if (!(allowed as readonly string[]).includes(raw)) {
      throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
    }
    return raw as T;
  }
}
