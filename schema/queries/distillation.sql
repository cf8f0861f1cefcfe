-- name: group_to_distill
-- A group with its domain, settings, whether it is marked ready and whether its domain is frozen.
SELECT g.domain, d.settings, g.ready_at IS NOT NULL, d.frozen_at IS NOT NULL
FROM groups g JOIN domains d ON d.name = g.domain
WHERE g.id = %(group_id)s;

-- name: group_samples
-- A group's rewarded traces that no distillation has used and that have not expired, with their
-- rewards per source.
SELECT t.trace_id, t.query, t.trajectory, t.answer,
       array_agg(r.source ORDER BY r.source), array_agg(r.value ORDER BY r.source),
       array_agg(extract(epoch FROM r.received_at)::float8 ORDER BY r.source),
       array_agg(r.critique ORDER BY r.source), array_agg(r.ground_truth ORDER BY r.source)
FROM traces t JOIN rewards r ON r.trace_id = t.trace_id
WHERE t.group_id = %(group_id)s AND t.used_by_distillation IS NULL AND t.expired_at IS NULL
GROUP BY t.trace_id
ORDER BY t.trace_id;

-- name: trace_contents
-- What a replay needs of these traces (traces are never changed once stored).
SELECT trace_id, query, trajectory, answer FROM traces WHERE trace_id = ANY(%(trace_ids)s::text[]);

-- name: lock_distillation
-- One runner per distillation input, held for the session (a killed runner releases it).
SELECT pg_try_advisory_lock(hashtext('grpod.distill'), hashtext(encode(%(input_key)s::bytea, 'hex')));

-- name: unlock_distillation
SELECT pg_advisory_unlock(hashtext('grpod.distill'), hashtext(encode(%(input_key)s::bytea, 'hex')));

-- name: claim_distillation
-- Start (or start again) the distillation of this input. A finished one is not touched: the
-- caller then reads it with find_distillation.
INSERT INTO distillations (domain, group_id, input_key, parent_version, samples, settings, status)
VALUES (%(domain)s, %(group_id)s, %(input_key)s, %(parent_version)s, %(samples)s, %(settings)s, 'running')
ON CONFLICT (input_key) DO UPDATE
    SET status = 'running', attempts = distillations.attempts + 1, started_at = now(), error = NULL,
        next_attempt_at = NULL
    WHERE distillations.status IN ('running', 'failed')
RETURNING id, attempts;

-- name: find_distillation
-- A distillation by its input key.
SELECT id, status FROM distillations WHERE input_key = %(input_key)s;

-- name: recorded_calls
-- The LLM calls a distillation made, oldest first (its recording, for a resume or a replay).
SELECT id, purpose, model, prompt_hash, request, response, error, tokens_in, tokens_out, latency_seconds
FROM llm_calls WHERE distillation_id = %(distillation_id)s ORDER BY id;

-- name: insert_llm_call
-- One LLM call in the ledger.
INSERT INTO llm_calls (domain, distillation_id, purpose, model, prompt_hash, request, response, error,
                       tokens_in, tokens_out, latency_seconds)
VALUES (%(domain)s, %(distillation_id)s, %(purpose)s, %(model)s, %(prompt_hash)s, %(request)s, %(response)s,
        %(error)s, %(tokens_in)s, %(tokens_out)s, %(latency_seconds)s)
RETURNING id;

-- name: finish_distillation
-- A distillation's result; its operations now wait for the domain's update window.
UPDATE distillations
SET status = 'distilled', summaries = %(summaries)s, new_experiences = %(new_experiences)s, operations = %(operations)s,
    notes = %(notes)s, neighbours = %(neighbours)s, shown = %(shown)s, finished_at = now()
WHERE id = %(id)s AND status = 'running';

-- name: lock_traces
-- The traces a distillation is about to consume, locked, with who used them already.
SELECT trace_id, used_by_distillation FROM traces
WHERE trace_id = ANY(%(trace_ids)s::text[])
ORDER BY trace_id
FOR UPDATE;

-- name: supersede_distillation
-- Another distillation used some of its traces meanwhile: its result is not applied.
UPDATE distillations SET status = 'superseded', error = %(error)s, finished_at = now()
WHERE id = %(id)s AND status = 'running';

