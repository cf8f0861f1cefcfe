-- name: latest_run
-- The newest training run with this key: an unfinished one is resumed.
SELECT id, finished_at IS NOT NULL FROM training_runs WHERE run_key = %(run_key)s ORDER BY id DESC LIMIT 1;

-- name: create_run
INSERT INTO training_runs (domain, run_key, dataset, settings)
VALUES (%(domain)s, %(run_key)s, %(dataset)s, %(settings)s)
RETURNING id;

-- name: finish_run
UPDATE training_runs SET finished_at = now() WHERE id = %(id)s AND finished_at IS NULL;

-- name: start_step
-- A step's library is fixed when it starts: a resumed step keeps the one its rollouts ran with.
INSERT INTO training_steps (run_id, step, parent_version) VALUES (%(run_id)s, %(step)s, %(parent_version)s)
ON CONFLICT (run_id, step) DO NOTHING;

-- name: step
SELECT parent_version, report FROM training_steps WHERE run_id = %(run_id)s AND step = %(step)s;

-- name: finish_step
UPDATE training_steps SET report = %(report)s, finished_at = now() WHERE run_id = %(run_id)s AND step = %(step)s;

-- name: step_reports
SELECT report FROM training_steps WHERE run_id = %(run_id)s AND report IS NOT NULL ORDER BY step;

-- name: mark_rollouts
-- The run's rollouts belong to it (and to their question's group), not to the grouping stage.
UPDATE traces SET training_run = %(run_id)s WHERE trace_id = ANY(%(trace_ids)s::text[]);

-- name: rollouts
-- Stored rollouts with their reward (one verifier source) and how they were used.
SELECT t.trace_id, t.answer, t.metadata, r.value, r.critique, t.used_by_distillation
FROM traces t LEFT JOIN rewards r ON r.trace_id = t.trace_id AND r.source = %(source)s
WHERE t.trace_id = ANY(%(trace_ids)s::text[]);

-- name: distillations_of
-- The status of these distillations, and the version each went into.
SELECT id, status, version FROM distillations WHERE id = ANY(%(ids)s::bigint[]);

-- name: usage_of
-- The distiller's calls and tokens for these distillations and these versions' window calls.
SELECT count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0)
FROM llm_calls
WHERE distillation_id = ANY(%(distillation_ids)s::bigint[])
   OR id IN (SELECT unnest(llm_call_ids) FROM library_versions
             WHERE domain = %(domain)s AND version = ANY(%(versions)s::integer[]));

-- name: operations_in
-- How many operations these versions applied.
SELECT coalesce(sum(jsonb_array_length(operations)), 0) FROM library_versions
WHERE domain = %(domain)s AND version = ANY(%(versions)s::integer[]);

-- name: calls_by_purpose
-- The same calls, counted by purpose.
SELECT purpose, count(*)
FROM llm_calls
WHERE distillation_id = ANY(%(distillation_ids)s::bigint[])
   OR id IN (SELECT unnest(llm_call_ids) FROM library_versions
             WHERE domain = %(domain)s AND version = ANY(%(versions)s::integer[]))
GROUP BY purpose ORDER BY purpose;

-- name: save_evaluation
INSERT INTO evaluations (domain, dataset, k, report) VALUES (%(domain)s, %(dataset)s, %(k)s, %(report)s)
RETURNING id, created_at;

-- name: evaluations
-- Stored evaluations, newest first (of one domain, or all).
SELECT id, domain, dataset, k, report, created_at FROM evaluations
WHERE %(domain)s::text IS NULL OR domain = %(domain)s::text
ORDER BY id DESC LIMIT %(limit)s;
