import fs from 'node:fs';
import path from 'node:path';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { crc32 } from '../lib/crc32.ts';
import type { Logger } from '../lib/logger.ts';
import { LogStream, type LogAck, type LogFrame } from '../proto/gen/gantry/runner/v1/runner.ts';

const STREAMS = { system: LogStream.LOG_STREAM_SYSTEM, stdout: LogStream.LOG_STREAM_STDOUT, stderr: LogStream.LOG_STREAM_STDERR };
/** Largest frame's data (proto/README.md, 7 Logs). */
const MAX_FRAME = 256 * 1024;
/** Bytes sent but not acknowledged per lease before the shipper waits for acks. */
const WINDOW = 2 * 1024 * 1024;

/** Bytes a log keeps in memory before it spills to its spool file. */
const MEMORY_LIMIT = 64 * 1024;

/**
 * One lease's log as it is produced: the combined bytes of all streams in arrival order,
 * with a record of which stream each run of bytes came from. A small log stays in memory;
 * past MEMORY_LIMIT it spills to a spool file on disk, so memory stays bounded however much
 * a task writes and however long the control plane is away. The shipper resends from the
 * acknowledged offset. Output past `maxBytes` is dropped with one visible note.
 */
export class LogSpool {
  length = 0;
  crc = 0;
  finished = false;
  truncated = false;
  /** The spool file could not be written (a full disk): the log ends where it stood, with a note. */
  failed: Error | undefined;
  private readonly records: { offset: number; stream: number; length: number }[] = [];
  private fd: number | undefined;
  private memory: Buffer[] | undefined = [];

  constructor(
    readonly file: string,
    private readonly maxBytes: number,
  ) {}

  /** True once the log lives on disk. */
  get spilled(): boolean {
    return this.fd !== undefined;
  }

  append(stream: keyof typeof STREAMS, data: Buffer): void {
    if (this.finished || data.length === 0) return;
    if (this.truncated) return;
    let chunk = data;
    if (this.length + chunk.length > this.maxBytes) {
      chunk = chunk.subarray(0, Math.max(0, this.maxBytes - this.length));
      this.truncated = true;
    }
    try {
      if (chunk.length > 0) this.write(STREAMS[stream], chunk);
      if (this.truncated) {
        this.write(STREAMS.system, Buffer.from(`\n[gantry] log truncated: the task wrote more than ${this.maxBytes} bytes\n`));
      }
    } catch (err) {
      // The disk refused the spool (ENOSPC, EIO): keep what is stored and take nothing more.
      // A failed write() changed nothing, so the log stays consistent up to here.
      this.failed = err as Error;
      this.truncated = true;
      try {
        this.write(STREAMS.system, Buffer.from(`\n[gantry] log truncated: the runner could not store more of it (${(err as Error).message})\n`));
      } catch {
        /* the note cannot be stored either */
      }
    }
  }

  private write(stream: number, data: Buffer): void {
    if (this.memory && this.length + data.length > MEMORY_LIMIT) this.spill();
    if (this.memory) this.memory.push(Buffer.from(data));
    else fs.writeSync(this.fd!, data, 0, data.length, this.length);
    const last = this.records[this.records.length - 1];
    if (last && last.stream === stream) last.length += data.length;
    else this.records.push({ offset: this.length, stream, length: data.length });
    this.length += data.length;
    this.crc = crc32(data, this.crc);
  }

  private spill(): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const fd = fs.openSync(this.file, 'w+');
    try {
      const buf = Buffer.concat(this.memory!);
      fs.writeSync(fd, buf, 0, buf.length, 0);
    } catch (err) {
      // Still in memory: the log is whole there, the file is dropped.
      fs.closeSync(fd);
      fs.rmSync(this.file, { force: true });
      throw err;
    }
    this.fd = fd;
    this.memory = undefined;
  }

  /** Up to `max` bytes from `offset`, all of one stream. */
  read(offset: number, max: number): { stream: number; data: Buffer } | undefined {
    if (offset >= this.length) return undefined;
    // Records are few and ordered; a binary search keeps long logs cheap.
    let lo = 0;
    let hi = this.records.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.records[mid]!.offset <= offset) lo = mid;
      else hi = mid - 1;
    }
    const rec = this.records[lo]!;
    const len = Math.min(max, rec.offset + rec.length - offset);
    if (this.memory) {
      if (this.memory.length > 1) this.memory = [Buffer.concat(this.memory)];
      return { stream: rec.stream, data: this.memory[0]!.subarray(offset, offset + len) };
    }
    const data = Buffer.alloc(len);
    fs.readSync(this.fd!, data, 0, len, offset);
    return { stream: rec.stream, data };
  }

  finish(): void {
    this.finished = true;
  }

  remove(): void {
    this.memory = undefined;
    if (this.fd === undefined) return;
    try {
      fs.closeSync(this.fd);
    } catch {
      /* already closed */
    }
    this.fd = undefined;
    try {
      fs.rmSync(this.file, { force: true });
    } catch {
      // Left on disk: only space; nothing reads a spool of a lease that is gone.
    }
  }
}

