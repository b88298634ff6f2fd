-- Fewer index writes on the dispatch path, and one index for the claim to choose.
--
-- Lease expiry was indexed (task_leases_expiry), so every Accept, Started and Beat, which
-- move expires_at, wrote a new entry into each of the table's five indexes. Without it those
-- updates touch no indexed column and can stay on the heap page (HOT updates, when the page
-- has room: one write instead of six). The lease sweeper
-- finds expired leases among the open ones (through a partial index holding only live leases,
-- one per task on a runner), which is as cheap at its once-a-second pace.
DROP INDEX task_leases_expiry;

-- The claim's ageing slice (the oldest queued tasks below the top priority) reads
-- tasks_ready one priority level at a time, in eligible_at order, as the head slice reads it.
-- A second index over the same queued rows cost a write on every insert and claim, and gave
-- the planner a wrong choice for the head slice (reading the whole queue to sort it).
DROP INDEX tasks_ready_age;
