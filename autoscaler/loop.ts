import type { Clock } from '../lib/clock.ts';
import type { Logger } from '../lib/logger.ts';
import { decide } from './decide.ts';
import type { FleetStore } from './ports.ts';
import { autoscaleConfig, initialState, type LaunchResult, type ScaledCluster, type Tunables } from './types.ts';
import { ProviderError, ThrottledError, shortfallReason, type Provider } from './providers/types.ts';
import { reconcile } from './providers/reconcile.ts';

/** Where the loop gets a cluster's provider and what it needs to launch for it. */
export interface ProviderSource {
  /** The provider of this cluster (cached by the source; rebuilt when the cluster changes). */
  get(cluster: ScaledCluster): Promise<Provider>;
  /** Runner slots per instance when the cluster says 0 (EC2: instance memory ÷ cluster memory). */
  runnersPerInstance(cluster: ScaledCluster): number;
  /** The user data to launch with (the rendered cloud-config; empty for local instances). */
  userData(cluster: ScaledCluster): Promise<string>;
}

/** What the leader loop runs with (createAutoscaler in index.ts builds it from the ports). */
export interface LoopOptions {
  providers: ProviderSource;
  clock: Clock;
  log: Logger;
  tuning: Partial<Tunables>;
  /** Instances changed state: every replica re-reads which runners may take work. */
  instancesChanged(): void;
  /** Back-off of a cluster whose provider calls fail (default FAILURE_BACKOFF). */
  backoff?: { baseMs: number; maxMs: number };
}

/** The leader loop: `tick` makes one pass over every scaled cluster. */
export interface Loop {
  tick(fleet: FleetStore, signal: AbortSignal): Promise<void>;
}

/**
 * A cluster whose provider calls fail (bad credentials, throttling, a cloud outage) is left
 * alone for 10 s, then 20 s, … up to 10 min between attempts: each attempt costs the cloud
 * calls of a tick and would log the same error every tick (one user's 350 broken clusters
 * made 13,000 lines in one run). Its error is logged once per attempt, and once when it
 * recovers.
 */
export const FAILURE_BACKOFF = Object.freeze({ baseMs: 10_000, maxMs: 600_000 });

/** A cluster being backed off: no provider call for it before `until`. */
interface Failing {
  /** Consecutive failed attempts. */
  attempts: number;
  until: number;
  since: number;
  /** The cluster's settings when it failed: changed settings (new credentials) end the back-off. */
  updatedAt: number;
}

/**
 * The autoscaler (leader work), one pass over every cluster with a provider per tick:
 * adopt or clean up what the cloud shows, observe demand and the fleet in one snapshot, let
 * the pure `decide()` choose, persist its state (fenced) before acting, then act: launch
 * with the persisted intent as idempotency key, mark KILL (the instance's runners take no
 * new work but finish theirs), cancel a KILL when demand returns, and terminate only
 * instances whose runners hold no lease — checked again right before terminating.
 */