-- name: use_traces
-- The traces a distillation consumed (a later distillation of the group takes other ones).
UPDATE traces SET used_by_distillation = %(distillation_id)s
WHERE trace_id = ANY(%(trace_ids)s::text[]) AND used_by_distillation IS NULL;

-- name: unmark_ready
-- The group's ready traces are used: it becomes ready again only with new ones.
UPDATE groups SET ready_at = NULL WHERE id = %(group_id)s;

-- name: fail_distillation
-- A distillation that failed: the group stays ready, and the sweep tries again after a backoff;
-- after its last attempt (terminal) it is tried again only when an operator asks.
UPDATE distillations
SET status = 'failed', error = %(error)s, finished_at = now(),
    next_attempt_at = CASE WHEN %(terminal)s THEN NULL
                           ELSE now() + make_interval(secs => %(backoff_seconds)s) END
WHERE id = %(id)s AND status = 'running';

-- name: retry_failed_distillations
-- An operator's retry: the domain's distillations that failed for good get their attempts again.
UPDATE distillations SET attempts = 0, next_attempt_at = now()
WHERE domain = %(domain)s AND status = 'failed' AND next_attempt_at IS NULL
RETURNING group_id;

-- name: waiting_distillations
-- A domain's distillations whose operations wait for the update window, oldest first.
SELECT id, group_id, extract(epoch FROM now() - finished_at)::float8 AS waited, operations, samples
FROM distillations
WHERE domain = %(domain)s AND status = 'distilled'
ORDER BY finished_at, id;

-- name: apply_distillations
-- The window's distillations went into this version (NULL: they changed nothing); 'refused' when
-- the guard kept that version from any label.
UPDATE distillations SET status = %(status)s, version = %(version)s, applied_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'distilled';

-- name: due_windows
-- Domains whose distillations wait to be published, with the oldest wait and how many.
SELECT d.domain, extract(epoch FROM now() - min(d.finished_at))::float8 AS waited, count(*), s.settings
FROM distillations d JOIN domains s ON s.name = d.domain
WHERE d.status = 'distilled' AND s.frozen_at IS NULL
GROUP BY d.domain, s.settings;

-- name: groups_to_distill
-- Ready groups (of one domain, or of all) marked at least min_age seconds ago, with no failed
-- distillation backing off (or failed for good) and none started within min_age seconds.
SELECT g.id, g.domain FROM groups g
WHERE g.ready_at IS NOT NULL
  AND g.ready_at <= now() - make_interval(secs => %(min_age_seconds)s)
  AND (SELECT frozen_at FROM domains WHERE name = g.domain) IS NULL
  AND (%(domain)s::text IS NULL OR g.domain = %(domain)s::text)
  AND NOT EXISTS (
      SELECT 1 FROM distillations d
      WHERE d.group_id = g.id AND d.status = 'failed' AND (d.next_attempt_at IS NULL OR d.next_attempt_at > now()))
  -- one running now (an LLM can take minutes) is no lost task: the sweep leaves it to its worker
  AND NOT EXISTS (
      SELECT 1 FROM distillations d
      WHERE d.group_id = g.id AND d.status = 'running'
        AND d.started_at > now() - make_interval(secs => %(min_age_seconds)s))
ORDER BY g.ready_at, g.id
LIMIT %(limit)s;

-- name: distillation
-- One distillation, for a report or a replay.
SELECT id, domain, group_id, parent_version, samples, settings, status, attempts, error, summaries, new_experiences,
       operations, notes, neighbours, shown, version, created_at, finished_at
FROM distillations WHERE id = %(id)s;

-- name: domain_settings
-- A domain's settings (grouping and learning, one JSON object).
SELECT settings FROM domains WHERE name = %(domain)s;

-- name: experience_vectors
-- The stored embeddings of these experience texts (by hash) for the domain's embedding model.
SELECT text_hash, embedding FROM experience_vectors
WHERE domain = %(domain)s AND model = %(model)s AND text_hash = ANY (%(text_hashes)s);

-- name: insert_experience_vector
-- An experience text's embedding, once (a concurrent distillation may have stored it meanwhile).
INSERT INTO experience_vectors (domain, model, text_hash, embedding)
VALUES (%(domain)s, %(model)s, %(text_hash)s, %(embedding)s)
ON CONFLICT DO NOTHING;
