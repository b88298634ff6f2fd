import type { Store } from '../../control-plane/store/index.ts';

/** The interval of the seeded series, as the recorders write them (GANTRY_STATS_INTERVAL_S). */
export const STEP_S = 10;
const WEEK_S = 7 * 86_400;

/** A runner's layout, as a runner with two cores, one disk and one interface reports it. */
const LAYOUT: [string, string][] = [
  ['cpu_usage', '0'],
  ['cpu_usage', '1'],
  ['memory_used', 'total'],
  ['memory_cached', 'total'],
  ['memory_total', 'total'],
  ['disk_used', '/'],
  ['disk_read', '/'],
  ['disk_write', '/'],
  ['network_rx', 'eth0'],
  ['network_tx', 'eth0'],
];

export interface SeededFleet {
  clusterId: string;
  clusterName: string;
  runnerId: string;
  /** Instance ids by state. */
  instances: Record<'ADD' | 'LIVE' | 'KILL' | 'TERMINATE', string>;
  /** Points of the cluster's load series over the past week (one every 10 s). */
  loadPoints: number;
  /** Samples of the runner over the past hour. */
  samples: number;
}

/**
 * Recorded data for the fleet pages, written as the recorders would: a cluster of `userId`
 * with an instance in each state, a week of its load at 10-second instants (60,480 and one
 * points: demand rising and falling by day), a connected runner with an hour of machine
 * samples, and a day of the project's queue load per minute for `code`.
 */
export async function seedFleet(store: Store, o: { userId: string; projectId: string; codeId: string; now?: Date; name?: string }): Promise<SeededFleet> {
  const now = new Date(Math.floor((o.now ?? new Date()).getTime() / (STEP_S * 1000)) * STEP_S * 1000);
  const name = o.name ?? 'fleet';
  const { cluster } = await store.clusters.create(name, { userId: o.userId });
  const instances = { ADD: 'i-0add', LIVE: 'i-0live', KILL: 'i-0kill', TERMINATE: 'i-0term' };
  for (const [type, id] of Object.entries(instances)) {
    await store.db.query(
      `INSERT INTO cluster_instances (id, cluster_id, instance_id, provider, type, runners_total, runners_available, launched_at, live_at, created_at, updated_at)
       VALUES ($1, $2, $1, 'local', $3, $4, $4, $5, $6, $5, $5)`,
      [`${id}-${cluster.id.slice(-6)}`, cluster.id, type, type === 'LIVE' ? 1 : 0, new Date(now.getTime() - 3_600_000), type === 'ADD' ? null : new Date(now.getTime() - 3_500_000)],
    );
  }
  for (const k of Object.keys(instances) as (keyof typeof instances)[]) instances[k] = `${instances[k]}-${cluster.id.slice(-6)}`;
  const from = new Date(now.getTime() - WEEK_S * 1000);
  const load = await store.db.query(
    `INSERT INTO cluster_load (cluster, at, busy, queued, runners, slots, instances_add, instances_live, instances_kill, ewma)
     SELECT $1, at, b, q, 1 + b / 4, 4 + 4 * (b / 4), CASE WHEN q > 6 THEN 1 ELSE 0 END, 1 + b / 4, 0, 0.8 * (b + q) + 1
     FROM (SELECT at,
                  (6 + round(5 * sin(extract(epoch FROM at) / 86400 * 2 * pi())))::int AS b,
                  greatest(0, round(8 * sin(extract(epoch FROM at) / 21600 * 2 * pi())))::int AS q
           FROM generate_series($2::timestamptz, $3::timestamptz, interval '${STEP_S} seconds') AS at) s`,
    [name, from, now],
  );
  const runnerId = `runner-${cluster.id.slice(-6)}`;
  await store.db.query(
    `INSERT INTO runners (id, cluster_id, slots, connected, draining, last_beat_at, created_at) VALUES ($1, $2, 4, true, false, $3, $4)`,
    [runnerId, cluster.id, now, new Date(now.getTime() - 3_600_000)],
  );
  const seriesId = await store.series.resolve({ runnerId, clusterId: cluster.id, md5: 'seeded', metrics: LAYOUT.map((l) => l[0]), variants: LAYOUT.map((l) => l[1]) });
  const samples = [];
  for (let i = 360; i > 0; i--) {
    const ts = new Date(now.getTime() - i * STEP_S * 1000);
    const w = Math.sin(i / 30);
    samples.push({
      seriesId,
      ts,
      busy: 1,
      values: [40 + 30 * w, 20 + 10 * Math.cos(i / 20), 900 + 200 * w, 300, 2048, 10_000 + i, 50_000 + 40_000 * w, 20_000, 200_000 + 150_000 * w, 80_000 + 60_000 * Math.cos(i / 15)],
    });
  }
  await store.series.insert(samples);
  await store.db.query(
    `INSERT INTO queue_load_ticks (at, recorded_at) SELECT at, at FROM generate_series($1::timestamptz, $2::timestamptz, interval '60 seconds') AS at`,
    [new Date(now.getTime() - 86_400_000), now],
  );
  await store.db.query(
    `INSERT INTO queue_load (project_id, at, code_id, priority, pending, queued, running)
     SELECT $1, at, $2, 0, (2 + 2 * sin(extract(epoch FROM at) / 3600))::int, (5 + 5 * sin(extract(epoch FROM at) / 7200))::int, 3
     FROM generate_series($3::timestamptz, $4::timestamptz, interval '60 seconds') AS at`,
    [o.projectId, o.codeId, new Date(now.getTime() - 86_400_000), now],
  );
  return { clusterId: cluster.id, clusterName: name, runnerId, instances, loadPoints: load.rowCount ?? 0, samples: samples.length };
}
