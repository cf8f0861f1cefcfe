-- Maintenance: one effect per scheduled slot; traces that expire unrewarded; retention of what was
-- learned from (trajectories and LLM request bodies dropped, their hashes kept).

-- A scheduled run claims its task and time slot before it acts. A copy of the same slot from a
-- second beat finds the claim held by another task id and does nothing (it is counted); a retry
-- or a redelivery of the holder (the same task id) goes on.
CREATE TABLE schedule_claims (
    task         text        NOT NULL,
    slot         timestamptz NOT NULL,
    task_id      text        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    duplicates   integer     NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
    PRIMARY KEY (task, slot)
);
CREATE INDEX schedule_claims_slot ON schedule_claims (slot);

-- A trace with no reward trace_ttl_seconds after it arrived is expired: it never counts toward
-- its group's readiness again, even when a reward comes later (that reward is stored all the same).
ALTER TABLE traces ADD COLUMN expired_at timestamptz;
CREATE INDEX traces_expiry_candidates ON traces (domain, received_at)
    WHERE expired_at IS NULL AND used_by_distillation IS NULL;

-- Retention: the trajectory of a trace learned from, and the request body of an LLM call no
-- replay can need, are dropped after the domain's retention period; a SHA-256 of each stays.
ALTER TABLE traces
    ALTER COLUMN trajectory DROP NOT NULL,
    ADD COLUMN trajectory_hash bytea,
    ADD COLUMN trajectory_dropped_at timestamptz;
ALTER TABLE llm_calls
    ALTER COLUMN request DROP NOT NULL,
    ADD COLUMN request_hash bytea,
    ADD COLUMN request_dropped_at timestamptz;
CREATE INDEX traces_used_with_trajectory ON traces (used_by_distillation)
    WHERE used_by_distillation IS NOT NULL AND trajectory IS NOT NULL;

-- Pruning by age.
CREATE INDEX rejected_events_received ON rejected_events (received_at);
