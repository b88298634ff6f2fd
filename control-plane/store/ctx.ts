import type { Clock } from '../../lib/clock.ts';
import type { IdSource } from '../../lib/ids.ts';
import type { Db } from './db.ts';

/** What every part of the store needs: the database, the clock and the id source. */
export interface StoreCtx {
  readonly db: Db;
  readonly clock: Clock;
  readonly ids: IdSource;
}

/** A page of a list: `page` from 0, `perPage` rows. */
export interface Page {
  page: number;
  perPage: number;
}

export const pageSql = (p: Page) => ({ limit: p.perPage, offset: p.page * p.perPage });
