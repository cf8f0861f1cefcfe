-- name: domains_to_sweep
-- Every domain with its settings (the upkeep settings are read from them).
SELECT name, settings FROM domains ORDER BY name;

-- name: take_over_stalled_distillations
-- Distillations left 'running' whose lock no session holds: the runner holds it in its session for
-- the whole run, so a free lock means the runner died or lost its connection. The lock is taken
-- here until the transaction ends, so no runner starts on one between the check and the update.
-- Each becomes failed and due now (failed for good after its last attempt, as a failure would).
-- A stalled or failed one whose traces another distillation has used since (its task ran again
-- after the library moved on, so with another input) is superseded instead, as a runner would
-- have found at its end: nothing is left to do for it.
WITH stalled AS (
    SELECT id FROM (
        SELECT id, input_key FROM distillations WHERE domain = %(domain)s AND status = 'running'
    ) running
    WHERE pg_try_advisory_xact_lock(hashtext('grpod.distill'), hashtext(encode(input_key, 'hex')))
), candidates AS (
    SELECT id, true AS stalled FROM stalled
    UNION ALL
    SELECT id, false FROM distillations WHERE domain = %(domain)s AND status = 'failed'
), verdict AS (
    SELECT c.id, c.stalled, EXISTS (
        SELECT 1 FROM distillations d, jsonb_array_elements(d.samples) sample, traces t
        WHERE d.id = c.id AND t.trace_id = sample->>'trace_id'
          AND t.used_by_distillation IS NOT NULL AND t.used_by_distillation <> d.id
    ) AS superseded
    FROM candidates c
)
UPDATE distillations d
SET status = CASE WHEN v.superseded THEN 'superseded' ELSE 'failed' END,
    finished_at = now(),
    error = CASE WHEN v.superseded THEN %(superseded_error)s ELSE %(error)s END,
    next_attempt_at = CASE WHEN v.superseded OR d.attempts >= %(max_attempts)s THEN NULL ELSE now() END
FROM verdict v
WHERE d.id = v.id AND ((v.stalled AND d.status = 'running') OR (v.superseded AND d.status = 'failed'))
RETURNING d.id, d.group_id, d.attempts, d.next_attempt_at IS NULL AS terminal, v.superseded, v.stalled;

-- name: forget_rewarded_awaiting
-- A domain's traces still marked awaiting whose reward was stored by a concurrent batch (each
-- batch saw nothing of the other's uncommitted rows) await no more. (Only ones not yet expired:
-- a trace is stored, and can race with its reward, only before its time-to-live has passed.)
DELETE FROM traces_awaiting_reward a
WHERE a.domain = %(domain)s AND a.expired_at IS NULL
  AND EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = a.trace_id);

-- name: expire_traces
-- Traces of a domain with no reward ttl seconds after they arrived (and not used) are expired,
-- oldest first, from the traces awaiting a reward (where they stay, expired, until one comes).
WITH due AS (
    UPDATE traces_awaiting_reward a SET expired_at = now()
    WHERE a.trace_id IN (
        SELECT w.trace_id FROM traces_awaiting_reward w JOIN traces t ON t.trace_id = w.trace_id
        WHERE w.domain = %(domain)s AND w.expired_at IS NULL
          AND t.received_at < now() - make_interval(secs => %(ttl_seconds)s)
        ORDER BY t.received_at
        LIMIT %(limit)s)
    RETURNING a.trace_id
)
UPDATE traces t SET expired_at = now() FROM due
WHERE t.trace_id = due.trace_id AND t.expired_at IS NULL AND t.used_by_distillation IS NULL
  AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = t.trace_id)
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