interface Entry {
  leaseId: string;
  attempt: number;
  spool: LogSpool;
  sent: number;
  acked: number;
  finalSent: boolean;
  complete: boolean;
  /** In-flight frames by offset: the committed offset each should produce, and its generation. */
  inflight: Map<number, { end: number; gen: number; final: boolean }>;
  /** Bumped at every resend: acks of frames sent before it are stale. */
  gen: number;
  /** When an ack last arrived (or the entry was added): unanswered frames are resent after a while. */
  lastAckAt: number;
}

/**
 * Ships spooled logs over the Logs stream: frames at byte offsets, a bounded window of
 * unacknowledged bytes per lease, resend from the committed offset after any drop or
 * reconnect, and a final frame with the length and CRC-32. Calls `onDone` when the server
 * holds a lease's whole log (or says the lease is gone).
 */
export class LogShipper {
  private readonly entries = new Map<string, Entry>();
  /** Entries with something to send; flush looks only at these. */
  private readonly dirty = new Set<Entry>();
  private call: ClientDuplexStream<LogFrame, LogAck> | undefined;
  private blocked = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly onDone: (leaseId: string, how: 'complete' | 'stopped') => void,
    private flushMs = 1000,
  ) {}

  setFlushInterval(ms: number): void {
    this.flushMs = ms;
  }

  add(leaseId: string, attempt: number, spool: LogSpool): void {
    const e: Entry = { leaseId, attempt, spool, sent: 0, acked: 0, finalSent: false, complete: false, inflight: new Map(), gen: 0, lastAckAt: Date.now() };
    this.entries.set(leaseId, e);
    this.dirty.add(e);
  }

  has(leaseId: string): boolean {
    return this.entries.has(leaseId);
  }

  bytesWritten(leaseId: string): number {
    return this.entries.get(leaseId)?.spool.length ?? 0;
  }

  /** New output (or the end of it) for a lease: the next flush sends it. */
  touch(leaseId: string): void {
    const e = this.entries.get(leaseId);
    if (e) this.dirty.add(e);
  }

  /** Drops a lease's log (revoked): nothing more is sent. */
  drop(leaseId: string): void {
    const e = this.entries.get(leaseId);
    if (!e) return;
    this.entries.delete(leaseId);
    this.dirty.delete(e);
    e.spool.remove();
  }

  /** A new Logs stream: everything not acknowledged is sent again from the acked offset. */
  attach(call: ClientDuplexStream<LogFrame, LogAck>): void {
    this.call = call;
    this.blocked = false;
    for (const e of this.entries.values()) {
      e.sent = e.acked;
      e.finalSent = false;
      e.inflight.clear();
      e.gen++;
      this.dirty.add(e);
    }
    call.on('data', (a: LogAck) => {
      try {
        this.onAck(a);
      } catch (err) {
        this.log.error({ leaseId: a.leaseId, err: (err as Error).message }, 'failed to handle a log ack');
      }
    });
    call.on('drain', () => {
      this.blocked = false;
      this.flush();
    });
    this.schedule();
  }

  detach(): void {
    this.call = undefined;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    clearTimeout(this.timer);
    if (!this.call) return;
    this.timer = setTimeout(() => {
      this.resendUnanswered();
      this.flush();
      this.schedule();
    }, this.flushMs);
    this.timer.unref();
  }

  /** Frames the server never answered (it failed to store them) are sent again from the ack. */
  private resendUnanswered(): void {
    const now = Date.now();
    for (const e of this.entries.values()) {
      if (e.inflight.size > 0 && now - e.lastAckAt > Math.max(10_000, 10 * this.flushMs)) {
        e.gen++;
        e.inflight.clear();
        e.sent = e.acked;
        e.finalSent = false;
        e.lastAckAt = now;
        this.dirty.add(e);
      }
    }
  }

  /**
   * Sends what is spooled and not yet sent, within each lease's window. Never throws (it runs
   * from timers and stream events): a log whose spool cannot be read back is given up, and
   * its lease told it is done.
   */
  flush(): void {
    const call = this.call;
    if (!call || this.blocked) return;
    for (const e of this.dirty) {
      try {
        if (this.flushOne(call, e)) return;
      } catch (err) {
        this.log.error({ leaseId: e.leaseId, err: (err as Error).message }, 'cannot read a spooled log back; giving it up');
        this.drop(e.leaseId);
        this.onDone(e.leaseId, 'stopped');
      }
    }
  }

  /** One lease's share of a flush; true when the stream is full and the flush must stop. */
  private flushOne(call: ClientDuplexStream<LogFrame, LogAck>, e: Entry): boolean {
    if (e.complete) {
      this.dirty.delete(e);
      return false;
    }
    while (e.sent < e.spool.length && e.sent - e.acked < WINDOW) {
      const part = e.spool.read(e.sent, MAX_FRAME);
      if (!part) break;
      // The last piece of a finished log carries the length and CRC itself (one frame, one
      // write on the server, instead of a data frame and an empty final frame).
      const final = e.spool.finished && e.sent + part.data.length === e.spool.length;
      const ok = call.write({
        leaseId: e.leaseId,
        attempt: e.attempt,
        stream: part.stream,
        offset: e.sent,
        data: part.data,
        final,
        totalBytes: final ? e.spool.length : 0,
        crc32: final ? e.spool.crc : 0,
      });
      if (e.inflight.size === 0) e.lastAckAt = Date.now(); // the wait for an answer starts now
      e.inflight.set(e.sent, { end: e.sent + part.data.length, gen: e.gen, final });
      if (final) e.finalSent = true;
      e.sent += part.data.length;
      if (!ok) {
        this.blocked = true;
        return true;
      }
    }
    if (e.sent < e.spool.length && e.sent - e.acked >= WINDOW) return false; // window full: stays dirty
    if (e.spool.finished && e.sent === e.spool.length && !e.finalSent) {
      e.finalSent = true;
      if (e.inflight.size === 0) e.lastAckAt = Date.now();
      e.inflight.set(e.spool.length, { end: e.spool.length, gen: e.gen, final: true });
      call.write({
        leaseId: e.leaseId,
        attempt: e.attempt,
        stream: LogStream.LOG_STREAM_SYSTEM,
        offset: e.spool.length,
        data: Buffer.alloc(0),
        final: true,
        totalBytes: e.spool.length,
        crc32: e.spool.crc,
      });
    }
    // Nothing left to send until new output, the end of the log, or a resend.
    if (e.sent === e.spool.length && (!e.spool.finished || e.finalSent)) this.dirty.delete(e);
    return false;
  }

  private onAck(a: LogAck): void {
    const e = this.entries.get(a.leaseId);
    if (!e || e.attempt !== a.attempt) return;
    if (a.stop) {
      this.log.warn({ leaseId: a.leaseId }, 'control plane no longer wants this log');
      this.drop(a.leaseId);
      this.onDone(a.leaseId, 'stopped');
      return;
    }
    const committed = Number(a.committedOffset);
    e.lastAckAt = Date.now();
    if (a.complete) {
      e.complete = true;
      e.acked = committed;
      this.entries.delete(a.leaseId);
      e.spool.remove();
      this.onDone(a.leaseId, 'complete');
      return;
    }
    const frame = e.inflight.get(Number(a.frameOffset));
    e.inflight.delete(Number(a.frameOffset));
    if (!frame || frame.gen !== e.gen) return; // an answer to a frame from before a resend
    if (committed < frame.end || frame.final) {
      // A dropped or reordered frame, a lease not yet accepted, or (for the final frame) a
      // length or CRC mismatch: resend from what the server holds, on the next flush.
      this.log.debug({ leaseId: a.leaseId, committed, expected: frame.end }, 'log resend');
      e.gen++;
      e.inflight.clear();
      e.sent = committed;
      e.finalSent = false;
      this.dirty.add(e);
    }
    e.acked = committed;
  }
}
