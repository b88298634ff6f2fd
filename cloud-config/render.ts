import fs from 'node:fs';
import { isAlias, isMap, isScalar, isSeq, parseDocument } from 'yaml';
import { GantryError } from '../lib/errors.ts';

/**
 * User data for runner hosts: the default Flatcar `#cloud-config` (default.yaml) or a cluster's
 * own `user_data`, with IronWorker's `{{.Name}}` variables filled in at launch.
 *
 * Rendering is textual: the template's bytes are kept and only the variables are replaced, each
 * escaped for the YAML (or JSON) context it lands in, found by a small scanner. The document is
 * never re-serialized, because a YAML 1.1 round trip rewrites `permissions: 0644` as 420
 * (which coreos-cloudinit reads as mode 0420) and `off` as false. After rendering, the result
 * is parsed twice (with harmless stand-in values and with the real ones) and must have the
 * same structure, so a value can never add a key, a unit or a line that the template did not
 * have.
 */

/** EC2's limit on user data: 16 KB, counted on the raw bytes before base64. */
export const USER_DATA_MAX_BYTES = 16384;

/**
 * Template variables. The first five are IronWorker's; the rest are Gantry's (a runner needs
 * to know where the control plane is and how to size itself). `DockerConfigJson` is derived:
 * a complete Docker `config.json` (`{"auths": {...}}`) built from DockerAuth and DockerEmail
 * for the registry of RunnerImage.
 */
export const TEMPLATE_VARIABLES = [
  'ClusterId',
  'ClusterToken',
  'RunnersVersion',
  'DockerAuth',
  'DockerEmail',
  'ControlPlane',
  'ControlPlaneTls',
  'RunnerImage',
  'RunnersPerInstance',
  'Memory',
  'DockerConfigJson',
] as const;
export type TemplateVariable = (typeof TEMPLATE_VARIABLES)[number];

/** IronWorker's variables, in the order the Clusters API documents them; the others are Gantry's. */
export const IRONWORKER_VARIABLES: readonly TemplateVariable[] = ['DockerAuth', 'DockerEmail', 'ClusterId', 'ClusterToken', 'RunnersVersion'];

/** The values for one launch. Field `fooBar` fills `{{.FooBar}}`. */
export interface UserDataVars {
  /** `{{.ClusterId}}`: the cluster's id. */
  readonly clusterId: string;
  /** `{{.ClusterToken}}`: the cluster's runner token (a secret). */
  readonly clusterToken: string;
  /** `{{.RunnersVersion}}`: the runner image tag (or a `sha256:` digest) to run. */
  readonly runnersVersion: string;
  /** `{{.ControlPlane}}`: host:port of the control plane's gRPC port, as runners reach it. */
  readonly controlPlane: string;
  /** `{{.ControlPlaneTls}}`: "true" when runners must dial the control plane with TLS. Default false. */
  readonly controlPlaneTls?: boolean;
  /** `{{.RunnerImage}}`: the runner image repository, without tag. Default `gantry/runner`. */
  readonly runnerImage?: string;
  /** `{{.DockerAuth}}`: base64 "user:password" for the registry of the runner image; '' for none. */
  readonly dockerAuth?: string;
  /** `{{.DockerEmail}}`: the email that goes with DockerAuth; '' for none. */
  readonly dockerEmail?: string;
  /** `{{.RunnersPerInstance}}`: task slots per host; 0 derives it from memory. Default 0. */
  readonly runnersPerInstance?: number;
  /** `{{.Memory}}`: memory per task in MB (the cluster's `memory`). Default 512. */
  readonly memory?: number;
}

/**
 * How coreos-cloudinit classifies user data (by its first line: `#cloud-config`, `#!` for a
 * script, JSON for Ignition; anything else is rejected), and so how it is escaped.
 */
export type UserDataFormat = 'cloud-config' | 'script' | 'json' | 'other';

export type UserDataErrorCode = 'unknown_variable' | 'unsupported_action' | 'bad_template' | 'bad_value' | 'too_large';

/**
 * A template or a value that cannot make valid user data. Answered as 400 when it comes from a
 * cluster's settings; messages name the variable and the line, never a value (values are secrets).
 */
export class UserDataError extends GantryError {
  /**
   * The template actions refused, as template text (never a value), for callers that word their
   * own message: for `unknown_variable` the unknown variables as `{{.Name}}`, in order of first
   * use; for `unsupported_action` the action as written (its first 40 characters when unclosed).
   */
  readonly actions: readonly string[];
  /** `unsupported_action` only: the action has no closing `}}`. */
  readonly unclosed: boolean;
  constructor(code: UserDataErrorCode, message: string, opts: { cause?: unknown; actions?: readonly string[]; unclosed?: boolean } = {}) {
    super(code, message, { kind: 'invalid', ...(opts.cause === undefined ? {} : { cause: opts.cause }) });
    this.actions = opts.actions ?? [];
    this.unclosed = opts.unclosed ?? false;
  }
}

/** The default template (default.yaml), read once. */
export const DEFAULT_USER_DATA_TEMPLATE: string = fs.readFileSync(new URL('./default.yaml', import.meta.url), 'utf8');

