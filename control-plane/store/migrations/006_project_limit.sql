-- An optional limit on a project's running tasks, enforced like a package's max_concurrency
-- (README.md, "Several replicas (high availability)", concurrency limits): counted from live
-- leases under an advisory lock, and held as slots of an etcd semaphore (scope project:<id>)
-- across replicas. NULL: no limit.
ALTER TABLE projects ADD COLUMN max_running integer CHECK (max_running IS NULL OR max_running > 0);
