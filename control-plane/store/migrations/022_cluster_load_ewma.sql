-- The autoscaler's fast EWMA of demand (autoscaler_state.ewma) as it stood at each recorded
-- instant, so a cluster's load over time shows what its scaler acted on beside what it saw.
-- NULL where the cluster had no autoscaler state yet (and on rows recorded before this).
ALTER TABLE cluster_load ADD COLUMN ewma double precision;
