-- name: domain_counts
-- Per domain: traces, and traces with at least one reward (from the kept counts, migration 0020).
SELECT d.name, coalesce(c.traces, 0) AS traces, coalesce(c.traces - c.unrewarded, 0) AS rewarded_traces
FROM domains d
LEFT JOIN domain_totals c ON c.domain = d.name
ORDER BY d.name;

-- name: pending_rewards
-- Rewards still waiting for their trace.
SELECT count(*) FROM rewards r
WHERE NOT r.counted AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.trace_id = r.trace_id);

-- name: rejected_counts
-- Rejected events by reason.
SELECT reason, count(*) FROM rejected_events GROUP BY reason ORDER BY reason;

-- name: last_accepted_at
-- When the newest trace or reward was stored.
SELECT greatest((SELECT max(received_at) FROM traces), (SELECT max(received_at) FROM rewards));

-- name: distillation_counts
-- Distillations by status.
SELECT status, count(*) FROM distillations GROUP BY status ORDER BY status;

-- name: llm_totals
-- The LLM ledger in total: calls, tokens in and out.
SELECT count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0) FROM llm_calls;

-- name: library_version_count
-- Library versions over all domains.
SELECT count(*) FROM library_versions;
