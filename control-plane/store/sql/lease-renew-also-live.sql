-- Of the leases a Beat lists, those that are live although not renewed: offered ones (the
-- runner may list one it accepted before the Accept landed) and ones this runner just
-- completed (its Completed overtook the Beat). Revoking those would make the runner drop a
-- log it may still be shipping.
--
-- Parameters:
--   $1 leases         text[]
--   $2 runner         text
--   $3 reclaimed      text[]: the outcomes of a lease taken away rather than completed
SELECT id FROM task_leases WHERE id = ANY($1::text[]) AND runner_id = $2
  AND ((state = 'offered' AND ended_at IS NULL) OR (state = 'done' AND NOT (outcome = ANY($3::text[]))))
