-- Per domain: the traces stored, the rewards of its stored traces, and its traces with no reward
-- yet, kept as counts so that /metrics and `grpod status` read one row per domain instead of
-- counting the whole history (bench/scale.py: 2.5 s per /metrics scrape, 7.4 s for `grpod status`
-- at a million traces).
--
-- Ingest appends what each batch changed to domain_count_deltas (no row is shared by two batches,
-- so concurrent batches never wait on each other); the maintenance sweep folds the deltas into
-- domain_counts. A reading is the sum of both.
CREATE TABLE domain_counts (
    domain      text   PRIMARY KEY REFERENCES domains (name),
    traces      bigint NOT NULL,
    rewards     bigint NOT NULL,  -- rewards of the domain's stored traces
    unrewarded  bigint NOT NULL   -- stored traces with no reward yet, expired ones included
);
CREATE TABLE domain_count_deltas (
    domain      text   NOT NULL,
    traces      bigint NOT NULL,
    rewards     bigint NOT NULL,
    unrewarded  bigint NOT NULL
);
CREATE VIEW domain_totals AS
SELECT domain, sum(traces)::bigint AS traces, sum(rewards)::bigint AS rewards, sum(unrewarded)::bigint AS unrewarded
FROM (SELECT domain, traces, rewards, unrewarded FROM domain_counts
      UNION ALL
      SELECT domain, traces, rewards, unrewarded FROM domain_count_deltas) AS c
GROUP BY domain;

-- A reward counts for its trace's domain once its trace is stored. `counted` says that it has:
-- at once when its trace was there, when its trace arrives, or, for a reward and a trace stored at
-- the same moment by two batches that saw nothing of each other, by the sweep.
ALTER TABLE rewards ADD COLUMN counted boolean NOT NULL DEFAULT true;
UPDATE rewards r SET counted = false WHERE NOT EXISTS (SELECT 1 FROM traces t WHERE t.trace_id = r.trace_id);
CREATE INDEX rewards_uncounted ON rewards (trace_id) WHERE NOT counted;

-- Expired traces with no reward stay listed as awaiting one (a late reward still makes them
-- rewarded traces); the dashboard and expiry read only those not expired.
ALTER TABLE traces_awaiting_reward ADD COLUMN expired_at timestamptz;
INSERT INTO traces_awaiting_reward (trace_id, domain, expired_at)
SELECT t.trace_id, t.domain, t.expired_at FROM traces t
WHERE t.expired_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = t.trace_id);
DROP INDEX traces_awaiting_reward_domain;
CREATE INDEX traces_awaiting_reward_live ON traces_awaiting_reward (domain) WHERE expired_at IS NULL;

INSERT INTO domain_counts (domain, traces, rewards, unrewarded)
SELECT d.name,
       (SELECT count(*) FROM traces t WHERE t.domain = d.name),
       (SELECT count(*) FROM rewards r JOIN traces t ON t.trace_id = r.trace_id WHERE t.domain = d.name),
       (SELECT count(*) FROM traces_awaiting_reward a WHERE a.domain = d.name)
FROM domains d;
