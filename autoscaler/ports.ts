/**
 * What the autoscaler needs from the program that runs it, declared on the autoscaler's side:
 * the control plane runs the autoscaler through these interfaces and implements them over its
 * store and configuration (docs/architecture.md, "8 Import rules"), so nothing here names a table, a
 * fence or a control-plane module.
 */
import type { Clock } from '../lib/clock.ts';
import type { Logger } from '../lib/logger.ts';
import type { RecordedInstance } from './providers/reconcile.ts';
import type { AutoscaleState, InstanceType, InstanceView, ScaledCluster } from './types.ts';

/** What one tick reads of a cluster, in one consistent snapshot. */
export interface FleetSnapshot {
  /** Running leases of the cluster. */
  busy: number;
  /** Tasks that could be leased now: not delayed, not paused, not held back by a full max_concurrency. */
  queued: number;
  /** Every instance not yet TERMINATE, with its connected runners' slots and busy count. */
  instances: InstanceView[];
}

/** An instance to record: launched now, or found in the cloud and adopted. */
export interface NewInstance {
  instanceId: string;
  intentId: string | null;
  launchedAt: Date;
  subnetId?: string;
  /** Default ADD. */
  type?: InstanceType;
}

/**
 * The scaled clusters and their instances as one leadership reads and writes them. Every
 * write is fenced by that leadership: once a newer leader has written, the implementation
 * refuses the write (it throws), so a deposed leader's tick changes nothing.
 */
export interface FleetStore {
  /**
   * Which leadership this store writes for; another value means another leadership began.
   * The first tick under a new value resumes the launch intents a predecessor may have sent.
   */
  readonly leadership: number;
  /** Clusters with a provider, deleted ones included while they have instances, ordered by id. */
  clusters(): Promise<ScaledCluster[]>;
  /** The policy's state as last saved; undefined for a cluster never decided on. */
  loadState(clusterId: string): Promise<AutoscaleState | undefined>;
  /** Saves the policy's whole state, and the EWMA cluster stats show. */
  saveState(clusterId: string, state: AutoscaleState, ewma: number): Promise<void>;
  /** ADD instances whose runner has connected become LIVE; returns how many did. */
  markLive(clusterId: string): Promise<number>;
  /** Demand and the fleet of one cluster, read together (tasks name their cluster by name). */
  snapshot(clusterId: string, clusterName: string): Promise<FleetSnapshot>;
  /** Recorded instances not yet TERMINATE, for the reconciler. */
  recorded(clusterId: string): Promise<RecordedInstance[]>;
  /** Records instances with this boot deadline; an instance already recorded is left as it is. */
  recordInstances(clusterId: string, provider: 'ec2' | 'local', rows: readonly NewInstance[], bootDeadline: Date): Promise<void>;
  /** Moves those of `ids` whose type is one of `from` to `to`; returns the ids moved. */
  setType(clusterId: string, ids: readonly string[], from: readonly InstanceType[], to: InstanceType): Promise<string[]>;
  /** Of these instances, those whose runners hold no live lease (an offer in flight counts): safe to terminate. */
  idle(clusterId: string, ids: readonly string[]): Promise<string[]>;
}

/** A cluster's secrets, opened (they are sealed at rest). No log line or error carries one. */
export interface ClusterSecrets {
  /** The AWS keys the ec2 provider launches with; undefined unless both are set. */
  awsCredentials(clusterId: string): Promise<{ accessKeyId: string; secretAccessKey: string } | undefined>;
  /** The current runner token (`{{.ClusterToken}}`, a local runner's token); undefined when none is sealed. */
  runnerToken(clusterId: string): Promise<string | undefined>;
  /** Registry credentials for the runner image (`{{.DockerAuth}}`, `{{.DockerEmail}}`). */
  runnerSecrets(clusterId: string): Promise<{ dockerAuth?: string; dockerEmail?: string }>;
}

/**
 * The settings the autoscaler reads, named as the control plane's configuration names them
 * (so that configuration can be given as it is).
 */
export interface AutoscalerSettings {
  /** Tick period (GANTRY_AUTOSCALE_TICK_MS). */
  readonly autoscaleTickMs: number;
  /** Tunable overrides by name (GANTRY_AUTOSCALE_TUNING); `checkTuning` refuses unknown names. */
  readonly autoscaleTuning: Readonly<Record<string, number>>;
  /** The local provider keeps its state and instance work dirs under `<dataDir>/instances`. */
  readonly dataDir: string;
  /** Slots of each local runner process, and the executor they use. */
  readonly localRunnerSlots: number;
  readonly localExecutor: 'docker' | 'noop';
  /** Local runners log at this level ('silent' becomes 'warn': their faults must still show). */
  readonly logLevel: string;
  /** An EC2-compatible endpoint instead of AWS's (a private cloud, or tests' fake EC2). */
  readonly ec2Endpoint: string | undefined;
  /** What launched instances run: `{{.RunnerImage}}:{{.RunnersVersion}}`. */
  readonly runnerImage: string;
  readonly runnersVersion: string;
  /** host:port launched runners dial; unset: the host of `publicUrl` (else this host's name) and `grpcPort`. */
  readonly runnerEndpoint: string | undefined;
  readonly publicUrl: string | undefined;
  readonly grpcPort: number;
  /** Set when the control plane's gRPC port serves TLS: launched runners then dial with TLS. */
  readonly grpcTlsCert: string | undefined;
}

/** How this process starts local runner processes (the local provider). */
export interface LocalRunners {
  /** host:port they dial: this process's runner gateway. */
  readonly endpoint: string;
  /** A cluster's runner token when the secrets hold none sealed (the embedded start's cluster). */
  readonly token?: (clusterId: string) => string | undefined;
  /** Extra environment for them (tests: labels, log level). */
  readonly env?: Readonly<Record<string, string>>;
}

/** Everything `createAutoscaler` is given. */
export interface AutoscalerPorts {
  readonly secrets: ClusterSecrets;
  readonly settings: AutoscalerSettings;
  readonly local: LocalRunners;
  /** Instances changed state (LIVE, KILL, back to LIVE): the program re-reads which runners may take work. */
  instancesChanged(): void;
  readonly log: Logger;
  /** The loop's clock: decisions, boot deadlines, back-offs. Default: the system clock. */
  readonly clock?: Clock;
  /** The EC2 providers' clock: throttling and breaker windows, listing ages. Default: the system clock. */
  readonly providerClock?: Clock;
  /** Back-off of a cluster whose provider calls fail (default FAILURE_BACKOFF). */
  readonly backoff?: { baseMs: number; maxMs: number };
}
