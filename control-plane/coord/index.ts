import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import { EtcdCoordinator } from './etcd.ts';
import { LocalCoordinator } from './local.ts';
import type { Coordinator } from './types.ts';

export type { Coordinator, CoordEvent, Leadership, Slot } from './types.ts';
export { codeScope, projectScope } from './types.ts';

/** etcd when ETCD_ENDPOINTS is set, else the in-process coordinator of a single replica. */
export function createCoordinator(config: ControlPlaneConfig, log: Logger): Coordinator {
  if (config.etcdEndpoints.length === 0) return new LocalCoordinator(config.serverId);
  return new EtcdCoordinator({
    endpoints: config.etcdEndpoints,
    prefix: config.etcdPrefix,
    ttlS: config.coordTtlS,
    replicaId: config.serverId,
    log,
  });
}
