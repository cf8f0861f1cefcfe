-- name: lock_domain_grouping
-- One grouping transaction per domain at a time: two workers never open two groups for one topic.
SELECT pg_advisory_xact_lock(hashtext('grpod.grouping'), hashtext(%(domain)s));

-- name: domain_state
-- A domain's settings and the embedding model its vectors come from.
SELECT settings, embedding_model, embedding_dimension FROM domains WHERE name = %(domain)s;

-- name: claim_embedding_model
-- Record the model of a domain's first vectors (a domain never mixes two models).
UPDATE domains SET embedding_model = %(model)s, embedding_dimension = %(dimension)s
WHERE name = %(domain)s AND embedding_model IS NULL;

-- name: set_domain_settings
-- Change some of a domain's settings (the keys given; the others stay).
UPDATE domains SET settings = settings || %(settings)s::jsonb WHERE name = %(domain)s;

-- name: centroid_index_exists
-- Whether the HNSW index for centroids of one dimension exists already.
SELECT to_regclass({index_name}) IS NOT NULL;

-- name: lock_index_creation
-- One process at a time creates a centroid index (IF NOT EXISTS alone races).
SELECT pg_advisory_xact_lock(hashtext('grpod.centroid_index'));

-- name: create_centroid_index
-- The HNSW index for centroids of one dimension (IF NOT EXISTS: every worker may ask).
CREATE INDEX IF NOT EXISTS {index} ON groups USING hnsw ((centroid::vector({dimension})) vector_cosine_ops)
WHERE dimension = {dimension};

-- name: iterative_scan
-- Keep scanning the index until enough rows of the wanted domain are found.
SET LOCAL hnsw.iterative_scan = relaxed_order;

-- name: nearest_group
-- The domain's group whose centroid is nearest to a vector, with the cosine distance.
WITH nearest AS MATERIALIZED (
    SELECT id, size, centroid, centroid::vector({dimension}) <=> %(vector)s::vector({dimension}) AS distance
    FROM groups
    WHERE dimension = {dimension} AND domain = %(domain)s
    ORDER BY centroid::vector({dimension}) <=> %(vector)s::vector({dimension})
    LIMIT 1
)
SELECT id, size, centroid, distance FROM nearest ORDER BY distance;

-- name: create_group
-- A new group around its first member.
INSERT INTO groups (domain, dimension, centroid) VALUES (%(domain)s, %(dimension)s, %(vector)s)
RETURNING id;

-- name: set_group
-- A group's centroid and size after a batch of placements (written once per batch).
UPDATE groups SET centroid = %(centroid)s, size = %(size)s, updated_at = now() WHERE id = %(id)s;

-- name: still_ungrouped
-- Which of these traces have no group yet.
SELECT trace_id FROM traces WHERE trace_id = ANY(%(trace_ids)s::text[]) AND group_id IS NULL AND training_run IS NULL;

-- name: place_trace
-- Record a trace's embedding and group, once (a redelivered task changes nothing).
UPDATE traces SET embedding = %(vector)s, group_id = %(group_id)s, grouped_at = now()
WHERE trace_id = %(trace_id)s AND group_id IS NULL;

-- name: ungrouped_traces
-- Traces of a domain still waiting for a group, oldest first (optionally only these ids).
SELECT trace_id, query FROM traces
WHERE domain = %(domain)s AND group_id IS NULL AND training_run IS NULL AND grouping_error IS NULL
  AND (%(trace_ids)s::text[] IS NULL OR trace_id = ANY(%(trace_ids)s::text[]))
ORDER BY received_at
LIMIT %(limit)s;

