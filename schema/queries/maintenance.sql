-- name: domains_to_sweep
-- Every domain with its settings (the upkeep settings are read from them).
SELECT name, settings FROM domains ORDER BY name;

-- name: take_over_stalled_distillations
-- Distillations left 'running' whose lock no session holds: the runner holds it in its session for
-- the whole run, so a free lock means the runner died or lost its connection. The lock is taken
-- here until the transaction ends, so no runner starts on one between the check and the update.
-- Each becomes failed and due now (failed for good after its last attempt, as a failure would).
WITH running AS MATERIALIZED (
    SELECT id, input_key FROM distillations WHERE domain = %(domain)s AND status = 'running'
), stalled AS (
    SELECT id FROM running
    WHERE pg_try_advisory_xact_lock(hashtext('grpod.distill'), hashtext(encode(input_key, 'hex')))
)
UPDATE distillations d
SET status = 'failed', finished_at = now(), error = %(error)s,
    next_attempt_at = CASE WHEN d.attempts >= %(max_attempts)s THEN NULL ELSE now() END
FROM stalled s
WHERE d.id = s.id AND d.status = 'running'
RETURNING d.id, d.group_id, d.attempts, d.next_attempt_at IS NULL AS terminal;

-- name: expire_traces
-- Traces of a domain with no reward ttl seconds after they arrived (and not used) are expired.
WITH due AS (
    SELECT t.trace_id FROM traces t
    WHERE t.domain = %(domain)s AND t.expired_at IS NULL AND t.used_by_distillation IS NULL
      AND t.received_at < now() - make_interval(secs => %(ttl_seconds)s)
      AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = t.trace_id)
    ORDER BY t.received_at
    LIMIT %(limit)s
)
UPDATE traces t SET expired_at = now() FROM due WHERE t.trace_id = due.trace_id
RETURNING t.trace_id;

-- name: drop_learned_trajectories
-- Trajectories of traces used by a distillation applied more than the retention period ago are
-- dropped; the SHA-256 of what was dropped (the stored JSON's text) stays. (Each SET expression
-- reads the row as it was, so the hash is of the trajectory being dropped.)
WITH due AS (
    SELECT t.trace_id FROM traces t JOIN distillations d ON d.id = t.used_by_distillation
    WHERE t.domain = %(domain)s AND t.trajectory IS NOT NULL AND d.status = 'applied'
      AND d.applied_at < now() - make_interval(secs => %(retention_seconds)s)
    ORDER BY t.trace_id
    LIMIT %(limit)s
)
UPDATE traces t
SET trajectory_hash = sha256(convert_to(t.trajectory::text, 'UTF8')), trajectory = NULL,
    trajectory_dropped_at = now()
FROM due WHERE t.trace_id = due.trace_id
RETURNING t.trace_id;

-- name: drop_request_bodies
-- Request bodies of LLM calls older than the retention period that nothing can ask for again:
-- a window's or a consolidation's call (never read back), or a call of a distillation finished
-- for good (applied or superseded) more than the retention period ago. A failed distillation may
-- still resume from its calls and a refused one may still be replayed: theirs stay.
WITH due AS (
    SELECT c.id FROM llm_calls c LEFT JOIN distillations d ON d.id = c.distillation_id
    WHERE c.domain = %(domain)s AND c.request IS NOT NULL
      AND c.created_at < now() - make_interval(secs => %(retention_seconds)s)
      AND (c.distillation_id IS NULL
           OR (d.status IN ('applied', 'superseded')
               AND coalesce(d.applied_at, d.finished_at) < now() - make_interval(secs => %(retention_seconds)s)))
    ORDER BY c.id
    LIMIT %(limit)s
)
UPDATE llm_calls c
SET request_hash = sha256(convert_to(c.request::text, 'UTF8')), request = NULL, request_dropped_at = now()
FROM due WHERE c.id = due.id
RETURNING c.id;

-- name: prune_rejected
-- Rejected events received more than the given age ago, oldest first.
DELETE FROM rejected_events WHERE id IN (
    SELECT id FROM rejected_events WHERE received_at < now() - make_interval(secs => %(seconds)s)
    ORDER BY id LIMIT %(limit)s
)
RETURNING id;

-- name: prune_heartbeats
-- Processes not seen for more than the given age (gone for good, or renamed hosts).
DELETE FROM heartbeats WHERE seen_at < now() - make_interval(secs => %(seconds)s)
RETURNING role, hostname;

-- name: dropped_trajectories
-- Which of these traces had their trajectory dropped by retention, and when.
SELECT trace_id, trajectory_dropped_at FROM traces
WHERE trace_id = ANY(%(trace_ids)s::text[]) AND trajectory_dropped_at IS NOT NULL
ORDER BY trace_id;

-- name: dropped_requests
-- How many of a distillation's LLM calls had their request body dropped by retention, and when.
SELECT count(*), max(request_dropped_at) FROM llm_calls
WHERE distillation_id = %(distillation_id)s AND request_dropped_at IS NOT NULL;
