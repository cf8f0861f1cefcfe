-- name: ensure_domains
-- Create the domains of a batch that do not exist yet (default settings).
INSERT INTO domains (name)
SELECT DISTINCT unnest(%(names)s::text[])
ON CONFLICT (name) DO NOTHING;

-- name: insert_traces
-- Store new traces; a trace_id already stored is left alone (the caller compares hashes).
INSERT INTO traces (trace_id, domain, query, trajectory, answer, library_version, metadata, created_at, content_hash)
SELECT t.trace_id, t.domain, t.query, t.trajectory::jsonb, t.answer, t.library_version, t.metadata::jsonb,
       t.created_at, t.content_hash
FROM unnest(%(trace_ids)s::text[], %(domains)s::text[], %(queries)s::text[], %(trajectories)s::text[],
            %(answers)s::text[], %(library_versions)s::integer[], %(metadata)s::text[],
            %(created_ats)s::timestamptz[], %(content_hashes)s::bytea[])
     AS t(trace_id, domain, query, trajectory, answer, library_version, metadata, created_at, content_hash)
ON CONFLICT (trace_id) DO NOTHING
RETURNING trace_id;

-- name: trace_hashes
-- The stored content hash of each of these traces.
SELECT trace_id, content_hash FROM traces WHERE trace_id = ANY(%(trace_ids)s::text[]);

-- name: insert_rewards
-- Store new rewards; a (trace_id, source) already stored is left alone.
INSERT INTO rewards (trace_id, source, value, critique, ground_truth, created_at, content_hash)
SELECT * FROM unnest(%(trace_ids)s::text[], %(sources)s::text[], %(values)s::float8[],
                     %(critiques)s::text[], %(ground_truths)s::text[], %(created_ats)s::timestamptz[],
                     %(content_hashes)s::bytea[])
ON CONFLICT (trace_id, source) DO NOTHING
RETURNING trace_id, source;

-- name: reward_hashes
-- The stored content hash of each of these (trace_id, source) pairs.
SELECT r.trace_id, r.source, r.content_hash
FROM rewards r
JOIN unnest(%(trace_ids)s::text[], %(sources)s::text[]) AS k(trace_id, source)
  ON r.trace_id = k.trace_id AND r.source = k.source;

-- name: insert_rejected
-- Keep rejected events with their reason and (bounded) payload.
INSERT INTO rejected_events (reason, detail, origin, trace_id, payload, payload_size, payload_truncated)
SELECT * FROM unnest(%(reasons)s::text[], %(details)s::text[], %(origins)s::text[], %(trace_ids)s::text[],
                     %(payloads)s::bytea[], %(payload_sizes)s::integer[], %(truncated)s::boolean[])
RETURNING id;

-- name: expire_orphan_rewards
-- Rewards whose trace has not come within the time-to-live move to rejected_events.
WITH expired AS (
    DELETE FROM rewards r
    WHERE r.received_at < now() - make_interval(secs => %(ttl_seconds)s)
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