/** The default Flatcar user data for one launch. */
export function defaultUserData(vars: UserDataVars): string {
  return renderUserData(DEFAULT_USER_DATA_TEMPLATE, vars);
}

/**
 * The user data to launch a cluster's instance with: the cluster's own `user_data` when set,
 * used as given (its bytes are kept; only the variables are filled in, as IronWorker does for
 * custom user data), else the default.
 */
export function clusterUserData(customTemplate: string | null | undefined, vars: UserDataVars): string {
  return customTemplate ? renderUserData(customTemplate, vars) : defaultUserData(vars);
}

/**
 * Renders `template` with `vars`. Throws UserDataError for an unknown variable or unsupported
 * template action, a template that is not valid for its format, a value that cannot be placed
 * where it appears, or a result over USER_DATA_MAX_BYTES.
 */
export function renderUserData(template: string, vars: UserDataVars): string {
  const t = analyse(template);
  const values = templateValues(vars);
  const out = substitute(t, (name) => values[name]);
  verifyStructure(t, out);
  const bytes = Buffer.byteLength(out, 'utf8');
  if (bytes > USER_DATA_MAX_BYTES) {
    throw new UserDataError(
      'too_large',
      `user_data is ${bytes} bytes after rendering; EC2 accepts at most ${USER_DATA_MAX_BYTES} bytes (16 KB) before base64 encoding`,
    );
  }
  return out;
}

/**
 * Validates a template without values, for cluster create/update: every `{{…}}` must be a known
 * variable, each must sit where it can be escaped, and a cloud-config must parse as YAML 1.1.
 * Returns the format and the variables used.
 */
export function checkTemplate(template: string): { format: UserDataFormat; variables: TemplateVariable[] } {
  const t = analyse(template);
  verifyStructure(t, undefined);
  return { format: t.format, variables: [...new Set(t.slots.map((s) => s.name))] };
}

// ---------------------------------------------------------------------------------------------
// Values

function templateValues(vars: UserDataVars): Record<TemplateVariable, string> {
  const required = (field: keyof UserDataVars, name: TemplateVariable): string => {
    const v = vars[field];
    if (typeof v !== 'string' || v === '') throw new UserDataError('bad_value', `${field} is required (the value of {{.${name}}})`);
    return v;
  };
  const optional = (field: keyof UserDataVars, def: string): string => {
    const v = vars[field];
    if (v === undefined) return def;
    if (typeof v !== 'string') throw new UserDataError('bad_value', `${field} must be a string`);
    return v;
  };
  const int = (field: keyof UserDataVars, def: number, min: number, max: number): string => {
    const v = vars[field] ?? def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new UserDataError('bad_value', `${field} must be an integer from ${min} to ${max}`);
    }
    return String(v);
  };
  const tls = vars.controlPlaneTls ?? false;
  if (typeof tls !== 'boolean') throw new UserDataError('bad_value', 'controlPlaneTls must be a boolean');
  const runnerImage = optional('runnerImage', 'gantry/runner') || 'gantry/runner';
  const dockerAuth = optional('dockerAuth', '');
  const dockerEmail = optional('dockerEmail', '');
  const values: Record<TemplateVariable, string> = {
    ClusterId: required('clusterId', 'ClusterId'),
    ClusterToken: required('clusterToken', 'ClusterToken'),
    RunnersVersion: required('runnersVersion', 'RunnersVersion'),
    ControlPlane: required('controlPlane', 'ControlPlane'),
    ControlPlaneTls: String(tls),
    RunnerImage: runnerImage,
    DockerAuth: dockerAuth,
    DockerEmail: dockerEmail,
    // Bounds as the runner's own config (runner/config.ts) enforces them.
    RunnersPerInstance: int('runnersPerInstance', 0, 0, 1024),
    Memory: int('memory', 512, 16, 1_048_576),
    DockerConfigJson: dockerConfigJson(dockerAuth, dockerEmail, runnerImage),
  };
  for (const name of TEMPLATE_VARIABLES) {
    const v = values[name];
    if (v.includes('\0')) throw new UserDataError('bad_value', `the value of {{.${name}}} contains NUL (U+0000), which no file or environment variable can carry`);
    if (LONE_SURROGATE.test(v)) throw new UserDataError('bad_value', `the value of {{.${name}}} is not valid Unicode (a lone surrogate)`);
  }
  return values;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Docker's current config format (`~/.docker/config.json`), keyed by the registry of `image`:
 * the same rule the runner uses for task images (runner/executor/docker.ts) — a first path
 * component with a dot or colon, or `localhost`, names a registry; anything else is Docker Hub.
 */
function dockerConfigJson(auth: string, email: string, image: string): string {
  if (!auth) return '{"auths":{}}';
  const first = image.split('/')[0] ?? '';
  const hasRegistry = image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  const entry: Record<string, string> = { auth };
  if (email) entry.email = email;
  return JSON.stringify({ auths: { [hasRegistry ? first : 'https://index.docker.io/v1/']: entry } });
}

// ---------------------------------------------------------------------------------------------
// Template actions

interface Slot {
  /** Offset of the slot's one-character stand-in in `masked`. */
  readonly pos: number;
  readonly name: TemplateVariable;
  /** Line number (1-based) of the action, for messages. */
  readonly line: number;
}

