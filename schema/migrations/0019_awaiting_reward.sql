-- Traces still awaiting their first reward, kept apart from the traces: ingest adds a trace that
-- arrives with no reward here and removes it when a reward comes; expiry takes its traces from
-- here. What counts or expires them (the dashboard's overview, the maintenance sweep) then reads a
-- set bounded by the traffic of the time-to-live window, not the whole history: bench/scale.py
-- found the overview's anti-join over every trace at 20 s per page at a million traces. Ingest
-- never updates a stored trace's row, so it never waits on grouping or distillation holding one.
CREATE TABLE traces_awaiting_reward (
    trace_id  text PRIMARY KEY REFERENCES traces (trace_id),
    domain    text NOT NULL
);
CREATE INDEX traces_awaiting_reward_domain ON traces_awaiting_reward (domain);

INSERT INTO traces_awaiting_reward (trace_id, domain)
SELECT t.trace_id, t.domain FROM traces t
WHERE t.expired_at IS NULL AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = t.trace_id);

-- Expiry no longer scans traces (the planner had stopped using this index at size anyway).
DROP INDEX traces_expiry_candidates;
