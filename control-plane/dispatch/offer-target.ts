import type { Offer, RunnerRef } from '../store/claims.ts';

/**
 * What the dispatcher offers work to: one runner's control stream on this replica. The
 * gRPC session implements it; dispatch/ declares it so that dispatch never imports the
 * transport (the session reaches dispatch through RunnerHub).
 */
export interface OfferTarget {
  /** The runner, once its Hello was accepted. */
  readonly runner: RunnerRef | undefined;
  /** The instance the runner runs on (its GANTRY_INSTANCE_ID), or ''. */
  readonly instanceId: string;
  readonly state: 'handshake' | 'open' | 'draining' | 'closed';
  /** Slots the runner can take now, by its own credit. */
  freeSlots(): number;
  /** Sends claimed work; called after the claim committed. */
  offer(offers: Offer[]): void;
  /** Sends the Cancels its tasks' users asked for and it was not sent yet. */
  sendPendingCancels(resend?: boolean): Promise<void>;
  /** Asks the runner to stop a lease that ran past its timeout. */
  cancelForTimeout(leaseId: string, attempt: number): void;
  /** Ends the stream (a newer session of the same runner superseded it). */
  close(why: string, endStream?: boolean): void;
}