type Ctx =
  | { kind: 'double' }
  | { kind: 'single' }
  | { kind: 'plain'; start: number; end: number }
  | { kind: 'block'; indent: number; opens: boolean }
  | { kind: 'comment' }
  | { kind: 'json' }
  | { kind: 'raw' };

interface Analysed {
  readonly format: UserDataFormat;
  /** The template with literal actions expanded and each variable replaced by one 'x'. */
  readonly masked: string;
  readonly slots: readonly Slot[];
  readonly ctx: readonly Ctx[];
}

const SLOT_CHAR = 'x';
const KNOWN = new Set<string>(TEMPLATE_VARIABLES);

function analyse(template: string): Analysed {
  if (typeof template !== 'string') throw new UserDataError('bad_template', 'user_data must be a string');
  const { masked, slots } = parseActions(template);
  const format = classify(masked, slots);
  const ctx =
    format === 'cloud-config'
      ? new YamlContexts(masked, slots).run()
      : format === 'json'
        ? jsonContexts(masked, slots)
        : slots.map((): Ctx => ({ kind: 'raw' }));
  return { format, masked, slots, ctx };
}

/**
 * Go text/template actions, as IronWorker's templates use them: `{{.Name}}` with optional spaces
 * inside the braces, and string literals (`{{"{{"}}`) to write braces. Anything else (pipelines,
 * `if`, trim markers, comments) is refused here rather than failing at launch.
 */
function parseActions(template: string): { masked: string; slots: Slot[] } {
  let masked = '';
  const slots: Slot[] = [];
  const unknown: string[] = [];
  let i = 0;
  const lineAt = (off: number) => lineNumber(template, off);
  const unsupported = (start: number): never => {
    const close = template.indexOf('}}', start + 2);
    const token = close < 0 ? template.slice(start, start + 40) : template.slice(start, close + 2);
    if (close < 0) {
      throw new UserDataError('unsupported_action', `unclosed template action ${JSON.stringify(token)} on line ${lineAt(start)}`, { actions: [token], unclosed: true });
    }
    throw new UserDataError(
      'unsupported_action',
      `unsupported template action ${token} on line ${lineAt(start)}: only {{.Name}} variables and string literals such as {{"{{"}} are supported`,
      { actions: [token] },
    );
  };
  for (;;) {
    const open = template.indexOf('{{', i);
    if (open < 0) break;
    masked += template.slice(i, open);
    let p = open + 2;
    const ws = () => {
      while (template[p] === ' ' || template[p] === '\t') p++;
    };
    if (template[p] === '-' || template[p] === '/') unsupported(open);
    ws();
    let literal: string | undefined;
    let name: string | undefined;
    if (template[p] === '"') {
      literal = '';
      p++;
      for (;;) {
        const c = template[p];
        if (c === undefined || c === '\n') unsupported(open);
        if (c === '"') break;
        if (c === '\\') {
          const e = template[p + 1];
          const map: Record<string, string> = { '\\': '\\', '"': '"', n: '\n', t: '\t', r: '\r' };
          if (e === undefined || map[e] === undefined) unsupported(open);
          literal += map[e!];
          p += 2;
        } else {
          literal += c;
          p++;
        }
      }
      p++;
    } else if (template[p] === '`') {
      const close = template.indexOf('`', p + 1);
      if (close < 0) unsupported(open);
      literal = template.slice(p + 1, close);
      p = close + 1;
    } else if (template[p] === '.') {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(template.slice(p + 1, p + 65));
      if (!m) unsupported(open);
      name = m![0];
      p += 1 + name.length;
    } else {
      unsupported(open);
    }
    ws();
    if (!template.startsWith('}}', p)) unsupported(open);
    p += 2;
    if (literal !== undefined) {
      masked += literal;
    } else if (KNOWN.has(name!)) {
      slots.push({ pos: masked.length, name: name as TemplateVariable, line: lineAt(open) });
      masked += SLOT_CHAR;
    } else {
      unknown.push(name!);
      masked += SLOT_CHAR;
    }
    i = p;
  }
  masked += template.slice(i);
  if (unknown.length) {
    const names = [...new Set(unknown)].map((n) => `{{.${n}}}`);
    throw new UserDataError(
      'unknown_variable',
      `user_data uses unknown template variable${unknown.length > 1 ? 's' : ''} ${names.join(', ')}; known: ${TEMPLATE_VARIABLES.map((n) => `{{.${n}}}`).join(', ')}`,
      { actions: names },
    );
  }
  return { masked, slots };
}

function lineNumber(s: string, off: number): number {
  let n = 1;
  for (let i = 0; i < off && i < s.length; i++) if (s[i] === '\n') n++;
  return n;
}

