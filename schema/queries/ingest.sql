-- name: ensure_domains
-- Create the domains of a batch that do not exist yet (default settings).
INSERT INTO domains (name)
SELECT DISTINCT unnest(%(names)s::text[])
ON CONFLICT (name) DO NOTHING;

-- name: create_staging
-- Per-session staging tables that COPY fills for one batch (emptied at commit).
CREATE TEMP TABLE IF NOT EXISTS incoming_traces (
    trace_id text, domain text, query text, trajectory text, answer text, library_version integer,
    metadata text, created_at timestamptz, content_hash bytea
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_rewards (
    trace_id text, source text, value double precision, critique text, ground_truth text,
    created_at timestamptz, content_hash bytea
) ON COMMIT DELETE ROWS;

-- name: copy_traces
-- Stage a batch of traces (COPY: no per-value escaping in Python).
COPY incoming_traces (trace_id, domain, query, trajectory, answer, library_version, metadata, created_at,
                      content_hash) FROM STDIN;

-- name: insert_traces
-- Store the staged traces that are new; a trace_id already stored is left alone (the caller compares hashes).
-- A new trace whose reward has not come yet awaits it. Returns each new trace, its domain and
-- whether it awaits a reward.
WITH inserted AS (
    INSERT INTO traces (trace_id, domain, query, trajectory, answer, library_version, metadata, created_at,
                        content_hash)
    SELECT trace_id, domain, query, trajectory::jsonb, answer, library_version, metadata::jsonb, created_at,
           content_hash
    FROM incoming_traces
    ON CONFLICT (trace_id) DO NOTHING
    RETURNING trace_id, domain
), arrived AS (
    SELECT i.trace_id, i.domain, NOT EXISTS (SELECT 1 FROM rewards r WHERE r.trace_id = i.trace_id) AS awaiting
    FROM inserted i
), awaiting AS (
    INSERT INTO traces_awaiting_reward (trace_id, domain)
    SELECT trace_id, domain FROM arrived WHERE awaiting
)
SELECT trace_id, domain, awaiting FROM arrived;

-- name: count_earlier_rewards
-- The rewards that came before these new traces (of these domains) count for them now; returns
-- the domain of each.
UPDATE rewards r SET counted = true
FROM unnest(%(trace_ids)s::text[], %(domains)s::text[]) AS n (trace_id, domain)
WHERE r.trace_id = n.trace_id AND NOT r.counted
RETURNING n.domain;

-- name: trace_hashes
-- The stored content hash of each of these traces.
SELECT trace_id, content_hash FROM traces WHERE trace_id = ANY(%(trace_ids)s::text[]);

-- name: copy_rewards
-- Stage a batch of rewards.
COPY incoming_rewards (trace_id, source, value, critique, ground_truth, created_at, content_hash) FROM STDIN;

-- name: insert_rewards
-- Store the staged rewards that are new; a (trace_id, source) already stored is left alone.
-- A reward whose trace is stored counts for its domain at once; its trace awaits a reward no
-- more. Returns each new reward, its trace's domain (NULL: not stored yet) and whether it was
-- its trace's first.
WITH arriving AS (
    SELECT i.*, t.domain FROM incoming_rewards i LEFT JOIN traces t ON t.trace_id = i.trace_id
), inserted AS (
    INSERT INTO rewards (trace_id, source, value, critique, ground_truth, created_at, content_hash, counted)
    SELECT trace_id, source, value, critique, ground_truth, created_at, content_hash, domain IS NOT NULL
    FROM arriving
    ON CONFLICT (trace_id, source) DO NOTHING
    RETURNING trace_id, source
), rewarded AS (
    DELETE FROM traces_awaiting_reward a USING inserted i WHERE a.trace_id = i.trace_id
    RETURNING a.trace_id
)
SELECT i.trace_id, i.source, a.domain, EXISTS (SELECT 1 FROM rewarded w WHERE w.trace_id = i.trace_id) AS first
FROM inserted i JOIN arriving a ON a.trace_id = i.trace_id AND a.source = i.source;

-- name: reward_hashes
-- The stored content hash of each of these (trace_id, source) pairs.
SELECT r.trace_id, r.source, r.content_hash
FROM rewards r
JOIN unnest(%(trace_ids)s::text[], %(sources)s::text[]) AS k(trace_id, source)
  ON r.trace_id = k.trace_id AND r.source = k.source;

-- name: insert_rejected
-- Keep rejected events with their reason and (bounded) payload.
-- A reward's domain is its stored trace's, where the event itself named none.
INSERT INTO rejected_events (reason, detail, origin, trace_id, payload, payload_size, payload_truncated, domain)
SELECT r.reason, r.detail, r.origin, r.trace_id, r.payload, r.payload_size, r.truncated,
       coalesce(r.domain, (SELECT t.domain FROM traces t WHERE t.trace_id = r.trace_id))
FROM unnest(%(reasons)s::text[], %(details)s::text[], %(origins)s::text[], %(trace_ids)s::text[],
            %(payloads)s::bytea[], %(payload_sizes)s::integer[], %(truncated)s::boolean[], %(domains)s::text[])
     WITH ORDINALITY AS r (reason, detail, origin, trace_id, payload, payload_size, truncated, domain, n)
ORDER BY r.n
RETURNING id;

-- name: expire_orphan_rewards
-- Rewards whose trace has not come within the time-to-live move to rejected_events.
WITH expired AS (
    DELETE FROM rewards r
    WHERE NOT r.counted AND r.received_at < now() - make_interval(secs => %(ttl_seconds)s)
      AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.trace_id = r.trace_id)
    RETURNING r.*
)
INSERT INTO rejected_events (reason, detail, origin, trace_id, payload, payload_size, payload_truncated)
SELECT 'reward_expired',
       format('no trace %%s arrived within %%s seconds of this reward', trace_id, %(ttl_seconds)s),
       'expiry', trace_id, convert_to(payload::text, 'UTF8'), octet_length(payload::text), false
FROM (
    SELECT trace_id, jsonb_strip_nulls(jsonb_build_object(
        'type', 'reward', 'schema_version', 1, 'trace_id', trace_id, 'value', value, 'source', source,
        'critique', critique, 'ground_truth', ground_truth,
        'created_at', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) AS payload
    FROM expired
) AS e
RETURNING id;
