/**
 * The autoscaler as a program runs it: `createAutoscaler(ports)` gives the leader loop over
 * the providers (the host's local runner processes, one EC2 provider per cluster). The
 * program that runs it implements the ports (ports.ts) and calls `tick` from its own leader
 * work; this is the module it imports, with ports.ts and types.ts.
 */
import { systemClock } from '../lib/clock.ts';
import type { ProgramState } from '../lib/lifecycle.ts';
import { autoscalerLoop } from './loop.ts';
import type { AutoscalerPorts, FleetStore } from './ports.ts';
import { Providers, checkTuning } from './sources.ts';

export { FAILURE_BACKOFF } from './loop.ts';
export { checkTuning, localInstanceCap } from './sources.ts';

/** The running autoscaler. */
export interface Autoscaler {
  /** How often to tick (`settings.autoscaleTickMs`). */
  readonly everyMs: number;
  /**
   * One pass over every scaled cluster: adopt or clean up what the cloud shows, observe
   * demand and the fleet, decide, persist the decision, then act. Leader work: call it only
   * while leading, one pass at a time, with `fleet` bound to the current leadership and
   * `signal` aborting when that leadership ends.
   */
  tick(fleet: FleetStore, signal: AbortSignal): Promise<void>;
  /** `running` until closed, then `stopped` (`failed` when a provider could not be closed). */
  readonly state: ProgramState;
  /**
   * Closes the providers. Local runner processes keep running (the next start adopts them)
   * unless `stopLocal` is set, which drains and stops them. The first call decides; later
   * calls wait for it.
   */
  close(o?: { stopLocal?: boolean }): Promise<void>;
}

/**
 * Creates the autoscaler. Throws ConfigError for an unknown tunable in
 * `settings.autoscaleTuning`; nothing is started until the first `tick`.
 */
export function createAutoscaler(ports: AutoscalerPorts): Autoscaler {
  const { settings, log } = ports;
  const tuning = { tickMs: settings.autoscaleTickMs, ...checkTuning(settings.autoscaleTuning) };
  const providers = new Providers({
    secrets: ports.secrets,
    settings,
    local: ports.local,
    log,
    ...(ports.providerClock ? { clock: ports.providerClock } : {}),
  });
  const loop = autoscalerLoop({
    providers,
    clock: ports.clock ?? systemClock,
    log,
    tuning,
    instancesChanged: () => ports.instancesChanged(),
    ...(ports.backoff ? { backoff: ports.backoff } : {}),
  });
  let state: ProgramState = 'running';
  let closing: Promise<void> | undefined;
  return {
    everyMs: settings.autoscaleTickMs,
    get state() {
      return state;
    },
    tick: (fleet, signal) => loop.tick(fleet, signal),
    close: (o = {}) =>
      (closing ??= providers.close(o).then(
        () => {
          state = 'stopped';
        },
        (err: unknown) => {
          state = 'failed';
          throw err;
        },
      )),
  };
}
