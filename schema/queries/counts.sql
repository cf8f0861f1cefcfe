-- name: add_count_deltas
-- What one transaction changed of each domain's counts (the sweep folds them into domain_counts).
INSERT INTO domain_count_deltas (domain, traces, rewards, unrewarded)
SELECT * FROM unnest(%(domains)s::text[], %(traces)s::bigint[], %(rewards)s::bigint[], %(unrewarded)s::bigint[]);

-- name: count_unmatched_rewards
-- Rewards not counted whose trace is stored: a reward and its trace stored at the same moment by
-- two batches that saw nothing of each other. They count now; returns the domain of each.
UPDATE rewards r SET counted = true
FROM traces t
WHERE NOT r.counted AND t.trace_id = r.trace_id
RETURNING t.domain;

-- name: fold_count_deltas
-- Move every delta into domain_counts (a delta is moved once, whoever else folds at the same time).
WITH moved AS (
    DELETE FROM domain_count_deltas RETURNING domain, traces, rewards, unrewarded
)
INSERT INTO domain_counts AS c (domain, traces, rewards, unrewarded)
SELECT domain, sum(traces), sum(rewards), sum(unrewarded) FROM moved GROUP BY domain ORDER BY domain
ON CONFLICT (domain) DO UPDATE
SET traces = c.traces + excluded.traces, rewards = c.rewards + excluded.rewards,
    unrewarded = c.unrewarded + excluded.unrewarded
RETURNING domain;
