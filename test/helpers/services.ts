/**
 * Where the tests find the real services that scripts/test.sh starts. A test that needs a
 * service it cannot reach fails, naming the service: never skipped.
 */
export function pgAdminUrl(): string {
  const url = process.env.GANTRY_TEST_PG_URL;
  if (!url) {
    throw new Error(
      'PostgreSQL is required for this test: set GANTRY_TEST_PG_URL (scripts/test.sh starts PostgreSQL 15 and sets it)',
    );
  }
  return url;
}

export function etcdEndpoint(): string {
  const url = process.env.GANTRY_TEST_ETCD;
  if (!url) throw new Error('etcd is required for this test: set GANTRY_TEST_ETCD (scripts/test.sh starts etcd and sets it)');
  return url;
}

/** A short random suffix that names this test run's databases, keys and containers. */
export const RUN_ID = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
