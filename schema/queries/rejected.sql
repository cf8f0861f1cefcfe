-- name: list_rejected
-- The newest rejected events first, optionally of one reason, or of some domains (NULL: any).
SELECT id, reason, detail, origin, trace_id, payload, payload_size, payload_truncated, received_at,
       replayed_at, replay_outcome, domain
FROM rejected_events
WHERE (%(reason)s::text IS NULL OR reason = %(reason)s::text)
  AND (%(domains)s::text[] IS NULL OR domain = ANY(%(domains)s::text[]))
ORDER BY id DESC
LIMIT %(limit)s;

-- name: get_rejected
-- One rejected event, locked so that two replays of it cannot run at once.
SELECT id, reason, detail, origin, trace_id, payload, payload_size, payload_truncated, received_at,
       replayed_at, replay_outcome, domain
FROM rejected_events WHERE id = %(id)s FOR UPDATE;

-- name: mark_replayed
-- Record what replaying a rejected event led to.
UPDATE rejected_events SET replayed_at = now(), replay_outcome = %(outcome)s WHERE id = %(id)s;
