-- name: claim_slot
-- Claim a scheduled task's time slot for this task id; no row back when the slot is claimed already.
INSERT INTO schedule_claims (task, slot, task_id) VALUES (%(task)s, %(slot)s, %(task_id)s)
ON CONFLICT (task, slot) DO NOTHING
RETURNING task_id;

-- name: slot_holder
-- The task id holding a slot's claim.
SELECT task_id FROM schedule_claims WHERE task = %(task)s AND slot = %(slot)s;

-- name: count_duplicate
-- Another copy of a claimed slot arrived and did nothing.
UPDATE schedule_claims SET duplicates = duplicates + 1 WHERE task = %(task)s AND slot = %(slot)s;

-- name: finish_slot
-- The holder of a slot's claim finished its run.
UPDATE schedule_claims SET finished_at = now()
WHERE task = %(task)s AND slot = %(slot)s AND task_id = %(task_id)s;

-- name: slot_claims
-- Every claim, oldest slot first (tests and operators).
SELECT task, slot, task_id, claimed_at, finished_at, duplicates FROM schedule_claims ORDER BY slot, task;

-- name: prune_claims
-- Claims of slots older than the given age: no copy of them is still on its way.
DELETE FROM schedule_claims WHERE slot < now() - make_interval(secs => %(seconds)s);
