-- name: models_by_distillation
-- The models of the LLM calls each distillation made (its summary, advantage and operations
-- steps), as the ledger recorded them: the model name grpod asked for.
SELECT distillation_id, array_agg(DISTINCT model ORDER BY model)
FROM llm_calls
WHERE domain = %(domain)s AND distillation_id = ANY(%(distillations)s::bigint[])
GROUP BY distillation_id;

-- name: models_by_version
-- The models of the LLM calls a version made itself: a window's consolidation, a consolidation's
-- merges (library_versions.llm_call_ids).
SELECT v.version, array_agg(DISTINCT c.model ORDER BY c.model)
FROM library_versions v JOIN llm_calls c ON c.id = ANY(v.llm_call_ids)
WHERE v.domain = %(domain)s AND v.version = ANY(%(versions)s::integer[])
GROUP BY v.version;
