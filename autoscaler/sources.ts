import os from 'node:os';
import type { Clock } from '../lib/clock.ts';
import type { Logger } from '../lib/logger.ts';
import { ConfigError } from '../lib/errors.ts';
import { clusterUserData } from '../cloud-config/render.ts';
import { Ec2Provider } from './providers/ec2.ts';
import { LocalProvider } from './providers/local.ts';
import { ProviderError, type Provider } from './providers/types.ts';
import type { ProviderSource } from './loop.ts';
import type { AutoscalerSettings, ClusterSecrets, LocalRunners } from './ports.ts';
import { AUTOSCALE_DEFAULTS, type ScaledCluster, type Tunables } from './types.ts';

/** Memory (MiB) of common EC2 instance types, for runners_per_instance = 0 (instance memory ÷ cluster memory). */
const INSTANCE_MEMORY_MIB: Record<string, number> = {
  nano: 512, micro: 1024, small: 2048, medium: 4096, large: 8192, xlarge: 16384, '2xlarge': 32768, '4xlarge': 65536,
  '8xlarge': 131072, '12xlarge': 196608, '16xlarge': 262144, '24xlarge': 393216,
};
/** Families whose memory per size differs from the general-purpose table (c: half, r: double, t3/t4g follow the table). */
const FAMILY_FACTOR: Record<string, number> = { c: 0.5, r: 2, x: 4, z: 4 };

/** Runner slots an EC2 instance holds for a cluster: instance memory ÷ per-task memory, at least 1. */
export function ec2RunnersPerInstance(instanceType: string, taskMemoryMb: number): number {
  const [family = '', size = ''] = instanceType.split('.');
  const base = INSTANCE_MEMORY_MIB[size];
  if (!base) return 1;
  const factor = /^t\d/.test(family) ? 1 : (FAMILY_FACTOR[family[0] ?? ''] ?? 1);
  // Leave a tenth (at least 512 MiB) for the host and Docker.
  const usable = base * factor - Math.max(512, (base * factor) / 10);
  return Math.max(1, Math.floor(usable / Math.max(1, taskMemoryMb)));
}

/** The local provider's host cap: instances this machine can hold (memory and CPUs), at least `floor`. */
export function localInstanceCap(taskMemoryMb: number, slotsPerInstance: number, floor: number): number {
  const byMemory = Math.floor(os.totalmem() / (1024 * 1024) / (taskMemoryMb * slotsPerInstance));
  const byCpu = os.cpus().length * 2;
  return Math.max(floor, 1, Math.min(byMemory, byCpu));
}

/** Checks GANTRY_AUTOSCALE_TUNING's names against the tunables. */
export function checkTuning(t: Readonly<Record<string, number>>): Partial<Tunables> {
  for (const k of Object.keys(t)) {
    if (!(k in AUTOSCALE_DEFAULTS)) {
      throw new ConfigError(`GANTRY_AUTOSCALE_TUNING.${k} is not a tunable; known: ${Object.keys(AUTOSCALE_DEFAULTS).join(', ')}`);
    }
  }
  return t as Partial<Tunables>;
}

/**
 * Providers for the autoscaler: one `local` provider for this host (instances are runner
 * processes) and an `ec2` provider per cluster, rebuilt when the cluster's settings change.
 */
export class Providers implements ProviderSource {
  private local: LocalProvider | undefined;
  private readonly ec2 = new Map<string, { at: number; p: Ec2Provider }>();

  constructor(
    private readonly o: {
      secrets: ClusterSecrets;
      settings: AutoscalerSettings;
      local: LocalRunners;
      log: Logger;
      /** The EC2 providers' clock (throttling and breaker windows, listing ages); tests run it virtually. */
      clock?: Clock;
    },
  ) {}

  async get(c: ScaledCluster): Promise<Provider> {
    if (c.provider === 'local') return this.localProvider();
    const cached = this.ec2.get(c.id);
    if (cached && cached.at === c.updatedAt.getTime()) return cached.p;
    await cached?.p.close();
    const creds = await this.o.secrets.awsCredentials(c.id);
    if (!creds) throw new ProviderError('MissingCredentials', `cluster ${c.id} has no AWS credentials: set autoscale.aws.access_key_id and secret_access_key`);
    const p = new Ec2Provider(
      { ...c.aws, access_key_id: creds.accessKeyId, secret_access_key: creds.secretAccessKey },
      {
        log: this.o.log.child({ provider: 'ec2', clusterId: c.id }),
        ...(this.o.settings.ec2Endpoint ? { endpoint: this.o.settings.ec2Endpoint } : {}),
        ...(this.o.clock ? { clock: this.o.clock } : {}),
      },
    );
    this.ec2.set(c.id, { at: c.updatedAt.getTime(), p });
    return p;
  }

  /** The host's one local provider (it owns `<dataDir>/instances`). */
  localProvider(): LocalProvider {
    const { settings, secrets, local } = this.o;
    this.local ??= new LocalProvider({
      dataDir: settings.dataDir,
      controlPlane: local.endpoint,
      clusterToken: async (id) => {
        const t = (await secrets.runnerToken(id)) ?? local.token?.(id);
        if (!t) throw new Error(`no runner token is available for cluster ${id}; rotate it (gantry cluster token) to seal one`);
        return t;
      },
      slotsPerInstance: settings.localRunnerSlots,
      executor: settings.localExecutor,
      extraEnv: { LOG_LEVEL: settings.logLevel === 'silent' ? 'warn' : settings.logLevel, ...local.env },
      log: this.o.log.child({ provider: 'local' }),
    });
    return this.local;
  }

  runnersPerInstance(c: ScaledCluster): number {
    if (c.provider === 'local') return this.o.settings.localRunnerSlots;
    const type = typeof c.aws?.instance_type === 'string' ? c.aws.instance_type : '';
    return ec2RunnersPerInstance(type, c.memoryMb);
  }

  async userData(c: ScaledCluster): Promise<string> {
    if (c.provider === 'local') return '';
    const { secrets, settings } = this.o;
    const token = await secrets.runnerToken(c.id);
    if (!token) throw new ProviderError('MissingRunnerToken', `cluster ${c.id} has no sealed runner token: rotate it (POST /2/clusters/${c.id}/credentials)`);
    const registry = await secrets.runnerSecrets(c.id);
    return clusterUserData(c.userData, {
      clusterId: c.id,
      clusterToken: token,
      runnersVersion: settings.runnersVersion,
      runnerImage: settings.runnerImage,
      controlPlane: settings.runnerEndpoint ?? `${settings.publicUrl ? new URL(settings.publicUrl).hostname : os.hostname()}:${settings.grpcPort}`,
      controlPlaneTls: Boolean(settings.grpcTlsCert),
      ...(registry.dockerAuth ? { dockerAuth: registry.dockerAuth } : {}),
      ...(registry.dockerEmail ? { dockerEmail: registry.dockerEmail } : {}),
      runnersPerInstance: c.runnersPerInstance,
      memory: c.memoryMb,
    });
  }

  async close(o: { stopLocal?: boolean } = {}): Promise<void> {
    for (const { p } of this.ec2.values()) await p.close();
    await this.local?.close({ stopInstances: o.stopLocal ?? false });
  }
}