-- name: domains_with_ungrouped_traces
-- Domains that have traces waiting for a group (the beat sweep's work list).
SELECT DISTINCT domain FROM traces WHERE group_id IS NULL AND training_run IS NULL AND grouping_error IS NULL;

-- name: mark_grouping_error
-- The embeddings API refused this trace's query: it stays stored, and waits for no group.
UPDATE traces SET grouping_error = %(error)s WHERE trace_id = %(trace_id)s AND group_id IS NULL;

-- name: group_members
-- The members of groups, with their rewards, for the readiness rule.
SELECT t.group_id, t.trace_id, t.used_by_distillation IS NOT NULL AS used,
       coalesce(array_agg(r.source ORDER BY r.source) FILTER (WHERE r.source IS NOT NULL), '{}') AS sources,
       coalesce(array_agg(r.value ORDER BY r.source) FILTER (WHERE r.source IS NOT NULL), '{}') AS "values",
       coalesce(array_agg(extract(epoch FROM r.received_at)::float8 ORDER BY r.source)
                FILTER (WHERE r.source IS NOT NULL), '{}') AS received
FROM traces t
LEFT JOIN rewards r ON r.trace_id = t.trace_id
WHERE t.group_id = ANY(%(group_ids)s::bigint[])
  AND t.expired_at IS NULL  -- an expired trace never counts toward readiness, even rewarded late
GROUP BY t.group_id, t.trace_id, t.used_by_distillation;

-- name: groups_of_traces
-- The groups these traces belong to.
SELECT DISTINCT group_id FROM traces WHERE trace_id = ANY(%(trace_ids)s::text[]) AND group_id IS NOT NULL;

-- name: unready_groups_with_rewards
-- Groups not yet ready whose members have rewards (of one domain, or of all; the sweep re-checks them).
SELECT DISTINCT t.group_id FROM traces t JOIN rewards r ON r.trace_id = t.trace_id
JOIN groups g ON g.id = t.group_id
WHERE g.ready_at IS NULL AND t.used_by_distillation IS NULL AND t.expired_at IS NULL
  AND (%(domain)s::text IS NULL OR g.domain = %(domain)s::text)
LIMIT %(limit)s;

-- name: mark_ready
-- A group becomes ready exactly once: only the first caller gets the row back.
UPDATE groups SET ready_at = now() WHERE id = %(id)s AND ready_at IS NULL RETURNING id, domain;

-- name: list_groups
-- A domain's groups, largest first, with a few sample queries.
SELECT g.id, g.size, g.ready_at, g.created_at,
       (SELECT array_agg(trace_id ORDER BY received_at) FROM traces WHERE group_id = g.id) AS trace_ids,
       (SELECT array_agg(query ORDER BY received_at) FROM (
            SELECT query, received_at FROM traces WHERE group_id = g.id ORDER BY received_at LIMIT 3) s) AS samples
FROM groups g WHERE g.domain = %(domain)s
ORDER BY g.size DESC, g.id
LIMIT %(limit)s;

-- name: ungroup_domain_traces
-- Re-embedding, step 1: the domain's traces lose their vectors and groups (the traces stay).
UPDATE traces SET embedding = NULL, group_id = NULL, grouped_at = NULL WHERE domain = %(domain)s;

-- name: delete_domain_groups
-- Re-embedding, step 2: the domain's groups go, to be rebuilt with the new model.
DELETE FROM groups WHERE domain = %(domain)s;

-- name: set_embedding_model
-- The domain's vectors now come from this model.
UPDATE domains SET embedding_model = %(model)s, embedding_dimension = %(dimension)s WHERE name = %(domain)s;

-- name: group_domains
-- The domain of each of these groups.
SELECT id, domain FROM groups WHERE id = ANY(%(group_ids)s::bigint[]);

-- name: count_domain_traces
-- How many traces a domain has (for progress).
SELECT count(*) FROM traces WHERE domain = %(domain)s;

-- name: lock_domain_groups
-- Merging: the domain's groups, locked, so that no ready mark and no new distillation of one
-- slips in between reading their state and merging them (a distillation's row names its group).
SELECT id FROM groups WHERE domain = %(domain)s ORDER BY id FOR UPDATE;

-- name: merge_candidates
-- Merging: the domain's groups with what the decision needs. counting: members that can still
-- count toward readiness. busy: a distillation of it is running. absorbable: it may disappear
-- into another group, since nothing names it (no distillation of any status, no used trace) and
-- no distillation of it is pending (not ready).
SELECT g.id, g.centroid, g.size, extract(epoch FROM now() - g.updated_at)::float8 AS idle_seconds,
       (SELECT count(*) FROM traces t
        WHERE t.group_id = g.id AND t.used_by_distillation IS NULL AND t.expired_at IS NULL) AS counting,
       EXISTS (SELECT 1 FROM distillations d WHERE d.group_id = g.id AND d.status = 'running') AS busy,
       g.ready_at IS NULL
         AND NOT EXISTS (SELECT 1 FROM distillations d WHERE d.group_id = g.id)
         AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.group_id = g.id AND t.used_by_distillation IS NOT NULL)
         AS absorbable
FROM groups g
WHERE g.domain = %(domain)s AND g.dimension = %(dimension)s
ORDER BY g.id;

-- name: move_merged_traces
-- Merging: the absorbed groups' traces join the group they were merged into.
UPDATE traces t SET group_id = m.survivor
FROM unnest(%(absorbed)s::bigint[], %(survivors)s::bigint[]) AS m (absorbed, survivor)
WHERE t.group_id = m.absorbed;

-- name: refresh_groups
-- Merging: a survivor's centroid and size from its members (the exact mean, not a running one).
UPDATE groups g SET centroid = coalesce(m.centroid, g.centroid), size = m.size, updated_at = now()
FROM (SELECT group_id, avg(embedding) AS centroid, count(*)::integer AS size
      FROM traces WHERE group_id = ANY(%(group_ids)s::bigint[]) GROUP BY group_id) m
WHERE g.id = m.group_id;

-- name: delete_merged_groups
-- Merging: the absorbed groups go (their traces have moved; nothing else names them).
DELETE FROM groups WHERE id = ANY(%(group_ids)s::bigint[]);
