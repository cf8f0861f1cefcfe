-- name: version_parents
-- Each version of a domain with its parent and when it was made.
SELECT version, parent, created_at FROM library_versions WHERE domain = %(domain)s;

-- name: confirmations
-- When a distillation last named each experience: an operation on its id, or a new experience
-- that came out within close_distance of it (the triage's neighbours). Both say a group found it still holds.
SELECT experience_id, max(at) FROM (
    SELECT (op->>'id')::integer AS experience_id, coalesce(d.finished_at, d.created_at) AS at
    FROM distillations d CROSS JOIN LATERAL jsonb_array_elements(coalesce(d.operations, '[]'::jsonb)) op
    WHERE d.domain = %(domain)s AND d.status IN ('distilled', 'applied') AND op->>'id' ~ '^[0-9]+$'
    UNION ALL
    SELECT (n->>'id')::integer, coalesce(d.finished_at, d.created_at)
    FROM distillations d CROSS JOIN LATERAL jsonb_array_elements(coalesce(d.neighbours, '[]'::jsonb)) n
    WHERE d.domain = %(domain)s AND d.status IN ('distilled', 'applied') AND n->>'id' ~ '^[0-9]+$'
      AND (n->>'distance')::float8 <= %(close_distance)s
) named
GROUP BY experience_id;

-- name: domains_with_libraries
-- Domains that have a library to consolidate.
SELECT DISTINCT domain FROM library_labels ORDER BY domain;
