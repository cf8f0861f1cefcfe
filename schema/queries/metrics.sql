-- name: events_accepted
-- Accepted events per domain: its traces, and the rewards of its stored traces (from the kept
-- counts, migration 0020).
SELECT domain, traces + rewards FROM domain_totals WHERE traces > 0;

-- name: events_rejected
-- Rejected events per reason.
SELECT reason, count(*) FROM rejected_events GROUP BY reason;

-- name: distillations
-- Distillations per domain and status.
SELECT domain, status, count(*) FROM distillations GROUP BY domain, status;

-- name: llm_calls
-- LLM calls per purpose and model, their tokens, and those whose answer could not be used.
SELECT purpose, model, count(*), sum(tokens_in), sum(tokens_out), count(*) FILTER (WHERE error IS NOT NULL)
FROM llm_calls GROUP BY purpose, model;

-- name: llm_latency
-- The latency of every LLM call, cumulative per bucket (seconds), and their sum.
SELECT array_agg(bucket_count ORDER BY bound), (SELECT coalesce(sum(latency_seconds), 0) FROM llm_calls),
       (SELECT count(*) FROM llm_calls)
FROM (
    SELECT bound, (SELECT count(*) FROM llm_calls WHERE latency_seconds <= bound) AS bucket_count
    FROM unnest(%(bounds)s::float8[]) AS bound
) buckets;

-- name: library_versions
-- Library versions per domain.
SELECT domain, count(*) FROM library_versions GROUP BY domain;

-- name: rollbacks
-- Rollbacks per domain (by operators and by the automatic rollback).
SELECT domain, count(*) FROM library_events WHERE action = 'rollback' GROUP BY domain;

-- name: library_experiences
-- The experiences of the version each label points at.
SELECT l.domain, l.label, jsonb_array_length(v.experiences)
FROM library_labels l JOIN library_versions v ON v.domain = l.domain AND v.version = l.version;