/** coreos-cloudinit's order (config.IsScript, IsCloudConfig, then Ignition JSON). */
function classify(masked: string, slots: readonly Slot[]): UserDataFormat {
  const nl = masked.indexOf('\n');
  const headerEnd = nl < 0 ? masked.length : nl;
  const first = slots[0];
  if (first && first.pos < headerEnd && (masked.startsWith('#cloud-config') || masked.startsWith('#!'))) {
    throw new UserDataError('bad_template', `{{.${first.name}}} is on the first line of user_data, which must stay the format header (#cloud-config or #!)`);
  }
  if (masked.startsWith('#!')) return 'script';
  if (masked.slice(0, headerEnd).replace(/\r$/, '') === '#cloud-config') return 'cloud-config';
  if (/^[\uFEFF\s]+#cloud-config/.test(masked)) {
    throw new UserDataError(
      'bad_template',
      'user_data has a byte-order mark or blank space before "#cloud-config"; coreos-cloudinit only recognizes it on the very first line',
    );
  }
  if (/^\s*\{/.test(masked)) return 'json';
  return 'other';
}

// ---------------------------------------------------------------------------------------------
// YAML contexts

const BREAKS = new Set(['\n', '\r', '\u0085', '\u2028', '\u2029']);

/**
 * Finds the YAML context of each variable in a cloud-config: a quoted scalar, a plain scalar
 * (which rendering turns into a double-quoted one), a block scalar (with its indentation), or a
 * comment. Follows libyaml's rules as go-yaml v1 (coreos-cloudinit's parser) applies them:
 * YAML 1.1 line breaks, block scalar indentation from the parent collection's column, plain
 * scalars continuing on more-indented lines. Places it cannot escape safely (anchors, tags,
 * block scalar headers, multi-line plain scalars, directives) are refused.
 */
class YamlContexts {
  private readonly ctx: (Ctx | undefined)[];
  private readonly slotIndex = new Map<number, number>();
  private p = 0;
  /** Columns of the open block collections (mapping key or sequence dash columns). */
  private stack: number[] = [];
  /** Set when a construct consumed whole lines and left p at the start of a line. */
  private atNewLine = false;

  constructor(
    private readonly s: string,
    private readonly slots: readonly Slot[],
  ) {
    this.ctx = slots.map(() => undefined);
    slots.forEach((sl, i) => this.slotIndex.set(sl.pos, i));
  }

  run(): Ctx[] {
    this.toEol();
    this.breakLine();
    while (this.p < this.s.length) this.line();
    return this.ctx.map((c, i) => {
      if (!c) this.fail(i, 'is in a place the renderer cannot classify');
      return c!;
    });
  }

  private fail(slot: number, what: string): never {
    const sl = this.slots[slot]!;
    throw new UserDataError('bad_template', `{{.${sl.name}}} on line ${sl.line} ${what}`);
  }

  private ch(at = this.p): string | undefined {
    return this.s[at];
  }
  private eol(at = this.p): boolean {
    return at >= this.s.length || BREAKS.has(this.s[at]!);
  }
  private wsOrEol(at: number): boolean {
    return this.eol(at) || this.s[at] === ' ' || this.s[at] === '\t';
  }
  private col(at = this.p): number {
    let i = at;
    while (i > 0 && !BREAKS.has(this.s[i - 1]!)) i--;
    return at - i;
  }
  private skipBlanks(): void {
    while (this.s[this.p] === ' ' || this.s[this.p] === '\t') this.p++;
  }
  private toEol(): void {
    while (!this.eol()) this.p++;
  }
  private breakLine(): void {
    if (this.p >= this.s.length) return;
    this.p += this.s.startsWith('\r\n', this.p) ? 2 : 1;
  }
  private mark(from: number, to: number, c: Ctx): void {
    for (let i = from; i < to; i++) {
      const k = this.slotIndex.get(i);
      if (k !== undefined) this.ctx[k] = c;
    }
  }
  private refuse(from: number, to: number, what: string): void {
    for (let i = from; i < to; i++) {
      const k = this.slotIndex.get(i);
      if (k !== undefined) this.fail(k, what);
    }
  }
  /** [start, end) of each line after `from`, and its count of leading spaces. */
  private *linesFrom(from: number): Generator<{ start: number; end: number; next: number; indent: number; blank: boolean }> {
    let i = from;
    while (i < this.s.length) {
      let e = i;
      while (e < this.s.length && !BREAKS.has(this.s[e]!)) e++;
      let k = i;
      while (this.s[k] === ' ') k++;
      const blank = /^[ \t]*$/.test(this.s.slice(i, e));
      const next = e >= this.s.length ? e : this.s.startsWith('\r\n', e) ? e + 2 : e + 1;
      yield { start: i, end: e, next, indent: k - i, blank };
      i = next;
    }
  }

  private line(): void {
    const start = this.p;
    while (this.s[this.p] === ' ') this.p++;
    const indent = this.p - start;
    this.skipBlanks();
    if (this.eol()) return this.breakLine();
    if (this.ch() === '#') return this.finishLine();
    if (indent === 0 && this.isDocMarker(this.p)) {
      const doc = this.s.startsWith('---', this.p);
      this.p += 3;
      this.stack = [];
      this.skipBlanks();
      if (doc && !this.eol() && this.ch() !== '#') this.node(-1);
      return this.finishLine();
    }
    if (indent === 0 && this.ch() === '%') {
      const from = this.p;
      this.toEol();
      this.refuse(from, this.p, 'is in a YAML directive');
      return this.breakLine();
    }
    while (this.stack.length && this.stack[this.stack.length - 1]! > indent) this.stack.pop();
    const parent = [...this.stack].reverse().find((c) => c < indent) ?? -1;
    this.node(parent);
    this.finishLine();
  }

  private finishLine(): void {
    if (this.atNewLine) {
      this.atNewLine = false;
      return;
    }
    this.skipBlanks();
    if (this.ch() === '#') {
      const from = this.p;
      this.toEol();
      this.mark(from, this.p, { kind: 'comment' });
    }
    const from = this.p;
    this.toEol();
    this.refuse(from, this.p, 'follows a node on its line in a way the renderer cannot classify');
    this.breakLine();
  }

  private push(col: number): void {
    const top = this.stack[this.stack.length - 1];
    if (top === undefined || col > top) this.stack.push(col);
  }

  /** A block node at p; `n` is the column of the collection it belongs to (-1 at top level). */
  private node(n: number): void {
    // Block indicators: "- ", "? ", ": " open a nested node on the same line.
    for (;;) {
      const c = this.ch();
      if ((c === '-' || c === '?' || c === ':') && this.wsOrEol(this.p + 1)) {
        n = this.col();
        this.push(n);
        this.p++;
        this.skipBlanks();
        if (this.eol() || this.ch() === '#') return;
        continue;
      }
      break;
    }
    this.properties();
    if (this.eol() || this.ch() === '#') return;
    const c = this.ch();
    const col = this.col();
    if (c === '*') {
      const from = this.p;
      while (!this.wsOrEol(this.p)) this.p++;
      this.refuse(from, this.p, 'is in a YAML alias');
      return;
    }
    if (c === '|' || c === '>') return this.blockScalar(n);
    if (c === '"' || c === "'") {
      if (c === '"') this.doubleQuoted();
      else this.singleQuoted();
      return this.maybeKey(col);
    }
    if (c === '[' || c === '{') {
      this.flow();
      return this.maybeKey(col);
    }
    this.plainBlock(n, col);
  }

  private properties(): void {
    while (this.ch() === '&' || this.ch() === '!') {
      const from = this.p;
      while (!this.wsOrEol(this.p)) this.p++;
      this.refuse(from, this.p, 'is in a YAML anchor or tag');
      this.skipBlanks();
    }
  }

  private maybeKey(keyCol: number): void {
    this.skipBlanks();
    if (this.ch() === ':' && this.wsOrEol(this.p + 1)) {
      this.push(keyCol);
      this.p++;
      this.skipBlanks();
      if (!this.eol() && this.ch() !== '#') this.node(keyCol);
    }
  }

  private plainBlock(n: number, col: number): void {
    const from = this.p;
    let isKey = false;
    while (!this.eol()) {
      const c = this.ch();
      if (c === ':' && this.wsOrEol(this.p + 1)) {
        isKey = true;
        break;
      }
      if (c === '#' && (this.s[this.p - 1] === ' ' || this.s[this.p - 1] === '\t')) break;
      this.p++;
    }
    let end = this.p;
    while (end > from && (this.s[end - 1] === ' ' || this.s[end - 1] === '\t')) end--;
    this.mark(from, end, { kind: 'plain', start: from, end });
    if (isKey) {
      this.push(col);
      this.p++;
      this.skipBlanks();
      if (!this.eol() && this.ch() !== '#') this.node(col);
      return;
    }
    if (this.ch() === '#') return;
    // A plain value continues on following lines indented more than its collection (libyaml
    // scan_plain_scalar); a comment line or a document marker ends it.
    const firstSlot = this.firstSlotIn(from, end);
    for (const ln of this.linesFrom(this.nextLineStart())) {
      if (ln.blank) continue;
      const body = this.s.slice(ln.start + ln.indent, ln.end);
      if (ln.indent <= n || body.startsWith('#') || (ln.indent === 0 && this.isDocMarker(ln.start))) break;
      if (firstSlot !== undefined) this.fail(firstSlot, 'is in a plain scalar that continues on the next line; quote the scalar');
      this.refuse(ln.start, ln.end, 'is on a continuation line of a plain scalar; quote the scalar');
      this.p = ln.end;
      if (/[ \t]#/.test(body)) break;
    }
  }

  private firstSlotIn(from: number, to: number): number | undefined {
    for (let i = from; i < to; i++) {
      const k = this.slotIndex.get(i);
      if (k !== undefined) return k;
    }
    return undefined;
  }

  private isDocMarker(at: number): boolean {
    return (this.s.startsWith('---', at) || this.s.startsWith('...', at)) && this.wsOrEol(at + 3);
  }

  private nextLineStart(): number {
    let i = this.p;
    while (i < this.s.length && !BREAKS.has(this.s[i]!)) i++;
    if (i >= this.s.length) return i;
    return this.s.startsWith('\r\n', i) ? i + 2 : i + 1;
  }

  private doubleQuoted(): void {
    this.p++;
    while (this.p < this.s.length) {
      const c = this.s[this.p]!;
      if (c === '\\') {
        const k = this.slotIndex.get(this.p + 1);
        if (k !== undefined) this.fail(k, 'follows a backslash in a double-quoted scalar, which would escape its first character');
        this.p += 2;
        continue;
      }
      if (c === '"') {
        this.p++;
        return;
      }
      this.mark(this.p, this.p + 1, { kind: 'double' });
      this.p++;
    }
  }

  private singleQuoted(): void {
    this.p++;
    while (this.p < this.s.length) {
      const c = this.s[this.p]!;
      if (c === "'") {
        if (this.s[this.p + 1] === "'") {
          this.p += 2;
          continue;
        }
        this.p++;
        return;
      }
      this.mark(this.p, this.p + 1, { kind: 'single' });
      this.p++;
    }
  }

  /** A flow collection, possibly over several lines; scalars inside as in block context. */
  private flow(): void {
    let depth = 0;
    while (this.p < this.s.length) {
      const c = this.s[this.p]!;
      if (c === '[' || c === '{') {
        depth++;
        this.p++;
      } else if (c === ']' || c === '}') {
        depth--;
        this.p++;
        if (depth <= 0) return;
      } else if (c === ',' || c === ' ' || c === '\t' || BREAKS.has(c)) {
        this.p++;
      } else if ((c === ':' || c === '?' || c === '-') && (this.wsOrEol(this.p + 1) || ',[]{}'.includes(this.s[this.p + 1] ?? ''))) {
        this.p++;
      } else if (c === '#' && (this.p === 0 || /[ \t\r\n\u0085\u2028\u2029]/.test(this.s[this.p - 1]!))) {
        const from = this.p;
        this.toEol();
        this.mark(from, this.p, { kind: 'comment' });
      } else if (c === '"') {
        this.doubleQuoted();
      } else if (c === "'") {
        this.singleQuoted();
      } else if (c === '&' || c === '!' || c === '*') {
        const from = this.p;
        while (!this.wsOrEol(this.p) && !',[]{}'.includes(this.s[this.p]!)) this.p++;
        this.refuse(from, this.p, 'is in a YAML anchor, tag or alias');
      } else {
        this.plainFlow();
      }
    }
  }

  private plainFlow(): void {
    const from = this.p;
    while (!this.eol()) {
      const c = this.s[this.p]!;
      if (',[]{}'.includes(c)) break;
      if (c === ':' && (this.wsOrEol(this.p + 1) || ',[]{}'.includes(this.s[this.p + 1] ?? ''))) break;
      if (c === '#' && (this.s[this.p - 1] === ' ' || this.s[this.p - 1] === '\t')) break;
      this.p++;
    }
    let end = this.p;
    while (end > from && (this.s[end - 1] === ' ' || this.s[end - 1] === '\t')) end--;
    this.mark(from, end, { kind: 'plain', start: from, end });
    if (this.eol()) {
      // Continues on the next line unless that line starts with an indicator or a comment.
      for (const ln of this.linesFrom(this.nextLineStart())) {
        if (ln.blank) continue;
        const lead = this.s.slice(ln.start, ln.end).trimStart()[0] ?? '';
        if (!',]}:#'.includes(lead)) this.refuse(from, end, 'is in a plain scalar that continues on the next line; quote the scalar');
        break;
      }
    }
  }

  /** A literal or folded block scalar: header at p, content on the following lines. */
  private blockScalar(n: number): void {
    const headerFrom = this.p;
    this.p++;
    let m = 0;
    for (let i = 0; i < 2; i++) {
      const c = this.ch();
      if (c !== undefined && /[1-9]/.test(c)) m = Number(c);
      else if (c !== '+' && c !== '-') break;
      this.p++;
    }
    this.skipBlanks();
    const commentAt = this.ch() === '#' ? this.p : -1;
    this.toEol();
    this.refuse(headerFrom, commentAt < 0 ? this.p : commentAt, 'is in a block scalar header');
    if (commentAt >= 0) this.mark(commentAt, this.p, { kind: 'comment' });
    this.breakLine();
    let indent = m > 0 ? (n >= 0 ? n + m : m) : -1;
    let firstContent = true;
    for (const ln of this.linesFrom(this.p)) {
      if (ln.blank) {
        this.p = ln.next;
        continue;
      }
      if (indent < 0) indent = Math.max(ln.indent, n + 1, 1);
      if (ln.indent < indent) break;
      for (let i = ln.start; i < ln.end; i++) {
        const k = this.slotIndex.get(i);
        if (k !== undefined) this.ctx[k] = { kind: 'block', indent, opens: m === 0 && firstContent && i === ln.start + ln.indent };
      }
      firstContent = false;
      this.p = ln.next;
    }
    // p is at the start of the first line after the scalar (or at the end of the text).
    this.atNewLine = true;
  }
}

function jsonContexts(masked: string, slots: readonly Slot[]): Ctx[] {
  const at = new Map(slots.map((s, i) => [s.pos, i]));
  const ctx: (Ctx | undefined)[] = slots.map(() => undefined);
  let inString = false;
  for (let p = 0; p < masked.length; p++) {
    const c = masked[p];
    const k = at.get(p);
    if (inString) {
      if (c === '\\') {
        const next = at.get(p + 1);
        if (next !== undefined) throw new UserDataError('bad_template', `{{.${slots[next]!.name}}} on line ${slots[next]!.line} follows a backslash in a JSON string`);
        p++;
      } else if (c === '"') inString = false;
      else if (k !== undefined) ctx[k] = { kind: 'json' };
    } else if (c === '"') inString = true;
    else if (k !== undefined) {
      throw new UserDataError('bad_template', `{{.${slots[k]!.name}}} on line ${slots[k]!.line} is outside a JSON string; put it inside quotes`);
    }
  }
  return ctx.map((c) => c ?? { kind: 'json' });
}

// ---------------------------------------------------------------------------------------------
// Escaping

/** coreos-cloudinit replaces these in the whole user data before parsing it (initialize/env.go). */
const CLOUDINIT_KEYS = /\$(public|private)_ipv[46]/g;

/** Values in scripts and unknown formats go in raw, so only characters no shell or parser treats specially. */
const RAW_SAFE = /^[A-Za-z0-9._:/@+=,%-]*$/;

function hex(cp: number, width: number): string {
  return cp.toString(16).toUpperCase().padStart(width, '0');
}

/**
 * Body of a YAML double-quoted scalar: printable ASCII as is, everything else as an escape, so
 * the output holds no line break of any YAML version and no `$` that coreos-cloudinit would
 * substitute (values only; the template's own `$private_ipv4` is kept).
 */
function escapeDouble(v: string, escapeDollar: boolean): string {
  let out = '';
  for (const ch of v) {
    const cp = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\\\';
    else if (ch === '"') out += '\\"';
    else if (ch === '$' && escapeDollar) out += '\\u0024';
    else if (cp >= 0x20 && cp <= 0x7e) out += ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (cp <= 0xffff) out += `\\u${hex(cp, 4)}`;
    else out += `\\U${hex(cp, 8)}`;
  }
  return out;
}

/** The first character YAML cannot hold raw outside double quotes (line breaks allowed or not). */
function unrepresentable(v: string, allowNewline: boolean): string | undefined {
  for (const ch of v) {
    const cp = ch.codePointAt(0)!;
    if (ch === '\n' && allowNewline) continue;
    if (ch === '\t') continue;
    const printable = (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd && cp !== 0xfeff) || cp >= 0x10000;
    if (!printable || BREAKS.has(ch)) return `U+${hex(cp, 4)}`;
  }
  return undefined;
}

/** The template text on the slot's line before it, and after it. */
function lineBefore(masked: string, pos: number): string {
  let i = pos;
  while (i > 0 && !BREAKS.has(masked[i - 1]!)) i--;
  return masked.slice(i, pos);
}
function lineAfter(masked: string, pos: number): string {
  let i = pos + 1;
  while (i < masked.length && !BREAKS.has(masked[i]!)) i++;
  return masked.slice(pos + 1, i);
}

function substitute(t: Analysed, valueOf: (name: TemplateVariable) => string): string {
  const { masked, slots, ctx } = t;
  const edits: { start: number; end: number; text: string }[] = [];
  const done = new Set<number>();
  const slotAt = new Map(slots.map((s, i) => [s.pos, i]));
  const bad = (i: number, what: string): never => {
    const sl = slots[i]!;
    throw new UserDataError('bad_value', `the value of {{.${sl.name}}} ${what} (line ${sl.line})`);
  };
  slots.forEach((sl, i) => {
    const c = ctx[i]!;
    const v = valueOf(sl.name);
    // A value ending in a backslash would make coreos-cloudinit skip a `$private_ipv4` right after it.
    if (v.endsWith('\\') && /^\$(public|private)_ipv[46]/.test(masked.slice(sl.pos + 1))) bad(i, 'ends with a backslash before a coreos-cloudinit substitution');
    switch (c.kind) {
      case 'double':
        edits.push({ start: sl.pos, end: sl.pos + 1, text: escapeDouble(v, true) });
        break;
      case 'comment':
        edits.push({ start: sl.pos, end: sl.pos + 1, text: escapeDouble(v, true) });
        break;
      case 'single': {
        const u = unrepresentable(v, false);
        if (u) bad(i, `contains ${u}, which a single-quoted YAML scalar cannot hold; use a double-quoted scalar`);
        edits.push({ start: sl.pos, end: sl.pos + 1, text: v.replace(CLOUDINIT_KEYS, '\\$&').replace(/'/g, "''") });
        break;
      }
      case 'block': {
        const u = unrepresentable(v, true);
        if (u) bad(i, `contains ${u}, which a YAML block scalar cannot hold; use a double-quoted scalar`);
        if (c.opens && (v === '' || v[0] === ' ' || v[0] === '\n')) {
          bad(i, 'is empty or starts with a space or line break at the start of a block scalar whose indentation is detected from it; add an indentation indicator (e.g. "|2")');
        }
        // A line of only blanks longer than the indentation is read differently by parsers
        // (libyaml keeps the extra blanks as content, others drop the line): refuse to make one.
        const lines = v.split('\n');
        const indent = ' '.repeat(c.indent);
        lines.forEach((ln, j) => {
          const whole = (j === 0 ? lineBefore(masked, sl.pos) : indent) + ln + (j === lines.length - 1 ? lineAfter(masked, sl.pos) : '');
          if (/^[ \t]*$/.test(whole) && whole.length > c.indent) bad(i, 'would leave a line of only spaces or tabs inside a block scalar, which YAML parsers read differently');
        });
        const text = v.replace(CLOUDINIT_KEYS, '\\$&').replace(/\n/g, `\n${indent}`);
        edits.push({ start: sl.pos, end: sl.pos + 1, text });
        break;
      }
      case 'plain': {
        // The whole plain scalar becomes a double-quoted one: no YAML 1.1 type (yes, on, 0644,
        // ~) and no indicator in a value can then change what the scalar means.
        if (done.has(c.start)) break;
        done.add(c.start);
        let text = '"';
        for (let p = c.start; p < c.end; p++) {
          const k = slotAt.get(p);
          text += k !== undefined ? escapeDouble(valueOf(slots[k]!.name), true) : escapeDouble(masked[p]!, false);
        }
        edits.push({ start: c.start, end: c.end, text: text + '"' });
        break;
      }
      case 'json': {
        let text = '';
        for (const ch of v) {
          const cp = ch.codePointAt(0)!;
          if (ch === '"' || ch === '\\') text += `\\${ch}`;
          else if (cp >= 0x20 && cp <= 0x7e) text += ch;
          else if (cp <= 0xffff) text += `\\u${hex(cp, 4).toLowerCase()}`;
          else text += `\\u${hex(ch.charCodeAt(0), 4).toLowerCase()}\\u${hex(ch.charCodeAt(1), 4).toLowerCase()}`;
        }
        edits.push({ start: sl.pos, end: sl.pos + 1, text });
        break;
      }
      case 'raw':
        if (!RAW_SAFE.test(v)) {
          bad(i, `has characters outside [A-Za-z0-9._:/@+=,%-], which cannot be escaped in ${t.format === 'script' ? 'a script' : 'user data that is neither #cloud-config nor JSON'}`);
        }
        edits.push({ start: sl.pos, end: sl.pos + 1, text: v });
        break;
    }
  });
  edits.sort((a, b) => a.start - b.start);
  let out = '';
  let at = 0;
  for (const e of edits) {
    out += masked.slice(at, e.start) + e.text;
    at = e.end;
  }
  return out + masked.slice(at);
}

// ---------------------------------------------------------------------------------------------
// Structure check

/** What coreos-cloudinit does to the text before parsing (initialize/env.go, Apply). */
export function applyCloudinitSubstitutions(text: string, subs: Readonly<Record<string, string>>): string {
  let out = text;
  for (const [key, val] of Object.entries(subs)) {
    const k = key.replace(/\$/g, '\\$');
    out = out.replace(new RegExp(`([^\\\\]|^)${k}`, 'g'), (_m, pre: string) => pre + val);
    out = out.replace(new RegExp(`\\\\${k}`, 'g'), () => key);
  }
  return out;
}

const CLOUDINIT_TEST_SUBS = { $public_ipv4: '203.0.113.7', $private_ipv4: '10.0.0.7', $public_ipv6: '2001:db8::7', $private_ipv6: 'fd00::7' };

/** Stand-ins that fit every context: no indicator, no break, no leading space. */
const STAND_IN = 'x';

/**
 * Parses the rendering with stand-in values (the template's own structure) and, when `out` is
 * given, the real rendering, and requires both to parse to the same shape: same maps with the
 * same number of entries, same sequences, same scalar types. The escaping above should make
 * this hold for every value; this check makes sure a scanner gap can only refuse a launch,
 * never boot a host with a changed document.
 */
function verifyStructure(t: Analysed, out: string | undefined): void {
  if (t.format !== 'cloud-config' && t.format !== 'json') return;
  const reference = substitute(t, () => STAND_IN);
  const shapeOf = (text: string): { shape?: string; error?: string } => {
    if (t.format === 'json') {
      try {
        return { shape: JSON.stringify(jsonShape(JSON.parse(text))) };
      } catch (err) {
        return { error: (err as Error).message };
      }
    }
    const doc = parseDocument(applyCloudinitSubstitutions(text, CLOUDINIT_TEST_SUBS), { version: '1.1' });
    if (doc.errors.length) return { error: doc.errors[0]!.message.split('\n')[0] };
    return { shape: JSON.stringify(yamlShape(doc.contents)) };
  };
  const ref = shapeOf(reference);
  if (ref.error !== undefined) {
    throw new UserDataError('bad_template', `user_data is not valid ${t.format === 'json' ? 'JSON' : 'YAML 1.1'}: ${ref.error}`);
  }
  if (out === undefined) return;
  const got = shapeOf(out);
  if (got.error !== undefined || got.shape !== ref.shape) {
    const names = [...new Set(t.slots.map((s) => `{{.${s.name}}}`))].join(', ');
    throw new UserDataError('bad_value', `the values of ${names} change the structure of user_data${got.error ? ` (${got.error})` : ''}; refusing to launch with it`);
  }
}

function yamlShape(node: unknown): unknown {
  if (node === null || node === undefined) return 'null';
  if (isMap(node)) return { m: node.items.map((p) => [yamlShape(p.key), yamlShape(p.value)]) };
  if (isSeq(node)) return { s: node.items.map(yamlShape) };
  if (isScalar(node)) return node.value === null ? 'null' : typeof node.value;
  if (isAlias(node)) return 'alias';
  return 'other';
}

function jsonShape(v: unknown): unknown {
  if (Array.isArray(v)) return { s: v.map(jsonShape) };
  // Keys are not compared (a key may hold a variable); their count and the values' shapes are.
  if (v !== null && typeof v === 'object') return { m: Object.values(v).map(jsonShape) };
  return v === null ? 'null' : typeof v;
}
