import { randomBytes } from 'node:crypto';

/**
 * Ids are 24 hex characters (12 bytes), time-ordered like MongoDB ObjectIds, which
 * IronWorker clients expect: 6 bytes of milliseconds since the epoch, 3 bytes fixed per
 * process, 3 bytes of a counter that starts at a random value. Within one process ids are
 * strictly increasing; across processes they are ordered to the millisecond.
 */
export type IdSource = () => string;

const processBytes = randomBytes(3).toString('hex');
let counter = randomBytes(3).readUIntBE(0, 3);
let lastMs = 0;

export const newId: IdSource = () => {
  let ms = Date.now();
  // Never go backwards, even if the wall clock does: keeps ids sortable within the process.
  if (ms < lastMs) ms = lastMs;
  lastMs = ms;
  counter = (counter + 1) & 0xffffff;
  return ms.toString(16).padStart(12, '0').slice(-12) + processBytes + counter.toString(16).padStart(6, '0');
};

/** True when `s` has the form of a Gantry/IronWorker id. */
export function isId(s: unknown): s is string {
  return typeof s === 'string' && /^[0-9a-f]{24}$/.test(s);
}