export function autoscalerLoop(o: LoopOptions): Loop {
  const { providers, clock, log } = o;
  /** Launch outcomes since the last tick, per cluster, for decide()'s bookkeeping. */
  const results = new Map<string, LaunchResult[]>();
  const failing = new Map<string, Failing>();
  const backoff = o.backoff ?? FAILURE_BACKOFF;
  let leadership: number | undefined;

  async function tickCluster(c: ScaledCluster, fleet: FleetStore, resumed: boolean, signal: AbortSignal): Promise<void> {
    const provider = await providers.get(c);
    const clog = log.child({ clusterId: c.id, provider: c.provider });
    if (c.deletedAt) {
      // A deleted cluster's instances are terminated now, running tasks or not (the
      // reference: deleting an autoscaled cluster terminates its instances).
      const ids = (await fleet.recorded(c.id)).map((i) => i.instanceId);
      const gone = await provider.terminate(c.id, ids);
      await fleet.setType(c.id, gone, ['ADD', 'LIVE', 'KILL'], 'TERMINATE');
      if (gone.length) clog.info({ instances: gone }, 'deleted cluster: instances terminated');
      return;
    }
    const now = clock.now();
    if ((await fleet.markLive(c.id)) > 0) o.instancesChanged();
    const prev = (await fleet.loadState(c.id)) ?? initialState();

    // What the cloud shows against what we recorded.
    const listing = await provider.list(c.id);
    const actions = reconcile({
      clusterId: c.id,
      recorded: await fleet.recorded(c.id),
      listing,
      knownIntents: prev.intents.map((i) => i.id),
      now,
    });
    const eips = c.aws?.eips;
    const cfg = autoscaleConfig(
      {
        clusterId: c.id,
        runnersPerInstance: c.runnersPerInstance > 0 ? c.runnersPerInstance : providers.runnersPerInstance(c),
        runnersMin: c.runnersMin,
        runnersMax: c.runnersMax,
        eips: Array.isArray(eips) ? eips : [],
        disable: c.disable,
      },
      o.tuning,
    );
    for (const a of actions) {
      if (signal.aborted) return;
      if (a.kind === 'adopt') {
        await fleet.recordInstances(
          c.id,
          c.provider,
          [{ instanceId: a.instanceId, intentId: a.intentId, launchedAt: a.instance.launchedAt, subnetId: a.instance.subnetId }],
          new Date(a.instance.launchedAt.getTime() + cfg.bootDeadlineMs),
        );
        clog.warn({ instanceId: a.instanceId }, 'adopted an instance found in the cloud');
      } else if (a.kind === 'terminate' || a.kind === 'fail') {
        const done = await provider.terminate(c.id, [a.instanceId]);
        await fleet.setType(c.id, done, ['ADD', 'LIVE', 'KILL'], 'TERMINATE');
        clog.warn({ instanceId: a.instanceId, reason: a.reason }, 'terminated an instance the cloud should not have');
      } else if (a.kind === 'gone') {
        await fleet.setType(c.id, [a.instanceId], ['ADD', 'LIVE', 'KILL'], 'TERMINATE');
        clog.warn({ instanceId: a.instanceId, state: a.cloudState }, 'instance gone from the cloud');
      }
    }

    const snap = await fleet.snapshot(c.id, c.name);
    const d = decide(
      {
        at: now.getTime(),
        busy: snap.busy,
        queued: snap.queued,
        instances: snap.instances,
        provider: provider.health(),
        launchResults: results.get(c.id) ?? [],
        resumed,
      },
      prev,
      cfg,
      now.getTime(),
    );
    results.delete(c.id);
    // Persist first: a leader that dies while acting leaves intents its successor resumes.
    await fleet.saveState(c.id, d.state, d.state.eUp ?? 0);
    if (d.actions.length > 0) clog.info({ info: d.info, actions: d.actions }, 'autoscaler decided');

    for (const a of d.actions) {
      if (signal.aborted) return;
      switch (a.type) {
        case 'alert':
          (a.active ? clog.error.bind(clog) : clog.info.bind(clog))({ code: a.code, active: a.active }, a.message);
          break;
        case 'cancelKill':
          if ((await fleet.setType(c.id, a.instanceIds, ['KILL'], 'LIVE')).length > 0) o.instancesChanged();
          break;
        case 'kill':
          if ((await fleet.setType(c.id, a.instanceIds, ['LIVE', 'ADD'], 'KILL')).length > 0) o.instancesChanged();
          break;
        case 'launch': {
          const r: LaunchResult = await launch(c, provider, a.intentId, a.count, a.reason === 'resume', cfg.bootDeadlineMs, fleet, clog);
          results.set(c.id, [...(results.get(c.id) ?? []), r]);
          break;
        }
        case 'terminate': {
          // The last check: a KILL instance's runners hold no lease (an offer in flight counts).
          const safe = a.from === 'KILL' ? await fleet.idle(c.id, a.instanceIds) : [...a.instanceIds];
          if (safe.length === 0) break;
          const done = await provider.terminate(c.id, safe);
          await fleet.setType(c.id, done, a.from === 'KILL' ? ['KILL'] : ['ADD'], 'TERMINATE');
          clog.info({ instances: done, reason: a.reason }, 'instances terminated');
          break;
        }
      }
    }
  }

  async function launch(
    c: ScaledCluster,
    provider: Provider,
    intentId: string,
    count: number,
    resumed: boolean,
    bootDeadlineMs: number,
    fleet: FleetStore,
    clog: Logger,
  ): Promise<LaunchResult> {
    try {
      const out = await provider.launch({ clusterId: c.id, intentId, count, userData: await providers.userData(c), resumed });
      const now = clock.now();
      await fleet.recordInstances(
        c.id,
        c.provider,
        out.instances.map((i) => ({ instanceId: i.instanceId, intentId, launchedAt: i.launchedAt, subnetId: i.subnetId })),
        new Date(now.getTime() + bootDeadlineMs),
      );
      clog.info({ intentId, instances: out.instances.map((i) => i.instanceId), shortfall: out.shortfall?.count }, 'instances launched');
      return {
        intentId,
        launched: out.instances.length,
        failed: out.shortfall?.count ?? 0,
        reason: out.shortfall?.reason ?? null,
      };
    } catch (err) {
      const reason = err instanceof ProviderError ? shortfallReason(err) : 'error';
      clog.warn({ intentId, err: (err as Error).message, reason }, 'launch failed');
      return { intentId, launched: 0, failed: count, reason };
    }
  }

  return {
    async tick(fleet, signal) {
      // The first tick of a leadership resumes the intents a predecessor may have sent.
      const resumed = leadership !== fleet.leadership;
      leadership = fleet.leadership;
      const clusters = await fleet.clusters();
      const ids = new Set(clusters.map((c) => c.id));
      for (const id of failing.keys()) if (!ids.has(id)) failing.delete(id);
      for (const c of clusters) {
        if (signal.aborted) return;
        const now = clock.now().getTime();
        let f = failing.get(c.id);
        if (f && f.updatedAt !== c.updatedAt.getTime()) {
          failing.delete(c.id);
          f = undefined;
        }
        if (f && now < f.until) continue;
        try {
          await tickCluster(c, fleet, resumed, signal);
          if (f) {
            failing.delete(c.id);
            log.info({ clusterId: c.id, provider: c.provider, attempts: f.attempts, failingForMs: now - f.since }, 'autoscaler: the cluster\'s provider answers again');
          }
        } catch (err) {
          if (signal.aborted) return;
          if (!(err instanceof ProviderError)) {
            // Not the cluster's cloud (the database, a refused fenced write): nothing to back off from.
            log.error({ clusterId: c.id, err }, 'autoscaler tick failed for a cluster');
            continue;
          }
          const attempts = (f?.attempts ?? 0) + 1;
          const delay = Math.min(backoff.maxMs, backoff.baseMs * 2 ** (attempts - 1));
          // A throttled call says when the cloud takes calls again; never sooner than that.
          const until = Math.max(now + delay, err instanceof ThrottledError ? err.retryAt : 0);
          failing.set(c.id, { attempts, until, since: f?.since ?? now, updatedAt: c.updatedAt.getTime() });
          log.error(
            { clusterId: c.id, provider: c.provider, code: err.cloudCode, err: err.message, attempts, retryInMs: until - now },
            'autoscaler: the cluster\'s provider calls fail; backing off',
          );
        }
      }
    },
  };
}
